"""The U-Net baseline as a Method: 3-class + distance targets, CE + Dice + MSE loss, marker watershed.

Instance representation: a thin inner boundary class separates touching nuclei in the 3-class map, and a per-nucleus
normalised distance map gives one peak per nucleus; watershed seeds are the confident cores
(distance > `marker_threshold` and interior probability > `interior_threshold`), grown over -distance within the
foreground (interior + boundary probability > `fg_threshold`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from nucseg.labels import instance_means
from nucseg.losses import soft_dice_loss
from nucseg.methods.base import Method, register_method
from nucseg.methods.unet.model import UNet
from nucseg.postprocess import WATERSHED_GRID, WatershedOptions, instances_from_maps
from nucseg.structures import Instances
from nucseg.targets import distance_map, three_class


@dataclass
class UNetConfig(WatershedOptions):
    encoder: str = "efficientnet_lite0"
    encoder_weights: str | None = None  # a path, or "efficientnet-lite0-imagenet" (pip package)
    in_channels: int = 3
    decoder_channels: list[int] = field(default_factory=lambda: [128, 64, 48, 32, 16])
    output_stride: int = 1  # 2 skips the full-resolution decoder block (faster; maps upsampled bilinearly)
    boundary_width: int = 2
    weight_ce: float = 1.0
    weight_dice: float = 1.0
    weight_distance: float = 2.0


@register_method
class UNetMethod(Method):
    name = "unet"
    config_class = UNetConfig
    tunable = WATERSHED_GRID

    def build_model(self) -> nn.Module:
        c = self.config
        return UNet(c.encoder, c.encoder_weights, c.in_channels, tuple(c.decoder_channels),
                    heads={"logits": 3, "distance": 1}, output_stride=c.output_stride)

    def targets(self, labels: np.ndarray, classes: dict[int, int] | None = None) -> dict[str, np.ndarray]:
        return {
            "three_class": three_class(labels, self.config.boundary_width).astype(np.int64),
            "distance": distance_map(labels)[None],
        }

    def loss(self, outputs: dict[str, torch.Tensor], batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        c = self.config
        logits = outputs["logits"].float()
        target = batch["three_class"]
        ce = F.cross_entropy(logits, target)
        dice = soft_dice_loss(logits.softmax(1), target, classes=(1, 2))
        dist = F.mse_loss(torch.sigmoid(outputs["distance"].float()), batch["distance"])
        total = c.weight_ce * ce + c.weight_dice * dice + c.weight_distance * dist
        return {"total": total, "ce": ce, "dice": dice, "distance": dist}

    def predict_dense(self, model: nn.Module, images: torch.Tensor) -> dict[str, torch.Tensor]:
        out = model(images)
        return {"prob": out["logits"].float().softmax(1), "distance": torch.sigmoid(out["distance"].float())}

    def postprocess(self, dense: dict[str, np.ndarray]) -> Instances:
        prob = dense["prob"]
        foreground = prob[1] + prob[2]
        labels = instances_from_maps(foreground, prob[1], dense["distance"][0], self.config)
        return Instances(labels, scores=instance_means(labels, foreground))
