"""WeaveSeg as a Method: targets, the loss of eq. 12, and post-processing to instances.

Instance representation: the trilateral head (background / interior / thin boundary) separates touching nuclei and a
per-nucleus distance head gives one peak per nucleus; instances are the shared marker watershed of the baseline
(seeds: distance > marker_threshold and interior probability > interior_threshold; foreground: the mask head). The
distance head is our addition to eq. 12 (`weight_distance`, 0 restores the paper's loss exactly; seeds then come
from the interior class alone), because a mask and a thin boundary alone merge nuclei that touch along long edges.

Ablations (Tables 1-3): `use_asr`, `icw_iterations` (0 = without ICW), `use_lsgr`, `closed_loop`, and each loss
weight (0 switches a term off).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from nucseg.labels import instance_means
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
    # targets
    boundary_width: int = 1
    certain_erode: int = 1
    certain_dilate: int = 2
    # eq. 12 weights (paper's values) plus our distance term
    weight_mask: float = 1.0
    weight_fg: float = 0.5
    weight_bg: float = 0.5
    weight_tri: float = 0.3
    weight_uncertainty: float = 1.0
    weight_distance: float = 1.0


@register_method
class WeaveSegMethod(Method):
    name = "weaveseg"
    config_class = WeaveSegConfig
    tunable = WATERSHED_GRID

    def build_model(self) -> nn.Module:
        c = self.config
        return WeaveSegNet(c.encoder, c.encoder_weights, c.in_channels, c.channels, c.use_asr, c.use_lsgr,
                           c.icw_iterations, c.closed_loop, c.lowpass_kernel, c.highpass_kernel, c.lsgr_groups,
                           c.attention_window, c.dense_layers, c.dense_growth, c.context_channels,
                           c.aglu_per_channel)

    def targets(self, labels: np.ndarray, classes: dict[int, int] | None = None) -> dict[str, np.ndarray]:
        c = self.config
        fg, bg = certain_regions(labels, c.certain_erode, c.certain_dilate)
        return {
            "mask": (labels > 0).astype(np.float32)[None],
            "trilateral": three_class(labels, c.boundary_width).astype(np.int64),
            "fg": fg[None],
            "bg": bg[None],
            "uncertainty": uncertainty_map(labels)[None],
            "distance": distance_map(labels)[None],
        }

    def loss(self, outputs: dict[str, torch.Tensor], batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        c = self.config
        o = {k: v.float() for k, v in outputs.items()}
        terms = {
            "mask": (c.weight_mask, F.binary_cross_entropy_with_logits(o["mask"], batch["mask"])),
            "fg": (c.weight_fg, F.binary_cross_entropy_with_logits(o["fg"], batch["fg"])),
            "bg": (c.weight_bg, F.binary_cross_entropy_with_logits(o["bg"], batch["bg"])),
            "tri": (c.weight_tri, F.cross_entropy(o["trilateral"], batch["trilateral"])),
            "uncertainty": (c.weight_uncertainty, F.mse_loss(torch.sigmoid(o["uncertainty"]), batch["uncertainty"])),
            "distance": (c.weight_distance, F.mse_loss(torch.sigmoid(o["distance"]), batch["distance"])),
        }
        out = {name: value for name, (_, value) in terms.items()}
        out["total"] = sum(w * v for w, v in terms.values() if w)
        return out

    def predict_dense(self, model: nn.Module, images: torch.Tensor) -> dict[str, torch.Tensor]:
        out = model(images)
        return {"mask": torch.sigmoid(out["mask"].float()), "tri": out["trilateral"].float().softmax(1),
                "distance": torch.sigmoid(out["distance"].float()),
                "uncertainty": torch.sigmoid(out["uncertainty"].float())}

    def postprocess(self, dense: dict[str, np.ndarray]) -> Instances:
        distance = dense["distance"][0] if self.config.weight_distance > 0 else None
        labels = instances_from_maps(dense["mask"][0], dense["tri"][1], distance, self.config)
        return Instances(labels, scores=instance_means(labels, dense["mask"][0]))
