"""FrGNet's network: a timm encoder and U-Net decoder (the feature extraction module), the Fourier guidance module
(guide head + GARU) and the contour proposal heads, plus the GILC projector used in training.

Feature levels: F0 is the decoder's full-resolution output, F1 its stride-2 output (the paper's "layer 0" and
"layer 1"). The guide head reads F0; GARU gates F1 (the instance heads' input) and F0 (the refinement head's)
with the predicted guide resized to each. Deeper decoder levels feed only F1 and F0 in this architecture, so gating
them as well would change nothing downstream that gating F1 does not already.

Heads as the CPN's (Upschulte et al. 2022, celldetection's `ReadOut`): a k×k convolution, BatchNorm, ReLU, 2-D
dropout and a 1×1 convolution each; the score head 3×3, the location and descriptor heads and the refinement head
`head_kernel`×`head_kernel` (7 in the CPN). Location and descriptors are one head here (one 7×7 convolution instead of
two: the same receptive field at half the cost), their outputs the CPN's. `heads="shared"` is the earlier layout
(one shared 3×3 block and 1×1 heads), kept so models trained with it still load.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from nucseg.methods.unet.model import conv_bn_relu, unet_decoder
from nucseg.models.encoders import create_encoder


def read_out(cin: int, cout: int, kernel: int, dropout: float) -> nn.Sequential:
    """The CPN's read-out head: k×k conv -> BN -> ReLU -> Dropout2d -> 1×1 conv."""
    return nn.Sequential(nn.Conv2d(cin, cin, kernel, padding=kernel // 2, bias=False), nn.BatchNorm2d(cin),
                         nn.ReLU(inplace=True), nn.Dropout2d(dropout) if dropout else nn.Identity(),
                         nn.Conv2d(cin, cout, 1))


class GARU(nn.Module):
    """Guide attention residual unit: F' = F + F ⊙ tanh(a), a = conv(ReLU(conv(g))) from the resized guide g alone
    (with `use_features`, from [F, g]). The gain 1 + tanh(a) lies in (0, 2): it strengthens features where the
    guide says nucleus and can switch them off where it does not (the paper's purpose for the unit, Sec. 3.3), and
    its last convolution starts at zero, so the unit starts as the identity (the "residual"). The paper names the
    unit and its purpose without its layers; this form is our choice.

    `form="gain"` is the earlier form, F + F ⊙ σ(conv([F, g])): a gain in [1, 2] that cannot suppress anything (kept
    so models trained with it still load, and as an ablation)."""

    def __init__(self, channels: int, use_features: bool = False, hidden: int = 16, form: str = "tanh"):
        super().__init__()
        if form not in ("tanh", "gain"):
            raise ValueError(f"GARU form must be tanh or gain, not '{form}'")
        self.form = form
        self.use_features = use_features or form == "gain"
        cin = 1 + (channels if self.use_features else 0)
        if form == "gain":
            self.gate = nn.Sequential(nn.Conv2d(cin, channels, 3, padding=1), nn.Sigmoid())
            return
        last = nn.Conv2d(hidden, channels, 3, padding=1)
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
        self.gate = nn.Sequential(nn.Conv2d(cin, hidden, 3, padding=1), nn.ReLU(inplace=True), last)

    def forward(self, features: torch.Tensor, guide: torch.Tensor) -> torch.Tensor:
        g = F.interpolate(guide, size=features.shape[-2:], mode="bilinear", align_corners=False)
        a = self.gate(torch.cat([features, g], 1) if self.use_features else g)
        return features + features * (a if self.form == "gain" else torch.tanh(a))


class Projector(nn.Module):
    """SimCLR-v2-style projector (3 layers, BN + ReLU between them), as 1×1 convolutions over a feature map."""

    def __init__(self, channels: int, hidden: int, out: int):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(channels, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU(inplace=True),
            nn.Conv2d(hidden, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU(inplace=True),
            nn.Conv2d(hidden, out, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class FrGNetNet(nn.Module):
    """Image -> {"score": N×1 logits at the input's resolution, "fourier": N×(2+4K) descriptors (centre relative to
    each pixel, pixels) at stride 2 (F1's), "refine": N×2 refinement field at the input's resolution (pixels, bounded
    by `refine_margin`), "guide": N×1 logits at the input's resolution (with the guide), "embedding": N×P at
    stride 2 (training only, with GILC)}. `FrGNetMethod.predict_dense` brings the descriptors to full resolution."""

    def __init__(self, encoder: str = "efficientnet_lite0", encoder_weights: str | None = None, in_channels: int = 3,
                 decoder_channels: tuple[int, ...] = (128, 64, 48, 32, 16), coefficients: int = 34,
                 use_guide: bool = True, use_garu: bool = True, use_gilc: bool = True, embedding_dim: int = 64,
                 refine_margin: float = 3.0, head_kernel: int = 7, head_dropout: float = 0.1,
                 detach_guide: bool = True, garu_features: bool = False, heads: str = "cpn",
                 garu_form: str = "tanh"):
        super().__init__()
        self.encoder = create_encoder(encoder, in_chans=in_channels, weights=encoder_weights)
        enc_ch = self.encoder.feature_info.channels()
        if self.encoder.feature_info.reduction()[0] != 2:
            raise ValueError(f"encoder '{encoder}' must have a stride-2 feature level")
        self.decoder, chans = unet_decoder(enc_ch, decoder_channels, True, encoder)
        c1, c0 = chans[-2], chans[-1]
        self.use_guide, self.use_garu, self.use_gilc = use_guide, use_guide and use_garu, use_gilc
        self.refine_margin = refine_margin
        self.detach_guide = detach_guide
        if use_guide:
            self.guide_head = nn.Sequential(conv_bn_relu(c0, c0), nn.Conv2d(c0, 1, 1))
        if self.use_garu:
            self.garu1 = GARU(c1, garu_features, form=garu_form)
            self.garu0 = GARU(c0, garu_features, form=garu_form)
        if heads not in ("cpn", "shared"):
            raise ValueError(f"frgnet heads must be cpn or shared, not '{heads}'")
        self.shared_heads = heads == "shared"
        if self.shared_heads:  # the earlier layout: one shared 3×3 block, 1×1 score and descriptor heads
            self.instance = conv_bn_relu(c1, c1)
            self.score_head = nn.Conv2d(c1, 1, 1)
            self.fourier_head = nn.Conv2d(c1, coefficients, 1)
            self.refine_head = nn.Sequential(conv_bn_relu(c0, c0), nn.Conv2d(c0, 2, 1))
        else:
            self.score_head = read_out(c1, 1, 3, head_dropout)
            self.fourier_head = read_out(c1, coefficients, head_kernel, head_dropout)
            self.refine_head = read_out(c0, 2, head_kernel, head_dropout)
        if use_gilc:
            self.projector = Projector(c1, 2 * c1, embedding_dim)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        feats = self.encoder(x)
        y = feats[-1]
        levels = []
        for block, skip in zip(self.decoder, list(reversed(feats[:-1])) + [None]):
            y = block(y, skip)
            levels.append(y)
        f1, f0 = levels[-2], levels[-1]
        out = {}
        if self.use_guide:
            out["guide"] = self.guide_head(f0)
            if self.use_garu:
                # detached: the guide head learns from its own target only, not from the instance losses
                g = torch.sigmoid(out["guide"].detach() if self.detach_guide else out["guide"])
                f1, f0 = self.garu1(f1, g), self.garu0(f0, g)
        size = x.shape[-2:]
        h = self.instance(f1) if self.shared_heads else f1
        out["score"] = F.interpolate(self.score_head(h), size=size, mode="bilinear", align_corners=False)
        out["fourier"] = self.fourier_head(h)
        out["refine"] = torch.tanh(self.refine_head(f0)) * self.refine_margin
        if self.use_gilc and self.training:
            out["embedding"] = self.projector(f1)
        return out
