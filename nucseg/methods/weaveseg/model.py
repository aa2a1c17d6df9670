"""The WeaveSeg network (Fig. 2): timm encoder -> ASR top-down decoder to stride 4 -> decoupling branch (S^f, S^b,
S^u) -> T ICW iterations with the closed loop through ASR -> ASR to stride 2 -> ASR to full resolution -> heads.

Closed loop (Fig. 2, "a closed-loop iteration feeds intermediate ICW outputs back to ASR"): after every iteration but
the last, the ICW state is fused with the stride-2 skip by a loop ASR (its own weights: the output's ASR keeps
statistics of the final features only) and brought back to the ICW resolution by a strided 3×3 conv, then added to
the state. Context maps: with `refresh_context` the decoupling branch reads the current state before every iteration
(its heads are supervised on the final state), so the loop refreshes S^f, S^b and S^u; without it they are computed
once before ICW. Each ICW iteration has its own weights.

Output resolution: `output_stride: 1` adds a last ASR from stride 2 to the input's resolution, its F_low a
full-resolution stem (3×3 conv-BN-ReLU on the image), both projected to `full_res_channels`, so the heads see
full-resolution features as the U-Net's do. `output_stride: 2` (an earlier version) up-samples stride-2 heads
bilinearly.
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
        window: str = "none",
        asr_mix: bool = False,
        uncertainty: str = "update",
        refresh_context: bool = True,
        loop_fusion: bool = True,
        output_stride: int = 1,
        full_res_channels: int = 16,
        compile_kernels: bool = False,
    ):
        super().__init__()
        if not 0 <= icw_iterations <= 8:
            raise ValueError("icw_iterations must be between 0 and 8")
        self.encoder = create_encoder(encoder, in_chans=in_channels, weights=encoder_weights)
        reductions = self.encoder.feature_info.reduction()
        if reductions[:2] != [2, 4]:
            raise ValueError(f"WeaveSeg needs an encoder with features at strides 2 and 4, '{encoder}' has {reductions}")
        self.laterals = nn.ModuleList(conv_bn_relu(c, channels, 1) for c in self.encoder.feature_info.channels())

        if output_stride not in (1, 2):
            raise ValueError(f"output_stride must be 1 or 2, not {output_stride}")

        def fusion(c: int = channels, groups: int = lsgr_groups) -> nn.Module:
            if use_asr:
                return ASR(c, lowpass_kernel, highpass_kernel, groups, use_lsgr=use_lsgr, window=window, mix=asr_mix)
            return PlainFusion(c)

        self.top_down = nn.ModuleList(fusion() for _ in range(len(reductions) - 2))  # down to stride 4
        self.output_fusion = fusion()  # stride 4 -> 2
        ctx = context_channels
        self.decouple = conv_bn_relu(channels, 3 * ctx)
        self.context_heads = nn.ModuleDict({k: nn.Conv2d(ctx, 1, 1) for k in ("fg", "bg", "uncertainty")})
        self.icw = nn.ModuleList(
            ICWIteration(channels, ctx, attention_window, dense_layers, dense_growth, aglu_per_channel, uncertainty)
            for _ in range(icw_iterations)
        )
        self.refresh_context = refresh_context
        self.closed_loop = closed_loop and icw_iterations > 1
        self.loop_fusion = fusion() if self.closed_loop and loop_fusion else None
        self.loop_down = conv_bn_relu(channels, channels, 3, stride=2) if self.closed_loop else None
        head_channels = channels
        self.full_res = None
        if output_stride == 1:
            head_channels = full_res_channels
            self.full_res = nn.ModuleDict({
                "stem": conv_bn_relu(in_channels, full_res_channels),
                "project": conv_bn_relu(channels, full_res_channels, 1),
                "fusion": fusion(full_res_channels, min(lsgr_groups, full_res_channels)),
            })
        self.heads = nn.ModuleDict({"mask": nn.Conv2d(head_channels, 1, 1),
                                    "trilateral": nn.Conv2d(head_channels, 3, 1),
                                    "distance": nn.Conv2d(head_channels, 1, 1)})
        for module in self.modules():  # the tap loops' training path (modules._compiled)
            if hasattr(module, "compile_kernels"):
                module.compile_kernels = compile_kernels

    def context(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        # contiguous copies: 1×1 convs on channel-sliced views fall off oneDNN onto a slow path
        return tuple(c.contiguous() for c in self.decouple(y).chunk(3, dim=1))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        feats = [lat(f) for lat, f in zip(self.laterals, self.encoder(x))]
        y = feats[-1]
        for fuse, skip in zip(self.top_down, reversed(feats[1:-1])):
            y = fuse(y, skip)
        ctx_f, ctx_b, ctx_u = self.context(y)
        loop = self.loop_fusion if self.loop_fusion is not None else self.output_fusion
        for t, step in enumerate(self.icw):
            if self.refresh_context and t > 0:
                ctx_f, ctx_b, ctx_u = self.context(y)
            y = step(y, ctx_f, ctx_b, ctx_u)
            if self.closed_loop and t < len(self.icw) - 1:
                y = y + self.loop_down(loop(y, feats[0]))
        if self.refresh_context and len(self.icw):
            ctx_f, ctx_b, ctx_u = self.context(y)  # the maps the heads are trained on: of the final state
        out = {"fg": self.context_heads["fg"](ctx_f), "bg": self.context_heads["bg"](ctx_b),
               "uncertainty": self.context_heads["uncertainty"](ctx_u)}
        z = self.output_fusion(y, feats[0])
        if self.full_res is not None:
            z = self.full_res["fusion"](self.full_res["project"](z), self.full_res["stem"](x))
        out.update({k: head(z) for k, head in self.heads.items()})
        size = x.shape[-2:]
        return {k: v if v.shape[-2:] == size else F.interpolate(v, size=size, mode="bilinear", align_corners=False)
                for k, v in out.items()}


@register_model("weaveseg", "WeaveSeg: ASR decoder + iterative contrast-weaving (ICW) + uncertainty map (Li et al.)")
def weaveseg(**cfg) -> WeaveSegNet:
    return WeaveSegNet(**cfg)
