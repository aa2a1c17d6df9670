"""Parameter-efficient adapters for a frozen SAM image encoder (CFR-SAM, Sec. 3.4 and Table 8).

    mala          Multi-scale Adaptive Local-aware Adapter: layer norm, down-projection to rank r, per-pixel
                  dynamic kernels at 3/5/7 applied depth-wise (eqs. 3-5) and averaged, residual; 1×1 cross-channel
                  convolution, residual; GELU; up-projection; residual onto the block's output
    mala_static   the same with one learned kernel per scale, shared by every pixel (Table 7 "static kernels")
    adapter       Houlsby et al. 2019: layer norm, down-projection, GELU, up-projection, residual
    lora          Hu et al. 2022 on each attention's qkv projection: qkv(x) + B·A·x

Choices the paper leaves open, made here: an adapter acts on the output of its transformer block (serially, after
the block's own residuals); a kernel generator is a 3×3 convolution with k² outputs whose softmax over the k² taps
is the pixel's kernel (so kernels are normalised and one kernel serves every channel, eq. 3's "k² output channels");
the up-projection (LoRA's B) starts at zero, so an adapted encoder starts as the pretrained one.

Adapters attach as submodules with forward hooks (`block.adapter`, `attn.qkv.lora`): the pretrained tensors keep
their official key names, so SAM checkpoints load before or after adapters are added.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

ADAPTERS = ("mala", "mala_static", "adapter", "lora", "none")


class MALA(nn.Module):
    """N×H×W×C tokens -> the same shape (eqs. 3-5 and Sec. 3.4.1)."""

    def __init__(self, dim: int, rank: int = 64, kernel_sizes: tuple[int, ...] = (3, 5, 7), dynamic: bool = True):
        super().__init__()
        self.kernel_sizes = tuple(int(k) for k in kernel_sizes)
        self.dynamic = dynamic
        self.norm = nn.LayerNorm(dim)
        self.down = nn.Linear(dim, rank)
        if dynamic:
            self.generators = nn.ModuleList(nn.Conv2d(rank, k * k, 3, padding=1) for k in self.kernel_sizes)
        else:
            self.static = nn.ParameterList(nn.Parameter(torch.zeros(k * k)) for k in self.kernel_sizes)
        self.mix = nn.Conv2d(rank, rank, 1)
        self.act = nn.GELU()
        self.up = nn.Linear(rank, dim)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def kernels(self, z: torch.Tensor) -> list[torch.Tensor]:
        """Per scale: N×k²×H×W (dynamic) or 1×k²×1×1 (static) weights summing to 1 over the k² taps."""
        if self.dynamic:
            return [gen(z).softmax(1) for gen in self.generators]
        return [w.softmax(0).view(1, -1, 1, 1) for w in self.static]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[1:3]
        z = self.down(self.norm(x)).permute(0, 3, 1, 2)  # N×r×H×W
        local = 0
        for k, kernel in zip(self.kernel_sizes, self.kernels(z)):
            # eqs. 4-5, the k×k patches (unfold) weighted by the pixel's kernel, as k² shifted views of the padded
            # map: the same sum without materialising an r·k²×H×W tensor
            padded = F.pad(z, (k // 2,) * 4)
            for tap in range(k * k):
                dy, dx = divmod(tap, k)
                local = local + padded[:, :, dy : dy + h, dx : dx + w] * kernel[:, tap : tap + 1]
        z = z + local / len(self.kernel_sizes)
        z = z + self.mix(z)
        return x + self.up(self.act(z).permute(0, 2, 3, 1))


class BottleneckAdapter(nn.Module):
    """Houlsby et al.'s adapter on N×H×W×C tokens."""

    def __init__(self, dim: int, rank: int = 64):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.down = nn.Linear(dim, rank)
        self.up = nn.Linear(rank, dim)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.up(F.gelu(self.down(self.norm(x))))


class LoRA(nn.Module):
    """The low-rank update B·A·x of a linear layer (added to its output by a hook)."""

    def __init__(self, cin: int, cout: int, rank: int = 64, alpha: float | None = None):
        super().__init__()
        self.down = nn.Linear(cin, rank, bias=False)
        self.up = nn.Linear(rank, cout, bias=False)
        nn.init.kaiming_uniform_(self.down.weight, a=5 ** 0.5)
        nn.init.zeros_(self.up.weight)
        self.scale = (alpha or rank) / rank

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(self.down(x)) * self.scale


def _block_adapter_hook(block: nn.Module, args, output: torch.Tensor) -> torch.Tensor:
    """Apply `block.adapter` to a block's output: official ViT blocks give N×H×W×C, TinyViT blocks N×L×C tokens of
    the block's `input_resolution`."""
    if output.ndim == 4:
        return block.adapter(output)
    h, w = block.input_resolution
    n, length, c = output.shape
    return block.adapter(output.view(n, h, w, c)).view(n, length, c)


def _lora_hook(linear: nn.Module, args, output: torch.Tensor) -> torch.Tensor:
    return output + linear.lora(args[0])


def transformer_blocks(image_encoder: nn.Module) -> list[nn.Module]:
    """The transformer blocks of an official SAM ViT (`blocks`) or of TinyViT (the blocks of its attention stages;
    its first stage is convolutional)."""
    if hasattr(image_encoder, "blocks"):
        return list(image_encoder.blocks)
    return [blk for layer in image_encoder.layers for blk in getattr(layer, "blocks", []) if hasattr(blk, "attn")]


def add_adapters(image_encoder: nn.Module, kind: str = "mala", rank: int = 64,
                 kernel_sizes: tuple[int, ...] = (3, 5, 7)) -> list[nn.Module]:
    """Attach one adapter of `kind` to every transformer block of a (frozen) SAM image encoder. Returns them; their
    parameters are trainable, the encoder's own are left as they were."""
    if kind not in ADAPTERS:
        raise ValueError(f"unknown adapter '{kind}' (known: {', '.join(ADAPTERS)})")
    added: list[nn.Module] = []
    if kind == "none":
        return added
    for block in transformer_blocks(image_encoder):
        if kind == "lora":
            qkv = block.attn.qkv
            qkv.lora = LoRA(qkv.in_features, qkv.out_features, rank)
            qkv.register_forward_hook(_lora_hook)
            added.append(qkv.lora)
            continue
        dim = block.attn.qkv.in_features
        block.adapter = (BottleneckAdapter(dim, rank) if kind == "adapter"
                         else MALA(dim, rank, kernel_sizes, dynamic=kind == "mala"))
        block.register_forward_hook(_block_adapter_hook)
        added.append(block.adapter)
    return added
