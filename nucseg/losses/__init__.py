"""Generic loss terms shared by methods."""

from __future__ import annotations

import torch


def soft_dice_loss(prob: torch.Tensor, target: torch.Tensor, classes=(1,), eps: float = 1.0,
                   weight: torch.Tensor | None = None) -> torch.Tensor:
    """1 - mean soft Dice over `classes`, from N×C×H×W probabilities and an N×H×W integer target; `weight` (N×H×W,
    0 or 1) leaves pixels out (unannotated nuclei under partial labels)."""
    losses = []
    for c in classes:
        p = prob[:, c]
        t = (target == c).float()
        if weight is not None:
            p, t = p * weight, t * weight
        inter = (p * t).sum()
        losses.append(1 - (2 * inter + eps) / (p.sum() + t.sum() + eps))
    return torch.stack(losses).mean()
