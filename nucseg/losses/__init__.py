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


def focal_loss(log_prob: torch.Tensor, target: torch.Tensor, gamma: float = 2.0,
               weight: torch.Tensor | None = None) -> torch.Tensor:
    """Multi-class focal loss (Lin et al. 2017), -(1 - p_t)^γ log p_t averaged over pixels, from N×C×H×W
    log-probabilities and an N×H×W integer target. A target of -1 means "one of the classes 1..C-1, which is not
    known" (a nucleus mask without instance outlines): p_t is then the summed probability of those classes.
    `weight` (N×H×W, 0 or 1) leaves pixels out."""
    log_pt = log_prob.gather(1, target.clamp(min=0)[:, None])[:, 0]
    log_pt = torch.where(target < 0, torch.logsumexp(log_prob[:, 1:], 1), log_pt)
    loss = -((1 - log_pt.exp()).clamp(min=0) ** gamma) * log_pt
    if weight is None:
        return loss.mean()
    return (loss * weight).sum() / weight.sum().clamp(min=1)
