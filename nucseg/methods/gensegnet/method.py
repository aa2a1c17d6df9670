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

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from nucseg.losses import soft_dice_loss
from nucseg.methods.base import Method, Stage, register_method
from nucseg.methods.gensegnet.inference import SEGMENTER_INPUTS, GeNSegConfig, GeNSegInference  # noqa: F401
from nucseg.methods.gensegnet.model import (
    Generator,
    GeNSegNet,
    GreyInput,
    PatchDiscriminator,
    TransformerDiscriminator,
)
from nucseg.methods.unet.model import UNet
from nucseg.targets.ideal import edge_classes, ideal_nucleus_image


@register_method
class GeNSegMethod(GeNSegInference, Method):
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

    # --- inference ---
    def predict_dense(self, model: nn.Module, images: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"prob": model(images)["logits"].float().softmax(1)}
