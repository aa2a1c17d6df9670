"""The WeaveSeg network (Fig. 2): timm encoder -> ASR top-down decoder to stride 4 -> decoupling branch (S^f, S^b,
S^u) -> T ICW iterations with the closed loop through ASR -> ASR to stride 2 -> heads, up-sampled to the input.

Closed loop (Fig. 2, "a closed-loop iteration feeds intermediate ICW outputs back to ASR"): after every iteration but
the last, the ICW state is fused with the stride-2 skip by the output ASR and brought back to the ICW resolution by a
strided 3×3 conv, then added to the state. The same ASR then produces the final stride-2 features, so every
iteration sees the spectrally refined high-resolution detail that the output will use. Each ICW iteration has its
own weights.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from nucseg.methods.weaveseg.modules import ASR, ICWIteration, PlainFusion, conv_bn_relu
from nucseg.models.encoders import create_encoder
from nucseg.models.registry import register_model


class WeaveSegNet(nn.Module):
    def __init__(
        self,
        encoder: str = "efficientnet_lite0",
        encoder_weights: str | None = None,
        in_channels: int = 3,
        channels: int = 64,
        use_asr: bool = True,
        use_lsgr: bool = True,
        icw_iterations: int = 3,
        closed_loop: bool = True,
        lowpass_kernel: int = 3,
        highpass_kernel: int = 3,
        lsgr_groups: int = 4,
        attention_window: int = 5,
        dense_layers: int = 3,
        dense_growth: int = 16,
        context_channels: int = 16,
        aglu_per_channel: bool = False,
    ):
        super().__init__()
        if not 0 <= icw_iterations <= 8:
            raise ValueError("icw_iterations must be between 0 and 8")
        self.encoder = create_encoder(encoder, in_chans=in_channels, weights=encoder_weights)
        reductions = self.encoder.feature_info.reduction()
        if reductions[:2] != [2, 4]:
            raise ValueError(f"WeaveSeg needs an encoder with features at strides 2 and 4, '{encoder}' has {reductions}")
        self.laterals = nn.ModuleList(conv_bn_relu(c, channels, 1) for c in self.encoder.feature_info.channels())

        def fusion() -> nn.Module:
            if use_asr:
                return ASR(channels, lowpass_kernel, highpass_kernel, lsgr_groups, use_lsgr=use_lsgr)
            return PlainFusion(channels)

        self.top_down = nn.ModuleList(fusion() for _ in range(len(reductions) - 2))  # down to stride 4
        self.output_fusion = fusion()  # stride 4 -> 2, also the closed loop's way back through ASR
        ctx = context_channels
        self.decouple = conv_bn_relu(channels, 3 * ctx)
        self.context_heads = nn.ModuleDict({k: nn.Conv2d(ctx, 1, 1) for k in ("fg", "bg", "uncertainty")})
        self.icw = nn.ModuleList(
            ICWIteration(channels, ctx, attention_window, dense_layers, dense_growth, aglu_per_channel)
            for _ in range(icw_iterations)
        )
        self.closed_loop = closed_loop and icw_iterations > 1
        self.loop_down = conv_bn_relu(channels, channels, 3, stride=2) if self.closed_loop else None
        self.heads = nn.ModuleDict({"mask": nn.Conv2d(channels, 1, 1), "trilateral": nn.Conv2d(channels, 3, 1),
                                    "distance": nn.Conv2d(channels, 1, 1)})

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        feats = [lat(f) for lat, f in zip(self.laterals, self.encoder(x))]
        y = feats[-1]
        for fuse, skip in zip(self.top_down, reversed(feats[1:-1])):
            y = fuse(y, skip)
        # contiguous copies: 1×1 convs on channel-sliced views fall off oneDNN onto a slow path
        ctx_f, ctx_b, ctx_u = (c.contiguous() for c in self.decouple(y).chunk(3, dim=1))
        out = {"fg": self.context_heads["fg"](ctx_f), "bg": self.context_heads["bg"](ctx_b),
               "uncertainty": self.context_heads["uncertainty"](ctx_u)}
        for t, step in enumerate(self.icw):
            y = step(y, ctx_f, ctx_b)
            if self.closed_loop and t < len(self.icw) - 1:
                y = y + self.loop_down(self.output_fusion(y, feats[0]))
        z = self.output_fusion(y, feats[0])
        out.update({k: head(z) for k, head in self.heads.items()})
        return {k: F.interpolate(v, size=x.shape[-2:], mode="bilinear", align_corners=False) for k, v in out.items()}


@register_model("weaveseg", "WeaveSeg: ASR decoder + iterative contrast-weaving (ICW) + uncertainty map (Li et al.)")
def weaveseg(**cfg) -> WeaveSegNet:
    return WeaveSegNet(**cfg)
