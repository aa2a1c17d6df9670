"""WeaveSeg as a Method: targets, the loss of eq. 12, and post-processing to instances.

Instance representation: the trilateral head (background / interior / boundary) separates touching nuclei and a
per-nucleus distance head gives one peak per nucleus; instances are the shared marker watershed of the baseline
(seeds: distance > marker_threshold and interior probability > interior_threshold, and the predicted uncertainty
below `uncertainty_threshold`, 1 = off; foreground: the mask head). The distance head is our addition to eq. 12
(`weight_distance`, 0 restores the paper's loss exactly; seeds then come from the interior class alone), because a
mask and a thin boundary alone merge nuclei that touch along long edges.

Choices the paper leaves open, set as the U-Net baseline it is compared with has them (so the comparison is of the
modules, not of the targets): a 2 px boundary (`boundary_width`), L_tri as cross-entropy + soft Dice on interior and
boundary (`tri_dice`), the distance term at weight 2. The uncertainty target U* and the certain regions S^f / S^b
share one erosion / dilation (`certain_erode`, `certain_dilate`): S^f is the eroded interior, S^b what lies beyond the
dilation, U* lives between.

Ablations (Tables 1-3): `use_asr`, `icw_iterations` (0 = without ICW), `use_lsgr`, `closed_loop`, `uncertainty`
(how S^u enters ICW), and each loss weight (0 switches a term off). The settings of an earlier version, kept so
its models load: `window: hamming`, `asr_mix: true`, `uncertainty: none`, `refresh_context: false`,
`loop_fusion: false`, `output_stride: 2`, `boundary_width: 1`, `tri_dice: false`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from nucseg.labels import instance_means
from nucseg.losses import soft_dice_loss
from nucseg.methods.base import Method, register_method
from nucseg.methods.weaveseg.model import WeaveSegNet
from nucseg.methods.weaveseg.targets import certain_regions, uncertainty_map
from nucseg.postprocess import WATERSHED_GRID, WatershedOptions, instances_from_maps
from nucseg.structures import Instances
from nucseg.targets import distance_map, three_class


@dataclass
class WeaveSegConfig(WatershedOptions):
    encoder: str = "efficientnet_lite0"
    encoder_weights: str | None = None  # ImageNet-style weights: a path, or "efficientnet-lite0-imagenet"
    in_channels: int = 3
    channels: int = 64
    use_asr: bool = True
    use_lsgr: bool = True
    icw_iterations: int = 3  # the paper's best (Table 2); 0 = without ICW
    closed_loop: bool = True
    lowpass_kernel: int = 3
    highpass_kernel: int = 3
    lsgr_groups: int = 4
    attention_window: int = 5
    dense_layers: int = 3
    dense_growth: int = 16
    context_channels: int = 16
    aglu_per_channel: bool = False
    window: str = "none"  # ASR kernels: none (the paper's "implicit" window) | hamming (modules.py)
    asr_mix: bool = False  # a 3×3 conv-BN-ReLU after eq. 4's sum (not in the paper)
    uncertainty: str = "update"  # how S^u enters ICW: update | attention | none (modules.py)
    refresh_context: bool = True  # S^f, S^b, S^u recomputed from the state before every ICW iteration
    loop_fusion: bool = True  # the closed loop has its own ASR (False: shares the output's)
    output_stride: int = 1  # 1: a full-resolution ASR stage before the heads | 2: stride-2 heads, up-sampled
    full_res_channels: int = 16
    # targets
    boundary_width: int = 2
    certain_erode: int = 2
    certain_dilate: int = 3
    # eq. 12 weights (paper's values) plus our distance term
    weight_mask: float = 1.0
    weight_fg: float = 0.5
    weight_bg: float = 0.5
    weight_tri: float = 0.3
    tri_dice: bool = True  # L_tri = CE + soft Dice (interior, boundary); False: CE alone
    weight_uncertainty: float = 1.0
    weight_distance: float = 2.0
    # post-processing: seeds only where the predicted uncertainty is below this (1.0 = off)
    uncertainty_threshold: float = 1.0


@register_method
class WeaveSegMethod(Method):
    name = "weaveseg"
    config_class = WeaveSegConfig
    tunable = {**WATERSHED_GRID, "uncertainty_threshold": [0.3, 0.5, 0.7, 1.0]}

    def build_model(self) -> nn.Module:
        c = self.config
        return WeaveSegNet(c.encoder, c.encoder_weights, c.in_channels, c.channels, c.use_asr, c.use_lsgr,
                           c.icw_iterations, c.closed_loop, c.lowpass_kernel, c.highpass_kernel, c.lsgr_groups,
                           c.attention_window, c.dense_layers, c.dense_growth, c.context_channels,
                           c.aglu_per_channel, c.window, c.asr_mix, c.uncertainty, c.refresh_context, c.loop_fusion,
                           c.output_stride, c.full_res_channels)

    def targets(self, labels: np.ndarray, classes: dict[int, int] | None = None) -> dict[str, np.ndarray]:
        c = self.config
        fg, bg = certain_regions(labels, c.certain_erode, c.certain_dilate)
        return {
            "mask": (labels > 0).astype(np.float32)[None],
            "trilateral": three_class(labels, c.boundary_width).astype(np.int64),
            "fg": fg[None],
            "bg": bg[None],
            "uncertainty": uncertainty_map(labels, c.certain_erode, c.certain_dilate,
                                          boundary_width=c.boundary_width)[None],
            "distance": distance_map(labels)[None],
        }

    def loss(self, outputs: dict[str, torch.Tensor], batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        c = self.config
        o = {k: v.float() for k, v in outputs.items()}
        terms = {
            "mask": (c.weight_mask, F.binary_cross_entropy_with_logits(o["mask"], batch["mask"])),
            "fg": (c.weight_fg, F.binary_cross_entropy_with_logits(o["fg"], batch["fg"])),
            "bg": (c.weight_bg, F.binary_cross_entropy_with_logits(o["bg"], batch["bg"])),
            "tri": (c.weight_tri, self.trilateral_loss(o["trilateral"], batch["trilateral"])),
            "uncertainty": (c.weight_uncertainty, F.mse_loss(torch.sigmoid(o["uncertainty"]), batch["uncertainty"])),
            "distance": (c.weight_distance, F.mse_loss(torch.sigmoid(o["distance"]), batch["distance"])),
        }
        out = {name: value for name, (_, value) in terms.items()}
        out["total"] = sum(w * v for w, v in terms.values() if w)
        return out

    def trilateral_loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        ce = F.cross_entropy(logits, target)
        if not self.config.tri_dice:
            return ce
        return ce + soft_dice_loss(logits.softmax(1), target, classes=(1, 2))

    def predict_dense(self, model: nn.Module, images: torch.Tensor) -> dict[str, torch.Tensor]:
        out = model(images)
        return {"mask": torch.sigmoid(out["mask"].float()), "tri": out["trilateral"].float().softmax(1),
                "distance": torch.sigmoid(out["distance"].float()),
                "uncertainty": torch.sigmoid(out["uncertainty"].float())}

    def postprocess(self, dense: dict[str, np.ndarray]) -> Instances:
        c = self.config
        distance = dense["distance"][0] if c.weight_distance > 0 else None
        interior = dense["tri"][1]
        if c.uncertainty_threshold < 1.0 and "uncertainty" in dense:
            interior = np.where(dense["uncertainty"][0] < c.uncertainty_threshold, interior, 0.0)  # no seeds there
        labels = instances_from_maps(dense["mask"][0], interior, distance, c)
        return Instances(labels, scores=instance_means(labels, dense["mask"][0]))
