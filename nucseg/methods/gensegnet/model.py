"""GeNSeg-Net's networks (Sec. 3.2-3.4): grey input, the enhancement GAN's generators and discriminators, and the
whole model the engine trains and runs.

- `GreyInput`: RGB -> one channel with nuclei bright, in [0, 1] (Sec. 3.4 converts every image to grey).
- `Generator`: pix2pix's ResNet generator (stem, strided down-samplings, residual blocks, transposed-convolution
  up-samplings, tanh), with Res-CBAM blocks (ours) or plain residual blocks, and 2 or 0 down-samplings (Table 6).
- `TransformerDiscriminator`: the multi-scale lightweight discriminator after TransGAN (patches P, 2P, 4P, 8P; grid
  self-attention on grids above 16×16; pooled features concatenated with the next scale's tokens; class token before
  the last block). `PatchDiscriminator`: pix2pix's 70×70 PatchGAN (the "basic" discriminator of Table 5).
- `GeNSegNet`: grey -> generator -> 3-class U-Net, with the training-time calls the method's stages need, each one
  forward call (so DDP sees one forward per backward).

BatchNorm, not InstanceNorm, in the generator (pix2pix's default for paired training): in eval mode it is a fixed
per-pixel map, so an image tiled into windows is enhanced exactly as it would be whole.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from nucseg.models.blocks import CBAM, TransformerBlock
from nucseg.models.registry import register_model

# Ruifrok & Johnston's stain matrix (rows: haematoxylin, eosin, DAB optical densities in RGB), as in scikit-image
RGB_FROM_HED = torch.tensor([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]])
LUMINANCE = torch.tensor([0.299, 0.587, 0.114])


class GreyInput(nn.Module):
    """The engine's normalised RGB -> one grey channel in [0, 1], nuclei bright.

    Fluorescence: luminance (nuclei already bright). Brightfield (H&E, IHC): the haematoxylin optical density by
    colour deconvolution (Ruifrok & Johnston 2001), divided by `haematoxylin_scale` and clipped (nuclei stain dark
    blue, so high density; the DAB and eosin of the cytoplasm and stroma fall away), or with
    `brightfield_channel: optical_density` the mean optical density over RGB (any stain). `modality: auto` decides per
    image: mean luminance below `auto_threshold` is fluorescence (a dark background), else brightfield. The decision
    comes in as `fluorescent` (N×1×1×1, from the whole image: `GeNSegMethod.image_planes`, the engine's side input),
    so every window and tile of one image is converted alike; without it, each input decides from its own mean.
    A fixed scale, not per-image normalisation, so that a tile is converted as its whole image would be."""

    def __init__(self, mean, std, modality: str = "auto", brightfield_channel: str = "haematoxylin",
                 haematoxylin_scale: float = 2.0, auto_threshold: float = 0.4):
        super().__init__()
        if modality not in ("auto", "fluorescence", "brightfield"):
            raise ValueError(f"modality must be auto, fluorescence or brightfield, got '{modality}'")
        if brightfield_channel not in ("haematoxylin", "optical_density"):
            raise ValueError(f"brightfield_channel must be haematoxylin or optical_density, got '{brightfield_channel}'")
        self.modality, self.channel = modality, brightfield_channel
        self.scale, self.threshold = haematoxylin_scale, auto_threshold
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.as_tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("luminance", LUMINANCE.view(1, 3, 1, 1), persistent=False)
        stain = torch.linalg.inv(RGB_FROM_HED)[:, 0] if brightfield_channel == "haematoxylin" else torch.full((3,), 1 / 3)
        self.register_buffer("stain", stain.view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor, fluorescent: torch.Tensor | None = None) -> torch.Tensor:
        rgb = (x * self.std + self.mean).clamp(0, 1)
        if self.modality == "fluorescence":
            return (rgb * self.luminance).sum(1, keepdim=True)
        od = -torch.log(rgb.clamp(min=1 / 255))
        bright = ((od * self.stain).sum(1, keepdim=True) / self.scale).clamp(0, 1)
        if self.modality == "brightfield":
            return bright
        lum = (rgb * self.luminance).sum(1, keepdim=True)
        if fluorescent is None:
            fluorescent = lum.mean((1, 2, 3), keepdim=True) < self.threshold
        return torch.where(fluorescent, lum, bright)


def conv_bn_relu(cin: int, cout: int, kernel: int = 3, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, kernel, stride, kernel // 2, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU(inplace=True))


class ResBlock(nn.Module):
    """pix2pix's residual block: reflection-padded 3×3 conv-BN-ReLU, conv-BN, identity shortcut; with `cbam`, the
    Res-CBAM block: channel and spatial attention on the residual before the sum (Sec. 3.2.1)."""

    def __init__(self, channels: int, cbam: bool):
        super().__init__()
        self.body = nn.Sequential(
            nn.ReflectionPad2d(1), nn.Conv2d(channels, channels, 3, bias=False), nn.BatchNorm2d(channels),
            nn.ReLU(inplace=True),
            nn.ReflectionPad2d(1), nn.Conv2d(channels, channels, 3, bias=False), nn.BatchNorm2d(channels))
        self.attention = CBAM(channels) if cbam else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.attention(self.body(x))


class Generator(nn.Module):
    """Grey image in [-1, 1] -> enhanced grey image in [-1, 1] (tanh) of the same size (reflection-padded inside to
    a multiple of 2^downsamplings)."""

    def __init__(self, channels: int = 64, blocks: int = 9, downsamplings: int = 2, cbam: bool = True,
                 in_channels: int = 1, out_channels: int = 1):
        super().__init__()
        self.factor = 2 ** downsamplings
        layers: list[nn.Module] = [nn.ReflectionPad2d(3), nn.Conv2d(in_channels, channels, 7, bias=False),
                                   nn.BatchNorm2d(channels), nn.ReLU(inplace=True)]
        c = channels
        for _ in range(downsamplings):
            layers.append(conv_bn_relu(c, c * 2, 3, 2))
            c *= 2
        layers += [ResBlock(c, cbam) for _ in range(blocks)]
        for _ in range(downsamplings):
            layers += [nn.ConvTranspose2d(c, c // 2, 3, 2, padding=1, output_padding=1, bias=False),
                       nn.BatchNorm2d(c // 2), nn.ReLU(inplace=True)]
            c //= 2
        layers += [nn.ReflectionPad2d(3), nn.Conv2d(c, out_channels, 7), nn.Tanh()]
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        ph, pw = (-h) % self.factor, (-w) % self.factor
        if ph or pw:  # any size in, same size out
            x = F.pad(x, (0, pw, 0, ph), mode="reflect")
        return self.net(x)[..., :h, :w]


def _resize_tokens(pos: torch.Tensor, grid: tuple[int, int], size: tuple[int, int]) -> torch.Tensor:
    if grid == size:
        return pos
    c = pos.shape[-1]
    pos = pos.view(1, *grid, c).permute(0, 3, 1, 2)
    pos = F.interpolate(pos, size=size, mode="bicubic", align_corners=False)
    return pos.permute(0, 2, 3, 1).reshape(1, size[0] * size[1], c)


class TransformerDiscriminator(nn.Module):
    """Multi-scale transformer discriminator (Sec. 3.2.2, after TransGAN's).

    Stage s (s = 0..3) cuts the image into patches of P·2^s and projects each linearly (a strided convolution) to
    C/8, C/8, C/4, C/2 dimensions, plus a learnable position encoding. From the second stage on, the previous
    stage's tokens are average-pooled 2× on their grid and concatenated (channels) with the new ones, so the widths
    are C/8, C/4, C/2, C. Stages whose grid is above `full_attention_grid` (16×16) attend within `window`×`window`
    grids; the smaller ones over all tokens. A class token joins before the last block; its output is the logit of
    "real". Position encodings are learnt for `image_size` and resized for other sizes."""

    def __init__(self, dim: int = 256, patch: int = 8, window: int = 8, depth: int = 1, heads: int = 4,
                 image_size: int = 256, in_channels: int = 1, full_attention_grid: int = 16):
        super().__init__()
        if dim % 8:
            raise ValueError(f"discriminator dim must be a multiple of 8, got {dim}")
        self.patch = patch
        embed = [dim // 8, dim // 8, dim // 4, dim // 2]
        widths = [dim // 8, dim // 4, dim // 2, dim]
        self.embeds = nn.ModuleList(nn.Conv2d(in_channels, e, patch * 2**s, patch * 2**s) for s, e in enumerate(embed))
        self.grids = [(image_size // (patch * 2**s),) * 2 for s in range(4)]
        self.pos = nn.ParameterList(nn.Parameter(torch.zeros(1, g[0] * g[1], e)) for g, e in zip(self.grids, embed))
        for p in self.pos:
            nn.init.trunc_normal_(p, std=0.02)
        self.stages = nn.ModuleList()
        for s, width in enumerate(widths):
            grid = self.grids[s][0]
            win = window if grid > full_attention_grid else None
            h = max(1, min(heads, width // 16))
            self.stages.append(nn.ModuleList(TransformerBlock(width, h, window=win) for _ in range(depth)))
        self.cls = nn.Parameter(torch.zeros(1, 1, dim))
        nn.init.trunc_normal_(self.cls, std=0.02)
        self.last = TransformerBlock(dim, max(1, min(heads, dim // 16)))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, 1)

    def token_counts(self, size: tuple[int, int]) -> list[int]:
        """Tokens entering each stage for an image of `size` (the last stage's count includes the class token)."""
        counts = [(size[0] // (self.patch * 2**s)) * (size[1] // (self.patch * 2**s)) for s in range(4)]
        counts[-1] += 1
        return counts

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        n = len(y)
        x = None
        for s, (embed, blocks) in enumerate(zip(self.embeds, self.stages)):
            tokens = embed(y)  # N×E×h×w
            h, w = tokens.shape[-2:]
            tokens = tokens.flatten(2).transpose(1, 2) + _resize_tokens(self.pos[s], self.grids[s], (h, w))
            if x is not None:  # the previous scale, pooled onto this grid
                prev = x.transpose(1, 2).reshape(n, -1, h * 2, w * 2)
                prev = F.avg_pool2d(prev, 2).flatten(2).transpose(1, 2)
                tokens = torch.cat([prev, tokens], dim=-1)
            for block in blocks:  # windowed or not as built for `image_size`
                tokens = block(tokens, (h, w))
            x = tokens
        x = torch.cat([self.cls.expand(n, -1, -1), x], dim=1)
        x = self.last(x)
        return self.head(self.norm(x[:, 0]))


class PatchDiscriminator(nn.Module):
    """pix2pix's PatchGAN (3 strided layers, 70×70 receptive field): one logit per overlapping patch."""

    def __init__(self, channels: int = 64, layers: int = 3, in_channels: int = 1):
        super().__init__()
        seq: list[nn.Module] = [nn.Conv2d(in_channels, channels, 4, 2, 1), nn.LeakyReLU(0.2, inplace=True)]
        c = channels
        for i in range(1, layers + 1):
            out = channels * min(2**i, 8)
            seq += [nn.Conv2d(c, out, 4, 2 if i < layers else 1, 1, bias=False), nn.BatchNorm2d(out),
                    nn.LeakyReLU(0.2, inplace=True)]
            c = out
        seq.append(nn.Conv2d(c, 1, 4, 1, 1))
        self.net = nn.Sequential(*seq)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return self.net(y)


class GeNSegNet(nn.Module):
    """grey -> (generator) -> U-Net over 3 classes. `mode` picks the call a training stage needs:

    - "segment" (inference): RGB -> {"logits", "enhanced"} (the segmenter reads the enhanced image, or
      [grey, enhanced] with `segment_grey_too`);
    - "segment_enhanced": x is already an enhanced-space image (N×1×H×W in [-1, 1]: the ideal target) -> {"logits"};
    - "generate": RGB -> {"enhanced", "fake_logits"} (the generator's step);
    - "discriminate": x is a generated image, `real` the ideal one -> {"real_logits", "fake_logits"}.
    """

    def __init__(self, grey: GreyInput, generator: nn.Module | None, discriminator: nn.Module | None,
                 segmenter: nn.Module, segment_grey_too: bool = False):
        super().__init__()
        self.grey = grey
        self.generator = generator
        self.discriminator = discriminator
        self.segmenter = segmenter
        # the segmenter reads [grey, enhanced] (two channels), so it can see past the generator's errors
        self.segment_grey_too = segment_grey_too

    def enhance(self, x: torch.Tensor) -> torch.Tensor:
        return self._grey_and_enhanced(x)[1]

    def _grey_and_enhanced(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        fluorescent = None
        if x.shape[1] == 4:  # RGB + the whole image's modality plane (1 = fluorescence), constant over the image
            x, plane = x[:, :3], x[:, 3:4]
            fluorescent = plane.mean((2, 3), keepdim=True) > 0.5
        g = self.grey(x, fluorescent) * 2 - 1
        return g, self.generator(g) if self.generator is not None else g

    def forward(self, x: torch.Tensor, mode: str = "segment", real: torch.Tensor | None = None) \
            -> dict[str, torch.Tensor]:
        if mode == "segment":
            g, e = self._grey_and_enhanced(x)
            seen = torch.cat([g, e], 1) if self.segment_grey_too else e
            return {"logits": self.segmenter(seen)["logits"], "enhanced": e}
        if mode == "segment_enhanced":
            return {"logits": self.segmenter(x)["logits"]}
        if self.discriminator is None or self.generator is None:
            raise ValueError(f"mode '{mode}' needs the enhancement model (generator: none has none)")
        if mode == "generate":
            e = self.enhance(x)
            return {"enhanced": e, "fake_logits": self.discriminator(e)}
        if mode == "discriminate":
            return {"real_logits": self.discriminator(real), "fake_logits": self.discriminator(x)}
        raise ValueError(f"unknown mode '{mode}'")


@register_model("gensegnet-generator", "GeNSeg-Net's enhancement generator (Res-CBAM or ResNet blocks)")
def gensegnet_generator(**cfg) -> Generator:
    return Generator(**cfg)


@register_model("gensegnet-discriminator", "GeNSeg-Net's multi-scale transformer discriminator (grid attention)")
def gensegnet_discriminator(**cfg) -> TransformerDiscriminator:
    return TransformerDiscriminator(**cfg)
