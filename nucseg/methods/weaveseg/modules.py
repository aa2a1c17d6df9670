"""WeaveSeg's building blocks (Li, Wu & Qin, "WeaveSeg: Iterative Contrast-weaving and Spectral Feature-refining
for Nuclei Instance Segmentation"): ASR with LSGR (Sec. 3.2, eqs. 1-4), and ICW with contrastive attention and AGLU
(Sec. 3.3, eqs. 5-10).

The paper publishes no code. Where it is vague we follow its cited sources and say so:
- ASR's adaptive low-pass filter (eq. 1) is a content-generated K×K kernel per output pixel, softmax-normalised (so
  it is a true low-pass: non-negative, summing to 1) and modulated by a Hamming window, applied to F_high's K×K
  neighbourhood for each of the 2×2 output sub-pixels. That is eq. 1's "depth-wise conv + pixel shuffle", written as
  CARAFE/FreqFusion (ref. [4]) do.
- The "mirrored" high-pass branch is identity minus an adaptive low-pass of F_low (FreqFusion's construction), and
  the enhanced map is F_low + HP(F_low).
- LSGR (eqs. 2-3): cosine similarity of each pixel of F_comb with its 8 neighbours, concatenated with F_comb, a 3×3
  conv predicting G (x, y) offset pairs (zero-initialised: training starts from plain resampling), bilinear
  grid-sampling of each channel group of the low-passed map.
- The contrastive attention's context maps (eq. 8) are C_ctx-channel features of the decoupling branch at ICW's
  resolution, and w_f, w_b are learnable vectors (1×1 convs without bias) reducing them to one logit per pixel;
  padding outside the image is masked out of the softmax, so the weights sum to 1 over every window.
- AGLU (eq. 9) has scalar κ and λ by default (the paper plots one value of each), per-channel as an option.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def conv_bn_relu(cin: int, cout: int, k: int = 3, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, k // 2, bias=False), nn.BatchNorm2d(cout), nn.ReLU(True))


def hamming2d(k: int) -> torch.Tensor:
    w = torch.hamming_window(k, periodic=False) if k > 1 else torch.ones(1)
    return torch.outer(w, w).flatten()


def apply_local_kernel(x: torch.Tensor, kernel: torch.Tensor, k: int, scale: int) -> torch.Tensor:
    """Filter x (N, C, H, W) with a per-output-pixel kernel (N, k², sH, sW): output pixel (i, j) combines x's k×k
    neighbourhood around (i // s, j // s) (zero padding). With scale 2 this is eq. 1's filter-then-pixel-shuffle.

    Written as a loop over the k² taps (a shifted view of x times one kernel plane each): 35-60× faster on CPU than
    unfolding all neighbourhoods, and it never materialises a C·k²·H·W tensor."""
    n, c, h, w = x.shape
    r = k // 2
    xp = F.pad(x, (r, r, r, r))
    if scale > 1:
        # (N, k², sH, sW) -> (N, k², s², H, W): one kernel plane per tap and output sub-pixel
        kern = F.pixel_unshuffle(kernel, scale).view(n, k * k, scale * scale, h, w)
        acc = x.new_zeros(n, c, scale * scale, h, w)
        for t in range(k * k):
            dy, dx = divmod(t, k)
            acc += xp[:, :, dy : dy + h, dx : dx + w].unsqueeze(2) * kern[:, t].unsqueeze(1)
        return F.pixel_shuffle(acc.reshape(n, c * scale * scale, h, w), scale)
    acc = torch.zeros_like(x)
    for t in range(k * k):
        dy, dx = divmod(t, k)
        acc += xp[:, :, dy : dy + h, dx : dx + w] * kernel[:, t : t + 1]
    return acc


def local_cosine_similarity(x: torch.Tensor) -> torch.Tensor:
    """(N, 8, H, W): cosine similarity of each pixel's feature vector with each of its 8 neighbours."""
    xn = F.normalize(x, dim=1)
    padded = F.pad(xn, (1, 1, 1, 1), mode="replicate")
    h, w = x.shape[-2:]
    sims = []
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            if dy == 0 and dx == 0:
                continue
            shifted = padded[:, :, 1 + dy : 1 + dy + h, 1 + dx : 1 + dx + w]
            sims.append((xn * shifted).sum(1))
    return torch.stack(sims, dim=1)


class AdaptiveKernel(nn.Module):
    """Generates a normalised, Hamming-modulated k×k low-pass kernel per pixel from features."""

    def __init__(self, cin: int, k: int):
        super().__init__()
        self.k = k
        self.conv = nn.Conv2d(cin, k * k, 3, padding=1)
        self.register_buffer("window", hamming2d(k).view(1, k * k, 1, 1), persistent=False)

    def forward(self, feat: torch.Tensor) -> torch.Tensor:
        kernel = self.conv(feat).float().softmax(dim=1) * self.window
        return kernel / kernel.sum(dim=1, keepdim=True).clamp_min(1e-6)


class LSGR(nn.Module):
    """Local Similarity-Guided Resampling (eqs. 2-3): offsets from [F_comb, S] resample the low-passed map."""

    def __init__(self, comb_channels: int, groups: int, max_offset: float = 2.0):
        super().__init__()
        self.groups = groups
        self.max_offset = max_offset
        self.offset = nn.Conv2d(comb_channels + 8, 2 * groups, 3, padding=1)
        nn.init.zeros_(self.offset.weight)
        nn.init.zeros_(self.offset.bias)

    def offsets(self, comb: torch.Tensor) -> torch.Tensor:
        sim = local_cosine_similarity(comb)
        return torch.tanh(self.offset(torch.cat([comb, sim], dim=1))) * self.max_offset

    def forward(self, x: torch.Tensor, comb: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        g = self.groups
        off = self.offsets(comb).float().reshape(n * g, 2, h, w)
        ys = torch.linspace(-1, 1, h, device=x.device)
        xs = torch.linspace(-1, 1, w, device=x.device)
        base = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), dim=-1)  # (h, w, 2) as (x, y)
        scale = torch.tensor([2.0 / max(w - 1, 1), 2.0 / max(h - 1, 1)], device=x.device)
        grid = base.unsqueeze(0) + off.permute(0, 2, 3, 1) * scale
        sampled = F.grid_sample(x.float().reshape(n * g, c // g, h, w), grid, mode="bilinear",
                                padding_mode="border", align_corners=True)
        return sampled.reshape(n, c, h, w).to(x.dtype)


class ASR(nn.Module):
    """Adaptive Spectral detail Refinement: fuse a deep F_high (C, H, W) with a shallow F_low (C, 2H, 2W) (eq. 4)."""

    def __init__(self, channels: int, lowpass_kernel: int = 3, highpass_kernel: int = 3, groups: int = 4,
                 comb_channels: int = 32, use_lsgr: bool = True):
        super().__init__()
        if channels % groups:
            raise ValueError(f"ASR channels ({channels}) must be divisible by LSGR groups ({groups})")
        self.kl, self.kh = lowpass_kernel, highpass_kernel
        self.comb = nn.Sequential(nn.Conv2d(2 * channels, comb_channels, 1), nn.ReLU(True))
        self.lowpass = AdaptiveKernel(comb_channels, lowpass_kernel)
        self.highpass = AdaptiveKernel(comb_channels, highpass_kernel)
        self.lsgr = LSGR(comb_channels, groups) if use_lsgr else None
        self.fuse = conv_bn_relu(channels, channels)

    def forward(self, f_high: torch.Tensor, f_low: torch.Tensor) -> torch.Tensor:
        up = F.interpolate(f_high, size=f_low.shape[-2:], mode="nearest")
        comb = self.comb(torch.cat([up, f_low], dim=1))
        scale = f_low.shape[-1] // f_high.shape[-1]
        lp = apply_local_kernel(f_high.float(), self.lowpass(comb), self.kl, scale)  # eq. 1
        if lp.shape[-2:] != f_low.shape[-2:]:
            lp = F.interpolate(lp, size=f_low.shape[-2:], mode="bilinear", align_corners=False)
        resampled = self.lsgr(lp, comb) if self.lsgr is not None else lp  # eqs. 2-3
        smooth_low = apply_local_kernel(f_low.float(), self.highpass(comb), self.kh, 1)
        low_hf = f_low.float() + (f_low.float() - smooth_low)  # adaptive high-pass, added back
        return self.fuse((resampled + low_hf).to(f_low.dtype))  # eq. 4, then a 3×3 conv to mix


class PlainFusion(nn.Module):
    """The 'without ASR' ablation: nearest up-sampling of F_high, plus F_low, then a 3×3 conv."""

    def __init__(self, channels: int, **_):
        super().__init__()
        self.fuse = conv_bn_relu(channels, channels)

    def forward(self, f_high: torch.Tensor, f_low: torch.Tensor) -> torch.Tensor:
        return self.fuse(F.interpolate(f_high, size=f_low.shape[-2:], mode="nearest") + f_low)


class DenseBlock(nn.Module):
    """Eq. 5: `layers` BN-ReLU-Conv3×3 layers, each seeing all earlier outputs; a 1×1 transition back to C."""

    def __init__(self, channels: int, layers: int = 3, growth: int = 16):
        super().__init__()
        self.layers = nn.ModuleList(
            nn.Sequential(nn.BatchNorm2d(channels + i * growth), nn.ReLU(True),
                          nn.Conv2d(channels + i * growth, growth, 3, padding=1, bias=False))
            for i in range(layers)
        )
        self.transition = nn.Conv2d(channels + layers * growth, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = [x]
        for layer in self.layers:
            feats.append(layer(torch.cat(feats, dim=1)))
        return self.transition(torch.cat(feats, dim=1))


class ContrastiveAttention(nn.Module):
    """Eqs. 6-8: values (W_v F) averaged over a K×K window with weights softmax(w_f·S^f↓ − w_b·S^b↓)."""

    def __init__(self, channels: int, context_channels: int, window: int = 5):
        super().__init__()
        self.k = window
        self.value = nn.Conv2d(channels, channels, 1)  # W_v, eq. 7
        self.w_f = nn.Conv2d(context_channels, 1, 1, bias=False)
        self.w_b = nn.Conv2d(context_channels, 1, 1, bias=False)

    def weights(self, ctx_f: torch.Tensor, ctx_b: torch.Tensor) -> torch.Tensor:
        """(N, K², H, W) attention weights; each window's weights sum to 1 (padding excluded)."""
        k = self.k
        n, _, h, w = ctx_f.shape
        logits = (self.w_f(ctx_f) - self.w_b(ctx_b)).float()
        unf = F.unfold(logits, k, padding=k // 2).view(n, k * k, h, w)
        inside = F.unfold(torch.ones(1, 1, h, w, device=logits.device), k, padding=k // 2).view(1, k * k, h, w)
        return unf.masked_fill(inside == 0, float("-inf")).softmax(dim=1)

    def forward(self, x: torch.Tensor, ctx_f: torch.Tensor, ctx_b: torch.Tensor) -> torch.Tensor:
        v = self.value(x).float()
        return apply_local_kernel(v, self.weights(ctx_f, ctx_b), self.k, 1).to(x.dtype)


class AGLU(nn.Module):
    """Eq. 9: F ⊙ σ(κ·F + λ) with learnable κ, λ (scalars, or one per channel)."""

    def __init__(self, channels: int, per_channel: bool = False):
        super().__init__()
        shape = (1, channels, 1, 1) if per_channel else (1,)
        self.kappa = nn.Parameter(torch.ones(shape))
        self.lam = nn.Parameter(torch.zeros(shape))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kappa = self.kappa if self.kappa.dim() == 4 else self.kappa.view(1, 1, 1, 1)
        lam = self.lam if self.lam.dim() == 4 else self.lam.view(1, 1, 1, 1)
        return x * torch.sigmoid(kappa * x + lam)


class ICWIteration(nn.Module):
    """One contrast-weaving step (eqs. 5-10): dense block, contrastive attention, AGLU gate, residual update."""

    def __init__(self, channels: int, context_channels: int, window: int = 5, dense_layers: int = 3,
                 growth: int = 16, aglu_per_channel: bool = False):
        super().__init__()
        self.dense = DenseBlock(channels, dense_layers, growth)
        self.attention = ContrastiveAttention(channels, context_channels, window)
        self.gate = AGLU(channels, aglu_per_channel)

    def forward(self, x: torch.Tensor, ctx_f: torch.Tensor, ctx_b: torch.Tensor) -> torch.Tensor:
        return x + self.gate(self.attention(self.dense(x), ctx_f, ctx_b))
