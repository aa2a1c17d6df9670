"""eU-Net3+ (U-Net3+ with GLU gating) fused with a frozen SAM image encoder through the Enhanced Fusion Block.

U-Net3+ (Huang et al. 2020): five encoder levels (two conv-BN-act each, max-pooling between); every decoder level
gathers all five scales (shallower encoder maps max-pooled down, the same level's encoder map, deeper decoder maps
upsampled), each brought to `cat_channels` by a 3×3 conv, concatenated and fused by one more 3×3 conv; deep
supervision puts a 3×3 side head on every decoder level and on the bottleneck. eU-Net3+ swaps every ReLU for a GLU.

SAM fusion: the SAM embedding (stride 4) is average-pooled to the resolution of encoder level `fusion_level` (the
bottleneck by default, where the EFB's attention is cheapest) and fused there by the EFB, whose attention runs within
windows of one SAM chunk (256² image px); the fused map replaces that encoder level for the decoder's full-scale
connections.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from nucseg.models.blocks import EnhancedFusionBlock, conv_norm_act
from nucseg.models.registry import register_model


def _resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if x.shape[-2:] == size:
        return x
    if x.shape[-2] >= size[0] and x.shape[-1] >= size[1]:
        return F.adaptive_avg_pool2d(x, size)
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


class EUNet3Plus(nn.Module):
    def __init__(
        self,
        in_channels: int = 3,
        filters: tuple[int, ...] = (64, 128, 256, 512, 1024),
        cat_channels: int = 64,
        activation: str = "glu",
        dropout: float = 0.3,
        heads: dict[str, int] | None = None,
        deep_supervision: str | None = "logits",
        sam: dict | None = None,
        fusion_level: int = -1,
        efb_attention: str = "cross",
        efb_heads: int = 4,
    ):
        super().__init__()
        levels = len(filters)
        self.levels = levels
        self.encoder = nn.ModuleList()
        cin = in_channels
        for f in filters:
            self.encoder.append(nn.Sequential(conv_norm_act(cin, f, activation), conv_norm_act(f, f, activation)))
            cin = f
        # dropout 0.3 (the paper's) on the deepest features, where the network has the most parameters to overfit
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()

        self.sam = None
        self.fusion_level = fusion_level % levels
        if sam:
            from nucseg.models.sam import SamBackbone

            self.sam = SamBackbone(**sam)
            # attention windows cover one SAM chunk (256² image px): the extent a training patch has, at any size
            window = max(self.sam.chunk // 2 ** self.fusion_level, 1)
            self.efb = EnhancedFusionBlock(filters[self.fusion_level], self.sam.embed_dim, heads=efb_heads,
                                           attention=efb_attention, window=window)

        up = cat_channels * levels
        # decoder level d gathers every scale: encoder j <= d, decoder j > d (the bottleneck is decoder level L-1)
        self.gather = nn.ModuleList()
        self.fuse = nn.ModuleList()
        for d in range(levels - 1):
            chans = [filters[j] if j <= d else (filters[-1] if j == levels - 1 else up) for j in range(levels)]
            self.gather.append(nn.ModuleList(conv_norm_act(c, cat_channels, activation) for c in chans))
            self.fuse.append(conv_norm_act(up, up, activation))
        heads = heads or {"logits": 1}
        self.heads = nn.ModuleDict({name: nn.Conv2d(up, ch, 3, padding=1) for name, ch in heads.items()})
        self.deep_supervision = deep_supervision
        if deep_supervision:
            ch = heads[deep_supervision]
            side = [up] * (levels - 2) + [filters[-1]]  # decoder levels 1..L-2, then the bottleneck
            self.side_heads = nn.ModuleList(nn.Conv2d(c, ch, 3, padding=1) for c in side)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        size = x.shape[-2:]
        enc = []
        y = x
        for i, block in enumerate(self.encoder):
            y = block(F.max_pool2d(y, 2) if i else y)
            if i == self.levels - 1:
                y = self.dropout(y)
            if self.sam is not None and i == self.fusion_level:
                glob = self.sam(x)["embedding"]
                y = self.efb(y, _resize(glob, y.shape[-2:]))
            enc.append(y)
        dec: dict[int, torch.Tensor] = {self.levels - 1: enc[-1]}
        for d in reversed(range(self.levels - 1)):
            target = enc[d].shape[-2:]
            parts = []
            for j, conv in enumerate(self.gather[d]):
                if j < d:
                    src = F.max_pool2d(enc[j], 2 ** (d - j), ceil_mode=True)
                elif j == d:
                    src = enc[j]
                else:
                    src = F.interpolate(dec[j], size=target, mode="bilinear", align_corners=False)
                parts.append(conv(_resize(src, target)))
            dec[d] = self.fuse[d](torch.cat(parts, dim=1))
        out = {name: head(dec[0]) for name, head in self.heads.items()}
        if self.deep_supervision and self.training:
            for k, head in enumerate(self.side_heads, start=1):
                side = head(dec[k])
                out[f"side{k}_{self.deep_supervision}"] = F.interpolate(side, size=size, mode="bilinear",
                                                                         align_corners=False)
        return out


@register_model("eunet3p", "U-Net3+ with GLU gating (eU-Net3+), optionally fused with a frozen SAM encoder by the EFB")
def eunet3p(**cfg) -> EUNet3Plus:
    return EUNet3Plus(**cfg)
