"""FrGNet's network: a timm encoder and U-Net decoder (the feature extraction module), the Fourier guidance module
(guide head + GARU) and the contour proposal heads, plus the GILC projector used in training.

Feature levels: F0 is the decoder's full-resolution output, F1 its stride-2 output (the paper's "layer 0" and
"layer 1"). The guide head reads F0; GARU gates F1 (the instance heads' input) and F0 (the refinement head's)
with the predicted guide resized to each. Deeper decoder levels feed only F1 and F0 in this architecture, so gating
them as well would change nothing downstream that gating F1 does not already.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from nucseg.methods.unet.model import conv_bn_relu, unet_decoder
from nucseg.models.encoders import create_encoder


class GARU(nn.Module):
    """Guide attention residual unit: F' = F + F ⊙ σ(conv([F, g])): a per-channel, per-pixel gain from the features
    and the resized guide g, added as a residual so the unit starts near identity. The paper names the unit and
    its purpose (strengthen features where nuclei are, weaken them elsewhere) without its layers; this form is
    our choice."""

    def __init__(self, channels: int):
        super().__init__()
        self.gate = nn.Sequential(nn.Conv2d(channels + 1, channels, 3, padding=1), nn.Sigmoid())

    def forward(self, features: torch.Tensor, guide: torch.Tensor) -> torch.Tensor:
        g = F.interpolate(guide, size=features.shape[-2:], mode="bilinear", align_corners=False)
        return features + features * self.gate(torch.cat([features, g], 1))


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
    """Image -> {"score": N×1 logits, "fourier": N×(2+4K) descriptors (centre relative to each pixel, pixels),
    "refine": N×2 refinement field (pixels, bounded by `refine_margin`), "guide": N×1 logits (with the guide),
    "embedding": N×P (training only, with GILC)}, all at the input's resolution except the embedding (stride 2)."""

    def __init__(self, encoder: str = "efficientnet_lite0", encoder_weights: str | None = None, in_channels: int = 3,
                 decoder_channels: tuple[int, ...] = (128, 64, 48, 32, 16), coefficients: int = 34,
                 use_guide: bool = True, use_garu: bool = True, use_gilc: bool = True, embedding_dim: int = 64,
                 refine_margin: float = 3.0):
        super().__init__()
        self.encoder = create_encoder(encoder, in_chans=in_channels, weights=encoder_weights)
        enc_ch = self.encoder.feature_info.channels()
        if self.encoder.feature_info.reduction()[0] != 2:
            raise ValueError(f"encoder '{encoder}' must have a stride-2 feature level")
        self.decoder, chans = unet_decoder(enc_ch, decoder_channels, True, encoder)
        c1, c0 = chans[-2], chans[-1]
        self.use_guide, self.use_garu, self.use_gilc = use_guide, use_guide and use_garu, use_gilc
        self.refine_margin = refine_margin
        if use_guide:
            self.guide_head = nn.Sequential(conv_bn_relu(c0, c0), nn.Conv2d(c0, 1, 1))
        if self.use_garu:
            self.garu1, self.garu0 = GARU(c1), GARU(c0)
        self.instance = conv_bn_relu(c1, c1)
        self.score_head = nn.Conv2d(c1, 1, 1)
        self.fourier_head = nn.Conv2d(c1, coefficients, 1)
        self.refine_head = nn.Sequential(conv_bn_relu(c0, c0), nn.Conv2d(c0, 2, 1))
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
                g = torch.sigmoid(out["guide"])
                f1, f0 = self.garu1(f1, g), self.garu0(f0, g)
        h = self.instance(f1)
        size = x.shape[-2:]
        out["score"] = F.interpolate(self.score_head(h), size=size, mode="bilinear", align_corners=False)
        out["fourier"] = F.interpolate(self.fourier_head(h), size=size, mode="bilinear", align_corners=False)
        out["refine"] = torch.tanh(self.refine_head(f0)) * self.refine_margin
        if self.use_gilc and self.training:
            out["embedding"] = self.projector(f1)
        return out
