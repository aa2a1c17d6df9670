"""GeNSeg-Net's inference half, torch-free: its config, the per-image modality (the side input GreyInput reads)
and the watershed from the three class maps. `GeNSegMethod` (method.py) trains over it."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage as ndi

from nucseg.labels import instance_means, remove_small_instances
from nucseg.methods.inference import MethodInference, register_inference
from nucseg.postprocess import marker_watershed
from nucseg.structures import Instances
from nucseg.targets.ideal import BODY

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


@register_inference
class GeNSegInference(MethodInference):
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
