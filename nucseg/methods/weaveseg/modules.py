"""WeaveSeg's building blocks (Li, Wu & Qin, "WeaveSeg: Iterative Contrast-weaving and Spectral Feature-refining
for Nuclei Instance Segmentation"): ASR with LSGR (Sec. 3.2, eqs. 1-4), and ICW with contrastive attention and AGLU
(Sec. 3.3, eqs. 5-10).

The paper publishes no code. Where it is vague we follow its cited sources and say so:
- ASR's adaptive low-pass filter (eq. 1) is a content-generated K×K kernel per output pixel, softmax-normalised (so
  it is a true low-pass: non-negative, summing to 1), applied to F_high's K×K neighbourhood for each of the 2×2
  output sub-pixels. That is eq. 1's "depth-wise conv + pixel shuffle", written as CARAFE/FreqFusion (ref. [4]) do.
  The paper's Hamming window is "implicit ... due to localized convolution": no window multiplies the kernel by
  default (`window="none"`), so a uniform softmax is a box filter. `window="hamming"` multiplies by the K×K Hamming
  window as an earlier version did; at K = 3 that keeps ~74 % of the weight on the centre tap at a uniform softmax
  (a corner tap needs +5 nats to reach a box filter), so ASR was close to nearest up-sampling.
- The "mirrored" high-pass branch is identity minus an adaptive low-pass of F_low (FreqFusion's construction), and
  the enhanced map is F_low + HP(F_low). Eq. 4 is the sum of the two branches; `mix=True` adds the 3×3
  conv-BN-ReLU an earlier version put after it.
- LSGR (eqs. 2-3): cosine similarity of each pixel of F_comb with its 8 neighbours, concatenated with F_comb, a 3×3
  conv predicting G (x, y) offset pairs (zero-initialised: training starts from plain resampling), bilinear
  grid-sampling of each channel group of the low-passed map.
- The contrastive attention's context maps (eq. 8) are C_ctx-channel features of the decoupling branch at ICW's
  resolution, and w_f, w_b are learnable vectors (1×1 convs without bias) reducing them to one logit per pixel;
  padding outside the image is masked out of the softmax, so the weights sum to 1 over every window.
- AGLU (eq. 9) has scalar κ and λ by default (the paper plots one value of each), per-channel as an option.
- S^u in ICW (Sec. 3.3 gives each iteration S^f, S^b and S^u, but eqs. 6-10 use only S^f and S^b): by default
  (`uncertainty="update"`) the iteration's update (eq. 10) is scaled by 1 + σ(w_u·S^u), so the weaving acts most
  where the decoupling branch is uncertain, the paper's "targeted contrast enhancement in ambiguous boundary areas";
  `"attention"` adds w_u·S^u to eq. 8's logits instead; `"none"` leaves S^u out of ICW.
"""

from __future__ import annotations

import functools

import torch
import torch.nn as nn
import torch.nn.functional as F


def conv_bn_relu(cin: int, cout: int, k: int = 3, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, k // 2, bias=False), nn.BatchNorm2d(cout), nn.ReLU(True))


def hamming2d(k: int) -> torch.Tensor:
    w = torch.hamming_window(k, periodic=False) if k > 1 else torch.ones(1)
    return torch.outer(w, w).flatten()


@functools.cache
def _compiled(fn):
    """`fn` through torch.compile, for training only (`compile_kernels`): eager autograd of a tap loop gives every
    shifted view a zero-filled, padded-size gradient and copies it in, k² full-size fills and copies per call (fills
    and copies were ~36 % of a WeaveSeg training step on CPU); inductor fuses the loop and its backward (forward +
    backward 3-11× faster on the shapes of `configs/weaveseg/he-cpu.yaml`, a whole step 5.11 -> 3.83 s, 2 CPU
    threads). Inference and ONNX export always run the eager code."""
    import torch._dynamo

    # one compiled graph per (shape, k, scale): a WeaveSeg has ~a dozen, over dynamo's default limit of 8
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
    return torch.compile(fn, dynamic=False)


def _compiling(module: nn.Module, *tensors: torch.Tensor) -> bool:
    return (module.compile_kernels and torch.is_grad_enabled() and any(t.requires_grad for t in tensors)
            and not (torch.jit.is_tracing() or torch.onnx.is_in_onnx_export()))


def apply_local_kernel(x: torch.Tensor, kernel: torch.Tensor, k: int, scale: int, compiled: bool = False
                       ) -> torch.Tensor:
    """Filter x (N, C, H, W) with a per-output-pixel kernel (N, k², sH, sW): output pixel (i, j) combines x's k×k
    neighbourhood around (i // s, j // s) (zero padding). With scale 2 this is eq. 1's filter-then-pixel-shuffle.

    Written as a loop over the k² taps (a shifted view of x times one kernel plane each): 35-60× faster on CPU than
    unfolding all neighbourhoods, and it never materialises a C·k²·H·W tensor. `compiled`: through torch.compile
    (see `_compiled`)."""
    if compiled:
        return _compiled(apply_local_kernel)(x.contiguous(), kernel.contiguous(), k, scale)
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


def local_cosine_similarity(x: torch.Tensor, compiled: bool = False) -> torch.Tensor:
    """(N, 8, H, W): cosine similarity of each pixel's feature vector with each of its 8 neighbours."""
    if compiled:
        # contiguous: inductor's replication-pad backward has asserted on channels_last strides
        return _compiled(local_cosine_similarity)(x.contiguous())
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
    """Generates a normalised k×k low-pass kernel per pixel from features (softmax over the k² taps), optionally
    multiplied by a Hamming window (`window="hamming"`) and renormalised."""

    def __init__(self, cin: int, k: int, window: str = "none"):
        super().__init__()
        if window not in ("none", "hamming"):
            raise ValueError(f"ASR window must be none or hamming, not '{window}'")
        self.k = k
        self.conv = nn.Conv2d(cin, k * k, 3, padding=1)
        self.windowed = window == "hamming"
        self.register_buffer("window", hamming2d(k).view(1, k * k, 1, 1), persistent=False)

    def forward(self, feat: torch.Tensor) -> torch.Tensor:
        kernel = self.conv(feat).float().softmax(dim=1)
        if not self.windowed:
            return kernel
        kernel = kernel * self.window
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

    compile_kernels = False  # set by the network: see `_compiled`

    def offsets(self, comb: torch.Tensor) -> torch.Tensor:
        sim = local_cosine_similarity(comb, _compiling(self, comb))
        return torch.tanh(self.offset(torch.cat([comb, sim], dim=1))) * self.max_offset

    def forward(self, x: torch.Tensor, comb: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        g = self.groups
        off = self.offsets(comb).float().reshape(n * g, 2, h, w)
        # pixel coordinates from cumulative sums, not from the sizes as numbers: an exported graph then holds no
        # size of the example it was traced on
        ones = torch.ones_like(off[:, :1])
        px, py = ones.cumsum(-1) - 1, ones.cumsum(-2) - 1
        span_x, span_y = px[..., -1:].clamp(min=1), py[..., -1:, :].clamp(min=1)  # w - 1, h - 1
        grid = torch.cat([(px + off[:, :1]) / span_x, (py + off[:, 1:]) / span_y], 1) * 2 - 1
        sampled = F.grid_sample(x.float().reshape(n * g, c // g, h, w), grid.permute(0, 2, 3, 1), mode="bilinear",
                                padding_mode="border", align_corners=True)
        return sampled.reshape(n, c, h, w).to(x.dtype)


class ASR(nn.Module):
    """Adaptive Spectral detail Refinement: fuse a deep F_high (C, H, W) with a shallow F_low (C, 2H, 2W) (eq. 4)."""

    # F_low is twice F_high's size (decoder levels); a fixed factor keeps the graph static for ONNX export
    SCALE = 2

    def __init__(self, channels: int, lowpass_kernel: int = 3, highpass_kernel: int = 3, groups: int = 4,
                 comb_channels: int = 32, use_lsgr: bool = True, window: str = "none", mix: bool = False):
        super().__init__()
        if channels % groups:
            raise ValueError(f"ASR channels ({channels}) must be divisible by LSGR groups ({groups})")
        self.kl, self.kh = lowpass_kernel, highpass_kernel
        self.comb = nn.Sequential(nn.Conv2d(2 * channels, comb_channels, 1), nn.ReLU(True))
        self.lowpass = AdaptiveKernel(comb_channels, lowpass_kernel, window)
        self.highpass = AdaptiveKernel(comb_channels, highpass_kernel, window)
        self.lsgr = LSGR(comb_channels, groups) if use_lsgr else None
        self.fuse = conv_bn_relu(channels, channels) if mix else None

    compile_kernels = False  # set by the network: see `_compiled`

    def forward(self, f_high: torch.Tensor, f_low: torch.Tensor) -> torch.Tensor:
        compiled = _compiling(self, f_high, f_low)
        size = f_low.shape[-2:]
        up = F.interpolate(f_high, size=size, mode="nearest")
        comb = self.comb(torch.cat([up, f_low], dim=1))
        # the kernel is generated at F_low's resolution; on odd sizes F_high·2 overhangs F_low by a pixel
        hh, hw = 2 * f_high.shape[-2], 2 * f_high.shape[-1]
        kernel = self.lowpass(comb)
        if kernel.shape[-2:] != (hh, hw):
            kernel = F.pad(kernel, (0, hw - kernel.shape[-1], 0, hh - kernel.shape[-2]), mode="replicate")
        lp = apply_local_kernel(f_high.float(), kernel, self.kl, self.SCALE, compiled)[..., : size[0], : size[1]]  # eq. 1
        resampled = self.lsgr(lp, comb) if self.lsgr is not None else lp  # eqs. 2-3
        smooth_low = apply_local_kernel(f_low.float(), self.highpass(comb), self.kh, 1, compiled)
        low_hf = f_low.float() + (f_low.float() - smooth_low)  # adaptive high-pass, added back
        out = (resampled + low_hf).to(f_low.dtype)  # eq. 4
        return self.fuse(out) if self.fuse is not None else out


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

    def __init__(self, channels: int, context_channels: int, window: int = 5, use_uncertainty: bool = False):
        super().__init__()
        self.k = window
        self.value = nn.Conv2d(channels, channels, 1)  # W_v, eq. 7
        self.w_f = nn.Conv2d(context_channels, 1, 1, bias=False)
        self.w_b = nn.Conv2d(context_channels, 1, 1, bias=False)
        self.w_u = nn.Conv2d(context_channels, 1, 1, bias=False) if use_uncertainty else None

    def weights(self, ctx_f: torch.Tensor, ctx_b: torch.Tensor, ctx_u: torch.Tensor | None = None) -> torch.Tensor:
        """(N, K², H, W) attention weights; each window's weights sum to 1 (padding excluded)."""
        k, r = self.k, self.k // 2
        h, w = ctx_f.shape[-2:]
        logits = self.w_f(ctx_f) - self.w_b(ctx_b)
        if self.w_u is not None and ctx_u is not None:
            logits = logits + self.w_u(ctx_u)
        # -inf outside the image: padding takes no weight; the taps in apply_local_kernel's order
        padded = F.pad(logits.float(), (r, r, r, r), value=float("-inf"))
        taps = [padded[:, 0, dy : dy + h, dx : dx + w] for dy in range(k) for dx in range(k)]
        return torch.stack(taps, 1).softmax(dim=1)

    compile_kernels = False  # set by the network: see `_compiled`

    def forward(self, x: torch.Tensor, ctx_f: torch.Tensor, ctx_b: torch.Tensor,
                ctx_u: torch.Tensor | None = None) -> torch.Tensor:
        v = self.value(x).float()
        return apply_local_kernel(v, self.weights(ctx_f, ctx_b, ctx_u), self.k, 1, _compiling(self, v)).to(x.dtype)


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


UNCERTAINTY_MODES = ("update", "attention", "none")


class ICWIteration(nn.Module):
    """One contrast-weaving step (eqs. 5-10): dense block, contrastive attention, AGLU gate, residual update; S^u
    scales the update (`uncertainty="update"`), enters the attention logits ("attention") or is unused ("none")."""

    def __init__(self, channels: int, context_channels: int, window: int = 5, dense_layers: int = 3,
                 growth: int = 16, aglu_per_channel: bool = False, uncertainty: str = "update"):
        super().__init__()
        if uncertainty not in UNCERTAINTY_MODES:
            raise ValueError(f"ICW uncertainty must be one of {', '.join(UNCERTAINTY_MODES)}, not '{uncertainty}'")
        self.uncertainty = uncertainty
        self.dense = DenseBlock(channels, dense_layers, growth)
        self.attention = ContrastiveAttention(channels, context_channels, window, uncertainty == "attention")
        self.gate = AGLU(channels, aglu_per_channel)
        self.w_u = nn.Conv2d(context_channels, 1, 1) if uncertainty == "update" else None

    def forward(self, x: torch.Tensor, ctx_f: torch.Tensor, ctx_b: torch.Tensor,
                ctx_u: torch.Tensor | None = None) -> torch.Tensor:
        update = self.gate(self.attention(self.dense(x), ctx_f, ctx_b, ctx_u))
        if self.w_u is not None and ctx_u is not None:
            update = update * (1 + torch.sigmoid(self.w_u(ctx_u)))
        return x + update
