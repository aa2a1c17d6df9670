"""The U-Net baseline as a Method: 3-class + distance targets, CE + Dice + MSE loss, marker watershed.

Instance representation: a thin inner boundary class separates touching nuclei in the 3-class map, and a per-nucleus
normalised distance map gives one peak per nucleus; watershed seeds are the confident cores
(distance > `marker_threshold` and interior probability > `interior_threshold`), grown over -distance within the
foreground (interior + boundary probability > `fg_threshold`).

Partial labels (`data.keep_fraction` < 1): pixels of unannotated nuclei and a 2 px rim (batch["valid"] = 0)
are left out of every term, so a nucleus nobody outlined is not taught as background.

Weak labels (nucleus masks only): background pixels are supervised as class 0 and mask pixels by the
partial-label cross-entropy -log(p_interior + p_boundary), i.e. "some nucleus class"; Dice and the distance term
use fully labelled patches only.

Nucleus classes (`num_classes` > 0, HoVer-Net's type branch): a head predicts background + K types per pixel, learned
by cross-entropy + Dice on the pixels whose type is known (background everywhere; nuclei of sets with types maps),
weighted `weight_types`; each instance takes the type most of its pixels vote for, as HoVer-Net assigns them.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn

from nucseg.losses import soft_dice_loss
from nucseg.methods.base import Method, register_method
from nucseg.methods.unet.inference import UNetConfig, UNetInference, majority_types  # noqa: F401 (re-exported)
from nucseg.methods.unet.model import UNet
from nucseg.targets import distance_map, three_class


@register_method
class UNetMethod(UNetInference, Method):
    partial_labels = True

    @property
    def num_classes(self) -> int:
        return int(getattr(self.config, "num_classes", 0))

    @property
    def targets_use_classes(self) -> bool:
        return self.num_classes > 0

    def build_model(self) -> nn.Module:
        c = self.config
        heads = {"logits": 3, "distance": 1}
        if self.num_classes:
            heads["types"] = self.num_classes + 1
        return UNet(c.encoder, c.encoder_weights, c.in_channels, tuple(c.decoder_channels), heads=heads,
                    output_stride=c.output_stride)

    def targets(self, labels: np.ndarray, classes: dict[int, int] | None = None) -> dict[str, np.ndarray]:
        out = {
            "three_class": three_class(labels, self.config.boundary_width).astype(np.int64),
            "distance": distance_map(labels)[None],
        }
        if self.num_classes:
            out["types"] = type_targets(labels, classes, self.num_classes)
        return out

    def foreground_targets(self, mask: np.ndarray) -> dict[str, np.ndarray]:
        # -1 marks "a nucleus, class unknown" for the partial-label cross-entropy
        out = {
            "three_class": np.where(mask, -1, 0).astype(np.int64),
            "distance": np.zeros((1, *mask.shape), np.float32),
        }
        if self.num_classes:
            out["types"] = np.where(mask, -1, 0).astype(np.int64)
        return out

    def loss(self, outputs: dict[str, torch.Tensor], batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        c = self.config
        logits = outputs["logits"].float()
        target = batch["three_class"]
        log_prob = logits.log_softmax(1)
        nll = -log_prob.gather(1, target.clamp(min=0)[:, None])[:, 0]
        nll = torch.where(target < 0, -torch.logsumexp(log_prob[:, 1:], 1), nll)  # mask only: any nucleus class
        # partial labels: unannotated nuclei (valid = 0) are neither nucleus nor background to any term
        valid = batch.get("valid")
        ce = nll.mean() if valid is None else (nll * valid).sum() / valid.sum().clamp(min=1)
        labelled = batch.get("labelled", torch.ones(len(target), device=target.device)) > 0
        if labelled.any():
            w = None if valid is None else valid[labelled]
            dice = soft_dice_loss(logits[labelled].softmax(1), target[labelled], classes=(1, 2), weight=w)
        else:
            dice = logits.sum() * 0.0
        dist = self.distance_loss(outputs, batch, labelled)
        total = c.weight_ce * ce + c.weight_dice * dice + c.weight_distance * dist
        losses = {"ce": ce, "dice": dice, "distance": dist}
        if self.num_classes:
            losses["types"] = self.type_loss(outputs["types"].float(), batch["types"], valid)
            total = total + c.weight_types * losses["types"]
        return {"total": total, **losses}

    def type_loss(self, logits: torch.Tensor, target: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
        """Cross-entropy + Dice over the nucleus types, on pixels of known type (target ≥ 0) that are valid."""
        known = (target >= 0).float() if valid is None else (target >= 0).float() * valid
        log_prob = logits.log_softmax(1)
        nll = -log_prob.gather(1, target.clamp(min=0)[:, None])[:, 0]
        ce = (nll * known).sum() / known.sum().clamp(min=1)
        dice = soft_dice_loss(log_prob.exp(), target.clamp(min=0), classes=tuple(range(1, self.num_classes + 1)),
                              weight=known)
        return ce + dice

    @staticmethod
    def distance_loss(outputs: dict[str, torch.Tensor], batch: dict[str, torch.Tensor],
                      labelled: torch.Tensor) -> torch.Tensor:
        """MSE of the sigmoid distance map on fully labelled patches, without unannotated nuclei (batch["valid"])."""
        if not labelled.any():
            return outputs["distance"].sum() * 0.0
        valid = batch.get("valid")
        w = None if valid is None else valid[labelled]
        err = (torch.sigmoid(outputs["distance"][labelled].float()) - batch["distance"][labelled]) ** 2
        return err.mean() if w is None else (err[:, 0] * w).sum() / w.sum().clamp(min=1)

    def predict_dense(self, model: nn.Module, images: torch.Tensor) -> dict[str, torch.Tensor]:
        out = model(images)
        dense = {"prob": out["logits"].float().softmax(1), "distance": torch.sigmoid(out["distance"].float())}
        if "types" in out:
            dense["types"] = out["types"].float().softmax(1)
        return dense


def type_targets(labels: np.ndarray, classes: dict[int, int] | None, num_classes: int) -> np.ndarray:
    """Per-pixel type target: 0 on background, the nucleus' type (1..K), -1 where it is not known."""
    lookup = np.full(int(labels.max()) + 1, -1, np.int64)
    lookup[0] = 0
    for i, c in (classes or {}).items():
        if 0 < i < lookup.size and 0 < c <= num_classes:
            lookup[i] = c
    return lookup[labels]
