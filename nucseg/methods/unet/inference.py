"""The U-Net's inference half, torch-free: its config and the marker watershed from its dense maps (3-class
probabilities, distance, optional nucleus types). `UNetMethod` (method.py) trains over it."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from nucseg.labels import instance_means
from nucseg.methods.inference import MethodInference, register_inference
from nucseg.postprocess import WATERSHED_GRID, WatershedOptions, instances_from_maps
from nucseg.structures import Instances


@dataclass
class UNetConfig(WatershedOptions):
    encoder: str = "efficientnet_lite0"
    encoder_weights: str | None = None  # a path, or "efficientnet-lite0-imagenet" (pip package)
    in_channels: int = 3
    decoder_channels: list[int] = field(default_factory=lambda: [128, 64, 48, 32, 16])
    output_stride: int = 1  # 2 skips the full-resolution decoder block (faster; maps upsampled bilinearly)
    boundary_width: int = 2
    num_classes: int = 0  # nucleus types predicted per pixel (0: no type head)
    weight_ce: float = 1.0
    weight_dice: float = 1.0
    weight_distance: float = 2.0
    weight_types: float = 1.0


@register_inference
class UNetInference(MethodInference):
    name = "unet"
    config_class = UNetConfig
    tunable = WATERSHED_GRID

    def postprocess(self, dense: dict[str, np.ndarray]) -> Instances:
        prob = dense["prob"]
        foreground = prob[1] + prob[2]
        labels = instances_from_maps(foreground, prob[1], dense["distance"][0], self.config)
        classes = majority_types(labels, dense["types"]) if "types" in dense else {}
        return Instances(labels, classes, scores=instance_means(labels, foreground))


def majority_types(labels: np.ndarray, type_prob: np.ndarray) -> dict[int, int]:
    """{instance: the nucleus type (1..K) most of its pixels predict}, background left out of the vote."""
    if not labels.any():
        return {}
    vote = type_prob[1:].argmax(0) + 1
    fg = labels > 0
    ids, inverse = np.unique(labels[fg], return_inverse=True)
    counts = np.zeros((ids.size, type_prob.shape[0]), np.int64)
    np.add.at(counts, (inverse, vote[fg]), 1)
    return {int(i): int(c) for i, c in zip(ids, counts.argmax(1))}
