"""Building blocks shared by methods: CBAM attention, transformer blocks with grid (window) self-attention, gated
convolutions (GLU) and the SAM + eU-Net3+ Enhanced Fusion Block."""

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


ACTIVATIONS = ("relu", "leakyrelu", "swish", "glu")


def conv_norm_act(cin: int, cout: int, activation: str = "relu", kernel: int = 3) -> nn.Sequential:
    """Convolution -> BatchNorm -> activation. With "glu" the convolution gives 2·cout channels and a gated linear
    unit (Dauphin et al. 2017) keeps (a) ⊙ σ(b) of its two halves: a learned, per-pixel gate in place of a fixed
    non-linearity (eU-Net3+). relu / leakyrelu (slope 0.01) / swish are the fixed ones it is compared with."""
    if activation not in ACTIVATIONS:
        raise ValueError(f"unknown activation '{activation}' (known: {', '.join(ACTIVATIONS)})")
    width = 2 * cout if activation == "glu" else cout
    act = {"relu": nn.ReLU(inplace=True), "leakyrelu": nn.LeakyReLU(0.01, inplace=True), "swish": nn.SiLU(inplace=True),
           "glu": nn.GLU(dim=1)}[activation]
    return nn.Sequential(nn.Conv2d(cin, width, kernel, padding=kernel // 2, bias=False), nn.BatchNorm2d(width), act)


class EnhancedFusionBlock(nn.Module):
    """The Enhanced Fusion Block of the SAM + eU-Net3+ paper: local (task model) and global (SAM) features are
    concatenated, reweighted by a gated squeeze-and-excitation (pooled channels -> two GLU layers -> sigmoid), mixed
    by a GLU 1×1 block back to the local width, and attended: queries from the fused local map, keys and values from
    the gated SAM features (`attention: cross`), or all from the fused map (`self`), or none (`none`, an ablation).

    The paper gives the three parts and their order, not their inner sizes; ours: SE reduction 4, attention width =
    the local width, `heads` heads, pre-norm and a residual around the attention so the block starts close to the
    gated mix. `global_ch` SAM features are resized to the local map first.

    `window`: attention within non-overlapping window×window token grids (the map is edge-padded to a multiple),
    so a model trained on 256² patches attends over the same 256² extent on a 1000² tile, at a cost linear in the
    area; None attends over the whole map."""

    def __init__(self, local_ch: int, global_ch: int, heads: int = 4, reduction: int = 4, attention: str = "cross",
                 window: int | None = None):
        super().__init__()
        self.window = window
        if attention not in ("cross", "self", "none"):
            raise ValueError(f"unknown EFB attention '{attention}' (cross | self | none)")
        both = local_ch + global_ch
        hidden = max(both // reduction, 8)
        self.local_ch, self.attention = local_ch, attention
        # squeeze-and-excitation with GLUs: each linear layer gives twice its width, the GLU gates one half by the other
        self.excite = nn.Sequential(nn.Linear(both, 2 * hidden), nn.GLU(dim=-1), nn.Linear(hidden, 2 * both),
                                    nn.GLU(dim=-1))
        self.mix = nn.Sequential(nn.Conv2d(both, 2 * local_ch, 1, bias=False), nn.BatchNorm2d(2 * local_ch),
                                 nn.GLU(dim=1))
        if attention != "none":
            heads = heads if local_ch % heads == 0 else 1
            self.norm_q = nn.LayerNorm(local_ch)
            self.norm_kv = nn.LayerNorm(global_ch if attention == "cross" else local_ch)
            kv = global_ch if attention == "cross" else local_ch
            self.attn = nn.MultiheadAttention(local_ch, heads, kdim=kv, vdim=kv, batch_first=True)

    def forward(self, local: torch.Tensor, glob: torch.Tensor) -> torch.Tensor:
        if glob.shape[-2:] != local.shape[-2:]:
            glob = F.interpolate(glob, size=local.shape[-2:], mode="bilinear", align_corners=False)
        x = torch.cat([local, glob.to(local.dtype)], dim=1)
        gate = torch.sigmoid(self.excite(x.mean((2, 3))))[..., None, None]
        x = x * gate
        fused = self.mix(x)
        if self.attention == "none":
            return fused
        n, c, h, w = fused.shape
        q = self.norm_q(fused.permute(0, 2, 3, 1))
        kv = x[:, self.local_ch :] if self.attention == "cross" else fused
        kv = self.norm_kv(kv.permute(0, 2, 3, 1))
        if self.window is None:
            attended = self.attn(q.flatten(1, 2), kv.flatten(1, 2), kv.flatten(1, 2), need_weights=False)[0]
            return fused + attended.transpose(1, 2).reshape(n, c, h, w)
        win = self.window
        ph, pw = -h % win, -w % win
        if ph or pw:  # edge-pad the token grid (channels-last: pad W, then H)
            q = F.pad(q.permute(0, 3, 1, 2), (0, pw, 0, ph), mode="replicate").permute(0, 2, 3, 1)
            kv = F.pad(kv.permute(0, 3, 1, 2), (0, pw, 0, ph), mode="replicate").permute(0, 2, 3, 1)
        qw, kvw = window_partition(q.contiguous(), win), window_partition(kv.contiguous(), win)
        attended = window_merge(self.attn(qw, kvw, kvw, need_weights=False)[0], win, h + ph, w + pw)
        return fused + attended[:, :h, :w].permute(0, 3, 1, 2)
