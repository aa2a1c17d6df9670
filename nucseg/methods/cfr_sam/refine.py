"""CFR-SAM's decoder-side modules: HMFM (Sec. 3.5) and BGMR with MCBE and BGFF (Sec. 3.6).

Resolution bookkeeping. nucseg's SAM backbone encodes 256 px chunks, so in image pixels the (fused) embedding is at
stride 4 and the mask decoder's upscaled features at stride 1: the paper's 1/16 and 1/4 of a 1024² input. BGMR's two
upsamplings of the fused embedding therefore reach the decoder features' resolution, which is already the image's,
and its last two (to the input size) have nothing left to do.

Choices the paper leaves open, made here (each a documented default):
- HMFM: every selected level is brought to the embedding's channels (1×1 conv, zero-initialised) and size; the gate
  is w = σ(MLP(GAP(F))) as eq. 6, with the MLP's last bias starting at -4, so that F + F⊙w (eq. 7) starts as F and
  the pretrained mask decoder first sees the embedding it was trained on. `add`, `concat` and `average` are Table 7's
  alternatives, `none` uses the last level alone.
- MCBE: BE(X) = X + conv1×1(X - AvgPool3(X)) (eq. 10: the gap between a map and its smoothed self); three smoothing
  steps.
- BGFF: the deformable branch's offsets come from a 3×3 conv on its input (zero-initialised: it starts as a plain
  convolution); spatial attention is CBAM's. Deformable convolutions are torchvision's operator, computed by
  `deform_conv3x3` (the same numbers, fast on a CPU).
- Refinement (eq. 14): the spatial weights are σ(F_b) channel by channel.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from nucseg.models.blocks import SpatialAttention

FUSIONS = ("hmfm", "add", "concat", "average", "none")


def _conv_bn_relu(cin: int, cout: int, kernel: int = 3) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, kernel, padding=kernel // 2, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU(inplace=True))


def _resize(x: torch.Tensor, size) -> torch.Tensor:
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    if x.shape[-2] >= size[0] and x.shape[-1] >= size[1]:
        return F.adaptive_avg_pool2d(x, size)
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


class HMFM(nn.Module):
    """Eqs. 6-8: (embedding N×D×h×w, levels [N×C_i×h_i×w_i]) -> N×D×h×w."""

    def __init__(self, level_channels: list[int], dim: int, mode: str = "hmfm", reduction: int = 4):
        super().__init__()
        if mode not in FUSIONS:
            raise ValueError(f"unknown fusion '{mode}' (known: {', '.join(FUSIONS)})")
        self.mode = mode
        self.project = nn.ModuleList(nn.Conv2d(c, dim, 1) for c in level_channels) if mode != "none" else None
        if self.project is not None and mode != "concat":  # concat starts at identity through its fuse weights
            for conv in self.project:
                nn.init.zeros_(conv.weight)
                nn.init.zeros_(conv.bias)
        count = len(level_channels) + 1
        if mode == "hmfm":
            self.gates = nn.ModuleList(nn.Sequential(nn.Linear(dim, dim // reduction), nn.ReLU(inplace=True),
                                                     nn.Linear(dim // reduction, dim)) for _ in range(count))
            for gate in self.gates:
                nn.init.constant_(gate[-1].bias, -4.0)
        if mode == "concat":  # starts as the embedding itself
            self.fuse = nn.Conv2d(dim * count, dim, 1)
            with torch.no_grad():
                self.fuse.weight.zero_()
                self.fuse.weight[:, -dim:, 0, 0] = torch.eye(dim)
                self.fuse.bias.zero_()

    def forward(self, embedding: torch.Tensor, levels: list[torch.Tensor]) -> torch.Tensor:
        if self.mode == "none":
            return embedding
        size = embedding.shape[-2:]
        feats = [_resize(conv(lv), size) for conv, lv in zip(self.project, levels)] + [embedding]
        if self.mode == "add":
            return torch.stack(feats).sum(0)
        if self.mode == "average":
            return torch.stack(feats).mean(0)
        if self.mode == "concat":
            return self.fuse(torch.cat(feats, 1))
        out = 0
        for f, gate in zip(feats, self.gates):
            w = torch.sigmoid(gate(f.mean((2, 3))))[:, :, None, None]  # eq. 6
            out = out + f + f * w  # eqs. 7-8
        return out


class MCBE(nn.Module):
    """Eqs. 9-10: image (N×3×H×W) -> boundary-aware features N×C×H×W at full resolution. `enhance=False`
    (Table 7's "w/o MCBE") keeps the base features only."""

    def __init__(self, in_channels: int, channels: int = 16, steps: int = 3, enhance: bool = True):
        super().__init__()
        self.enhance = enhance
        self.base = _conv_bn_relu(in_channels, channels)
        if enhance:
            self.shallow = _conv_bn_relu(channels, channels)
            self.smooth = nn.ModuleList(_conv_bn_relu(channels, channels) for _ in range(steps))
            self.boundary = nn.ModuleList(nn.Conv2d(channels, channels, 1) for _ in range(steps))
            self.fuse = nn.Conv2d(channels * (steps + 1), channels, 1)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        base = self.base(image)
        if not self.enhance:
            return base
        current = self.shallow(base)
        feats = [current]
        for smooth, boundary in zip(self.smooth, self.boundary):
            current = smooth(F.avg_pool2d(current, 3, 1, 1))  # eq. 9
            feats.append(current + boundary(current - F.avg_pool2d(current, 3, 1, 1)))  # eq. 10
        return base + self.fuse(torch.cat(feats, 1))


def deform_conv3x3(x: torch.Tensor, offset: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """A 3×3 deformable convolution (DCNv1, stride 1, padding 1): torchvision's `deform_conv2d` with its offset
    layout ((dy, dx) per kernel tap, row-major), accumulated tap by tap: each tap's weights (a 1×1 convolution, C to
    O channels) are applied first and the O-channel result is sampled bilinearly at the tap's positions
    (`grid_sample`, zeros outside, as torchvision's). Sampling and a 1×1 convolution commute (both are linear, one
    across space at a pixel, the other across channels), so the sum is the same numbers (tests/methods/
    test_cfr_sam.py), without the C·9×H×W column tensor torchvision and a sample-then-project form build, and with
    O instead of C channels sampled. On a CPU torchvision's kernel is about two orders of magnitude slower; its
    backward pass dominated a BGMR training step."""
    n, c, h, w = x.shape
    ys, xs = torch.meshgrid(torch.arange(h, device=x.device, dtype=x.dtype),
                            torch.arange(w, device=x.device, dtype=x.dtype), indexing="ij")
    out = None
    for tap in range(9):
        ky, kx = divmod(tap, 3)
        py = ys + (ky - 1) + offset[:, 2 * tap]
        px = xs + (kx - 1) + offset[:, 2 * tap + 1]
        grid = torch.stack([px * (2 / max(w - 1, 1)) - 1, py * (2 / max(h - 1, 1)) - 1], -1)
        projected = F.conv2d(x, weight[:, :, ky : ky + 1, kx : kx + 1])
        term = F.grid_sample(projected, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
        out = term if out is None else out + term
    return out


class DeformBlock(nn.Module):
    """A 3×3 deformable convolution with its offsets predicted from its input, BN, ReLU."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        # the BatchNorm is registered before the offset convolution, which does not feed it: BatchNorm folding
        # (nucseg.models.fusion) pairs a Conv2d with a BatchNorm registered right after it
        self.norm = nn.BatchNorm2d(cout)
        self.offset = nn.Conv2d(cin, 18, 3, padding=1)
        nn.init.zeros_(self.offset.weight)
        nn.init.zeros_(self.offset.bias)
        self.weight = nn.Parameter(torch.empty(cout, cin, 3, 3))
        nn.init.kaiming_uniform_(self.weight, a=5 ** 0.5)  # nn.Conv2d's initialisation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.norm(deform_conv3x3(x, self.offset(x), self.weight)))


class BGFF(nn.Module):
    """Eqs. 11-13: semantic features split in two, each concatenated with the boundary features, one half fused by a
    plain convolution, the other by a deformable one, each modulated by spatial attention, concatenated, 1×1."""

    def __init__(self, channels: int, edge_channels: int):
        super().__init__()
        half = channels // 2
        self.plain = nn.Sequential(_conv_bn_relu(half + edge_channels, half), SpatialAttention())
        self.deform = DeformBlock(channels - half + edge_channels, half)
        self.deform_attention = SpatialAttention()
        self.fuse = nn.Conv2d(2 * half, channels, 1)

    def forward(self, semantic: torch.Tensor, edges: torch.Tensor) -> torch.Tensor:
        half = self.plain[0][0].in_channels - edges.shape[1]
        a, b = semantic[:, :half], semantic[:, half:]
        ya = self.plain(torch.cat([a, edges], 1))
        yb = self.deform_attention(self.deform(torch.cat([b, edges], 1)))
        return self.fuse(torch.cat([ya, yb], 1))


class BGMR(nn.Module):
    """Boundary-guided mask refinement. Image-level parts (`image_features`) run once per image; `forward` runs per
    prompt on a window of each: (semantic window P×C×m×m, mask-decoder features P×C_m×m×m, boundary features
    P×C_e×m×m) -> (refined mask logits P×1×m×m, boundary logits P×1×m×m).

    Switches (Table 7): `mcbe=False` (plain image features), `bgff=False` (semantic and boundary features joined by a
    1×1 conv, without alignment)."""

    def __init__(self, embed_dim: int, mask_channels: int, in_channels: int = 3, channels: int = 32,
                 edge_channels: int = 16, mcbe: bool = True, bgff: bool = True):
        super().__init__()
        mid = max(2 * channels, 32)
        # Sec. 3.6.1: two (bilinear ×2, conv) steps from the embedding's stride 4 to the decoder features' stride 1
        self.upsample = nn.Sequential(nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
                                      _conv_bn_relu(embed_dim, mid),
                                      nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
                                      _conv_bn_relu(mid, channels))
        self.join = _conv_bn_relu(channels + mask_channels, channels, kernel=1)
        self.mcbe = MCBE(in_channels, edge_channels, enhance=mcbe)
        self.bgff = BGFF(channels, edge_channels) if bgff else nn.Conv2d(channels + edge_channels, channels, 1)
        self.boundary_head = nn.Sequential(_conv_bn_relu(channels, channels // 2), nn.Conv2d(channels // 2, 1, 1))
        self.bottleneck = nn.Sequential(_conv_bn_relu(channels, channels // 2, kernel=1),
                                        DeformBlock(channels // 2, channels // 2),
                                        nn.Conv2d(channels // 2, channels, 1, bias=False), nn.BatchNorm2d(channels))
        self.mask_head = nn.Sequential(_conv_bn_relu(channels, channels), _conv_bn_relu(channels, channels // 2),
                                       nn.Conv2d(channels // 2, 1, 1))

    def image_features(self, fused: torch.Tensor, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(semantic features at the image's resolution, MCBE boundary features), cropped to the image."""
        semantic = self.upsample(fused)[..., : image.shape[-2], : image.shape[-1]]
        return semantic, self.mcbe(image)

    def forward(self, semantic: torch.Tensor, mask_features: torch.Tensor, edges: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        up = self.join(torch.cat([semantic, mask_features], 1))  # F_up
        if isinstance(self.bgff, BGFF):
            fused = self.bgff(up, edges)
        else:
            fused = self.bgff(torch.cat([up, edges], 1))
        boundary = self.boundary_head(fused)
        refined = up + self.bottleneck(up * torch.sigmoid(fused))  # eq. 14
        return self.mask_head(refined), boundary
