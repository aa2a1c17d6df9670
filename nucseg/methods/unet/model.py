"""A U-Net over any timm encoder: decoder blocks of (upsample, concat skip, 2× conv-BN-ReLU), one 1×1 head per output.

Heads are named, so methods built on it (and their post-processing) read outputs by name.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from nucseg.models.encoders import create_encoder
from nucseg.models.registry import register_model


def conv_bn_relu(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class DecoderBlock(nn.Module):
    def __init__(self, cin: int, cskip: int, cout: int):
        super().__init__()
        self.conv = nn.Sequential(conv_bn_relu(cin + cskip, cout), conv_bn_relu(cout, cout))

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None) -> torch.Tensor:
        size = skip.shape[-2:] if skip is not None else (x.shape[-2] * 2, x.shape[-1] * 2)
        x = F.interpolate(x, size=size, mode="nearest")
        if skip is not None:
            x = torch.cat([x, skip], dim=1)
        return self.conv(x)


def unet_decoder(enc_channels: list[int], decoder_channels, full_resolution: bool, encoder: str = "") \
        -> tuple[nn.ModuleList, list[int]]:
    """Decoder blocks from the deepest encoder level up, one per skip (and one more at full resolution, with no
    skip, when `full_resolution`); returns the blocks and their output channels."""
    skips = list(reversed(enc_channels[:-1])) + ([0] if full_resolution else [])
    if len(decoder_channels) < len(skips):
        raise ValueError(f"decoder_channels needs {len(skips)} entries for encoder '{encoder}'")
    chans = list(decoder_channels)[: len(skips)]
    blocks, cin = [], enc_channels[-1]
    for cskip, cout in zip(skips, chans):
        blocks.append(DecoderBlock(cin, cskip, cout))
        cin = cout
    return nn.ModuleList(blocks), chans


class UNet(nn.Module):
    """Encoder (timm, features at strides 2..32) -> U-Net decoder -> full-resolution named heads."""

    def __init__(
        self,
        encoder: str = "efficientnet_lite0",
        encoder_weights: str | None = None,
        in_channels: int = 3,
        decoder_channels: tuple[int, ...] = (128, 64, 48, 32, 16),
        heads: dict[str, int] | None = None,
        output_stride: int = 1,
    ):
        super().__init__()
        self.encoder = create_encoder(encoder, in_chans=in_channels, weights=encoder_weights)
        enc_ch = self.encoder.feature_info.channels()
        reductions = self.encoder.feature_info.reduction()
        if output_stride not in (1, 2):
            raise ValueError("output_stride must be 1 or 2")
        # Stride 2 drops the full-resolution block (the costliest: every conv at H×W) and upsamples the heads'
        # outputs bilinearly; nuclei at 20-40x span 10-40 px, so their maps survive that.
        self.full_resolution = reductions[0] > 1 and output_stride == 1
        self.decoder, chans = unet_decoder(enc_ch, decoder_channels, self.full_resolution, encoder)
        cin = chans[-1]
        heads = heads or {"logits": 1}
        self.heads = nn.ModuleDict({name: nn.Conv2d(cin, ch, 1) for name, ch in heads.items()})

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        feats = self.encoder(x)
        y = feats[-1]
        skips = list(reversed(feats[:-1])) + ([None] if self.full_resolution else [])
        for block, skip in zip(self.decoder, skips):
            y = block(y, skip)
        out = {name: head(y) for name, head in self.heads.items()}
        if y.shape[-2:] != x.shape[-2:]:
            out = {k: F.interpolate(v, size=x.shape[-2:], mode="bilinear", align_corners=False) for k, v in out.items()}
        return out


@register_model("unet", "U-Net over a timm encoder with named 1×1 heads (baseline: 3-class + distance map)")
def unet(**cfg) -> UNet:
    return UNet(**cfg)
