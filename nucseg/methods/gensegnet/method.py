"""GeNSeg-Net (../shared/papers/gensegnet.txt) as a Method: enhancement GAN, then a 3-class U-Net and watershed.

Training runs in two stages through the engine's one loop (`Method.stages`, lengths from `train.stage_steps`):

1. "enhance": the generator and the discriminator, two optimisers. Each step: the generator's step on
   L1(ideal, G(x)) + λ·GAN (eqs. 2-3, the non-saturating form of eq. 1: BCE of D(G(x)) against "real"), then the
   discriminator's on BCE(D(ideal), real) + BCE(D(G(x)), fake), halved (pix2pix's), with the generated image of the
   same step. No validation: the segmenter is not trained yet.
2. "segment": the U-Net alone (the generator frozen, in eval mode) on α·CE + β·Dice over the 3 classes (eq. 4,
   α = 1, β = 3). Its input is, as in the paper ("the transformed data serves as ground truth for the first stage
   and as input for the second"), the ideal image (`segmenter_input: ideal`), or the frozen generator's output
   (`segmenter_input: enhanced`: the U-Net then learns from the images it will meet at inference), or both the grey
   image and the generator's output as two channels (`segmenter_input: grey+enhanced`, ours: the U-Net can then
   recover what the generator gets wrong).

`generator: none` is Table 5's "segmentation model only": the U-Net on the grey image, one stage.

Where the paper is silent, our choices (each an option): the ideal-nucleus formula (nucseg.targets.ideal);
haematoxylin by colour deconvolution for brightfield grey (GreyInput); the discriminator's width (256), depth (1
block per scale) and heads; the U-Net is ours over a timm encoder (one grey input channel, ImageNet weights summed
over RGB when given), not the 2015 original; the watershed (`postprocess`).

Post-processing (Sec. 3.3, "the watershed algorithm then defines contours within the coarse edge regions"): seeds
are the connected bodies (p_body > body_threshold); they grow over the distance to the nearest body pixel within the
foreground (1 - p_background > fg_threshold), so two bodies split the band between them down its middle; then the
outer `outer_trim` px facing the background are removed, since the band reaches 2 px beyond the outline there.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from scipy import ndimage as ndi

from nucseg.labels import instance_means, remove_small_instances
from nucseg.losses import soft_dice_loss
from nucseg.methods.base import Method, Stage, register_method
from nucseg.methods.gensegnet.model import (
    Generator,
    GeNSegNet,
    GreyInput,
    PatchDiscriminator,
    TransformerDiscriminator,
)
from nucseg.methods.unet.model import UNet
from nucseg.postprocess import marker_watershed
from nucseg.structures import Instances
from nucseg.targets.ideal import BODY, edge_classes, ideal_nucleus_image

SEGMENTER_INPUTS = ("ideal", "enhanced", "grey+enhanced")


@dataclass
class GeNSegConfig:
    # grey input (Sec. 3.4)
    modality: str = "auto"  # auto (per image: dark background = fluorescence) | fluorescence | brightfield
    # auto: an image whose mean luminance (0-1) is below this is fluorescence; decided once per image or slide (the
    # engine's side input, Method.image_planes), never per window or patch
    auto_threshold: float = 0.4
    brightfield_channel: str = "haematoxylin"  # haematoxylin (colour deconvolution) | optical_density
    haematoxylin_scale: float = 2.0  # optical density mapped to 1 (median over nuclei in our H&E sets: 0.25-1.94)
    # ideal-nucleus targets (Sec. 3.1; nucseg.targets.ideal)
    edge_width: int = 4  # the coarse edge class: 2 px inside and 2 px outside every outline
    centre_level: float = 1.0
    rim_level: float = 0.6
    edge_level: float = 0.3
    # enhancement model (Sec. 3.2; Tables 5-6)
    generator: str = "rescbam"  # rescbam (ours) | resnet (plain residual blocks) | none (segmentation only)
    generator_channels: int = 64  # the stem's; doubled by each down-sampling
    generator_blocks: int = 9
    generator_downsamplings: int = 2  # 0: Table 6's "basic" (blocks at full resolution)
    discriminator: str = "transformer"  # transformer (ours) | patchgan (pix2pix's, "basic")
    discriminator_dim: int = 256  # C: the scales' tokens get C/8, C/8, C/4, C/2 dimensions
    discriminator_patch: int = 8  # P
    discriminator_window: int = 8  # grid self-attention window, on grids above 16×16
    discriminator_depth: int = 1  # transformer blocks per scale
    discriminator_heads: int = 4
    discriminator_image_size: int = 256  # position encodings are learnt for this size (the training patch)
    patchgan_channels: int = 64
    gan_weight: float = 0.01  # λ of eq. 3
    # segmentation model (Sec. 3.3)
    # ideal (the paper) | enhanced (the frozen generator's output) | grey+enhanced (two channels: the grey image
    # beside the generator's output, so the U-Net can recover what the generator got wrong)
    segmenter_input: str = "ideal"
    encoder: str = "efficientnet_lite0"
    encoder_weights: str | None = None  # a path, or "efficientnet-lite0-imagenet" (pip package)
    decoder_channels: list[int] = field(default_factory=lambda: [128, 64, 48, 32, 16])
    weight_ce: float = 1.0  # α of eq. 4
    weight_dice: float = 3.0  # β of eq. 4
    # post-processing (tunable)
    fg_threshold: float = 0.5
    body_threshold: float = 0.5
    outer_trim: int = 2
    min_area: int = 12
    min_marker_area: int = 4


@register_method
class GeNSegMethod(Method):
    name = "gensegnet"
    config_class = GeNSegConfig
    tunable = {
        "body_threshold": [0.3, 0.4, 0.5, 0.6, 0.7],
        "fg_threshold": [0.3, 0.4, 0.5, 0.6],
        "outer_trim": [0, 1, 2, 3],
        "min_area": [6, 12, 20, 30, 45, 60, 80],
    }

    def __init__(self, config=None, **overrides):
        super().__init__(config, **overrides)
        c = self.config
        if c.generator not in ("rescbam", "resnet", "none"):
            raise ValueError(f"generator must be rescbam, resnet or none, got '{c.generator}'")
        if c.discriminator not in ("transformer", "patchgan"):
            raise ValueError(f"discriminator must be transformer or patchgan, got '{c.discriminator}'")
        if c.modality not in ("auto", "fluorescence", "brightfield"):
            raise ValueError(f"modality must be auto, fluorescence or brightfield, got '{c.modality}'")
        if c.brightfield_channel not in ("haematoxylin", "optical_density"):
            raise ValueError(f"brightfield_channel must be haematoxylin or optical_density, got '{c.brightfield_channel}'")
        if c.segmenter_input not in SEGMENTER_INPUTS:
            raise ValueError(f"segmenter_input must be one of {', '.join(SEGMENTER_INPUTS)}, got '{c.segmenter_input}'")
        if c.segmenter_input == "grey+enhanced" and not self.enhances:
            raise ValueError("segmenter_input grey+enhanced needs the generator (generator: none has no enhanced image)")

    @property
    def enhances(self) -> bool:
        return self.config.generator != "none"

    def build_model(self) -> nn.Module:
        from nucseg.engine.infer import NORMALIZE_MEAN, NORMALIZE_STD

        c = self.config
        grey = GreyInput(NORMALIZE_MEAN[3], NORMALIZE_STD[3], c.modality, c.brightfield_channel,
                         c.haematoxylin_scale, c.auto_threshold)
        generator = discriminator = None
        if self.enhances:
            generator = Generator(c.generator_channels, c.generator_blocks, c.generator_downsamplings,
                                  cbam=c.generator == "rescbam")
            if c.discriminator == "transformer":
                discriminator = TransformerDiscriminator(c.discriminator_dim, c.discriminator_patch,
                                                         c.discriminator_window, c.discriminator_depth,
                                                         c.discriminator_heads, c.discriminator_image_size)
            else:
                discriminator = PatchDiscriminator(c.patchgan_channels)
        two = c.segmenter_input == "grey+enhanced"
        segmenter = UNet(c.encoder, c.encoder_weights, 2 if two else 1, tuple(c.decoder_channels), heads={"logits": 3})
        return GeNSegNet(grey, generator, discriminator, segmenter, segment_grey_too=two)

    # --- training ---
    def stages(self) -> list[Stage]:
        segment = Stage("segment", ("segmenter",))
        if not self.enhances:
            return [segment]
        return [Stage("enhance", ("generator", "discriminator"), validate=False), segment]

    optimizer_names = ("generator", "discriminator", "segmenter")
    training_only = ("discriminator",)

    def optimizer_groups(self, model: nn.Module) -> dict[str, list[nn.Parameter]]:
        groups = {"segmenter": list(model.segmenter.parameters())}
        if self.enhances:
            groups["generator"] = list(model.generator.parameters())
            groups["discriminator"] = list(model.discriminator.parameters())
        return groups

    def targets(self, labels: np.ndarray, classes: dict[int, int] | None = None) -> dict[str, np.ndarray]:
        c = self.config
        ideal = ideal_nucleus_image(labels, c.edge_width, c.centre_level, c.rim_level, c.edge_level)
        return {"classes": edge_classes(labels, c.edge_width).astype(np.int64), "ideal": (ideal * 2 - 1)[None]}

    def loss(self, outputs: dict[str, torch.Tensor], batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The segmentation loss, eq. 4: α·CE + β·Dice over the three classes."""
        c = self.config
        logits = outputs["logits"].float()
        target = batch["classes"]
        ce = F.cross_entropy(logits, target)
        dice = soft_dice_loss(logits.softmax(1), target, classes=(0, 1, 2))
        return {"total": c.weight_ce * ce + c.weight_dice * dice, "ce": ce, "dice": dice}

    def training_step(self, model, images, batch, stage) -> Iterator[tuple[str, dict[str, torch.Tensor]]]:
        c = self.config
        if stage == "enhance":
            real = batch["ideal"]
            out = model(images, mode="generate")
            fake = out["enhanced"].float()
            l1 = (fake - real).abs().mean()
            fooled = F.binary_cross_entropy_with_logits(out["fake_logits"].float(),
                                                        torch.ones_like(out["fake_logits"], dtype=torch.float32))
            yield "generator", {"total": l1 + c.gan_weight * fooled, "l1": l1, "gan": fooled}
            judged = model(fake.detach(), mode="discriminate", real=real)
            real_logits, fake_logits = judged["real_logits"].float(), judged["fake_logits"].float()
            d_real = F.binary_cross_entropy_with_logits(real_logits, torch.ones_like(real_logits))
            d_fake = F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits))
            yield "discriminator", {"total": 0.5 * (d_real + d_fake), "real": d_real, "fake": d_fake}
        elif stage == "segment":
            if self.enhances and c.segmenter_input == "ideal":
                out = model(batch["ideal"], mode="segment_enhanced")
            else:
                out = model(images, mode="segment")
            yield "segmenter", self.loss(out, batch)
        else:
            raise ValueError(f"unknown stage '{stage}'")

    # --- per-image modality ---
    @property
    def image_plane_count(self) -> int:
        return 1 if self.config.modality == "auto" else 0

    def image_planes(self, image: np.ndarray) -> np.ndarray:
        """[1.0] when the whole image is fluorescence (mean luminance below `auto_threshold`: a dark background),
        else [0.0]; GreyInput then converts all of its windows, tiles and patches alike."""
        rgb = image[..., :3].astype(np.float32) / 255.0
        lum = float((rgb @ np.array([0.299, 0.587, 0.114], np.float32)).mean()) if rgb.shape[-1] == 3 \
            else float(rgb.mean())
        return np.array([1.0 if lum < self.config.auto_threshold else 0.0], np.float32)

    # --- inference ---
    def predict_dense(self, model: nn.Module, images: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"prob": model(images)["logits"].float().softmax(1)}

    def postprocess(self, dense: dict[str, np.ndarray]) -> Instances:
        c = self.config
        prob = dense["prob"]
        foreground = 1.0 - prob[0]
        fg = foreground > c.fg_threshold
        body = prob[BODY] > c.body_threshold
        # the distance to the nearest body: two seeds meet halfway across the band between them
        elevation = ndi.distance_transform_edt(~body) if body.any() else np.zeros(body.shape)
        labels = marker_watershed(fg, body, elevation, min_area=0, min_marker_area=c.min_marker_area)
        if c.outer_trim > 0 and labels.any():
            # the band reaches `outer_trim` px past the outline where a nucleus meets the background
            labels[ndi.distance_transform_edt(labels > 0) <= c.outer_trim] = 0
        labels = remove_small_instances(labels, c.min_area)
        return Instances(labels, scores=instance_means(labels, foreground))
