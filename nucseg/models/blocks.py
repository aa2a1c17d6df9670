"""Building blocks shared by methods: CBAM attention and transformer blocks with grid (window) self-attention."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class ChannelAttention(nn.Module):
    """CBAM's channel attention (Woo et al. 2018): a shared MLP over the average- and max-pooled descriptors."""

    def __init__(self, channels: int, reduction: int = 16):
        super().__init__()
        hidden = max(channels // reduction, 4)
        self.mlp = nn.Sequential(nn.Conv2d(channels, hidden, 1), nn.ReLU(inplace=True), nn.Conv2d(hidden, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        avg = self.mlp(F.adaptive_avg_pool2d(x, 1))
        peak = self.mlp(F.adaptive_max_pool2d(x, 1))
        return x * torch.sigmoid(avg + peak)


class SpatialAttention(nn.Module):
    """CBAM's spatial attention: a 7×7 convolution over the channel mean and maximum."""

    def __init__(self, kernel: int = 7):
        super().__init__()
        self.conv = nn.Conv2d(2, 1, kernel, padding=kernel // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = torch.cat([x.mean(1, keepdim=True), x.amax(1, keepdim=True)], dim=1)
        return x * torch.sigmoid(self.conv(pooled))


class CBAM(nn.Module):
    """Channel then spatial attention (the order of the CBAM paper)."""

    def __init__(self, channels: int, reduction: int = 16, kernel: int = 7):
        super().__init__()
        self.channel = ChannelAttention(channels, reduction)
        self.spatial = SpatialAttention(kernel)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.spatial(self.channel(x))


def window_partition(x: torch.Tensor, window: int) -> torch.Tensor:
    """N×H×W×C tokens -> (N·H/w·W/w)×(w·w)×C, one row of tokens per w×w window."""
    n, h, w, c = x.shape
    x = x.view(n, h // window, window, w // window, window, c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window * window, c)


def window_merge(windows: torch.Tensor, window: int, h: int, w: int) -> torch.Tensor:
    """The inverse of `window_partition`."""
    c = windows.shape[-1]
    n = windows.shape[0] // ((h // window) * (w // window))
    x = windows.view(n, h // window, w // window, window, window, c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(n, h, w, c)


class TransformerBlock(nn.Module):
    """Pre-norm transformer encoder block (Vaswani et al.; ViT layout). With `window`, self-attention runs within
    non-overlapping window×window grids of the token map (TransGAN's grid self-attention) instead of over all tokens:
    the cost grows with the number of tokens, not its square. Tokens come as N×L×C; with `window`, `grid` (h, w)
    gives their layout and extra leading tokens (a class token) are not allowed."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0, window: int | None = None):
        super().__init__()
        self.window = window
        self.norm1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm2 = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor, grid: tuple[int, int] | None = None) -> torch.Tensor:
        y = self.norm1(x)
        if self.window is not None:
            if grid is None or grid[0] * grid[1] != x.shape[1]:
                raise ValueError("grid attention needs the token grid (h, w) with h·w tokens")
            h, w = grid
            if h % self.window or w % self.window:
                raise ValueError(f"token grid {h}×{w} is not a multiple of the attention window {self.window}")
            win = window_partition(y.view(len(x), h, w, -1), self.window)
            win = self.attn(win, win, win, need_weights=False)[0]
            y = window_merge(win, self.window, h, w).reshape(x.shape)
        else:
            y = self.attn(y, y, y, need_weights=False)[0]
        x = x + y
        return x + self.mlp(self.norm2(x))
