"""CFR-SAM's first stage (Sec. 3.3): the prompt learner, which finds every nucleus' centroid and class.

A feature pyramid (FPN top-down path) over a timm CNN; a grid of anchor points, one per `anchor_stride` px, moved by
an offset network; each anchor's features sampled bilinearly from every pyramid level and concatenated; a regression
MLP (two layers, ReLU, dropout) moves the anchor onto a centroid and a classification MLP scores background + the
nucleus classes; an auxiliary head on the finest level predicts the nucleus mask (focal loss).

Training (eqs. 1-2): per image, anchors are matched one-to-one to ground-truth centroids by the Hungarian algorithm on
score = p(class of the nucleus) - α·distance (px); matched anchors learn the nucleus' class and position, the others
background, weighted `weight_negative` (P2PNet's λ1, Song et al. 2021). A nucleus of unknown class (a set without
types) is matched and learned as "some nucleus class": its p is 1 - p(background).

Choices the paper leaves open, made here: the offset network reads the pyramid level at the anchors' stride (a 3×3
conv then a 1×1 to two channels, starting at zero); the regression loss is the squared distance in pixels weighted
`weight_regression` (P2PNet's 2e-4, the value the paper's λ2 follows) on a regression output scaled as P2PNet's
(`regression_scale`: the head's output × 100 is the offset in px, so the localisation gradient reaching the features
is 100× what raw pixels give); the regression head's last layer starts at zero, so anchors start on their grid as
the offset network's do; with `boxes` the regression head also predicts each nucleus' log box size (L1), for Table
11's box prompts.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment

from nucseg.models.encoders import create_encoder


def _conv_bn_relu(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class PromptLearner(nn.Module):
    """images (N×C×H×W, H and W multiples of 32) -> {"points": N×A×2 (x, y px), "logits": N×A×(1+K) (0 =
    background), "fg": N×1×H×W mask logits, "sizes": N×A×2 log box (w, h) when `boxes`}."""

    def __init__(self, encoder: str = "efficientnet_lite0", encoder_weights: str | None = None, in_channels: int = 3,
                 num_classes: int = 1, fpn_channels: int = 128, fpn_levels: int = 3, anchor_stride: int = 8,
                 hidden: int = 256, dropout: float = 0.1, boxes: bool = False, regression_scale: float = 100.0):
        super().__init__()
        self.encoder = create_encoder(encoder, in_channels, encoder_weights)
        reductions = list(self.encoder.feature_info.reduction())
        channels = list(self.encoder.feature_info.channels())
        # the FPN's levels: the `fpn_levels` finest levels from stride 4 on (stride 2 costs much and adds little)
        first = next(i for i, r in enumerate(reductions) if r >= 4)
        self.level_ids = list(range(first, min(first + fpn_levels, len(reductions))))
        self.strides = [reductions[i] for i in self.level_ids]
        if anchor_stride not in self.strides:
            raise ValueError(f"anchor_stride {anchor_stride} is not a pyramid stride of '{encoder}' ({self.strides})")
        self.anchor_stride = anchor_stride
        self.lateral = nn.ModuleList(nn.Conv2d(channels[i], fpn_channels, 1) for i in self.level_ids)
        self.smooth = nn.ModuleList(nn.Conv2d(fpn_channels, fpn_channels, 3, padding=1) for _ in self.level_ids)
        self.offset = nn.Sequential(nn.Conv2d(fpn_channels, fpn_channels, 3, padding=1), nn.ReLU(inplace=True),
                                    nn.Conv2d(fpn_channels, 2, 1))
        nn.init.zeros_(self.offset[-1].weight)
        nn.init.zeros_(self.offset[-1].bias)
        width = fpn_channels * len(self.level_ids)
        self.boxes = boxes
        self.regression = nn.Sequential(nn.Linear(width, hidden), nn.ReLU(inplace=True), nn.Dropout(dropout),
                                        nn.Linear(hidden, 4 if boxes else 2))
        nn.init.zeros_(self.regression[-1].weight)
        nn.init.zeros_(self.regression[-1].bias)
        self.regression_scale = float(regression_scale)
        self.classification = nn.Sequential(nn.Linear(width, hidden), nn.ReLU(inplace=True), nn.Dropout(dropout),
                                            nn.Linear(hidden, num_classes + 1))
        self.foreground = nn.Sequential(_conv_bn_relu(fpn_channels, fpn_channels // 2),
                                        _conv_bn_relu(fpn_channels // 2, fpn_channels // 2),
                                        nn.Conv2d(fpn_channels // 2, 1, 1))

    def pyramid(self, images: torch.Tensor) -> list[torch.Tensor]:
        feats = self.encoder(images)
        lat = [conv(feats[i]) for conv, i in zip(self.lateral, self.level_ids)]
        for k in range(len(lat) - 2, -1, -1):  # top-down
            lat[k] = lat[k] + F.interpolate(lat[k + 1], size=lat[k].shape[-2:], mode="nearest")
        return [conv(x) for conv, x in zip(self.smooth, lat)]

    def anchors(self, h: int, w: int, device) -> torch.Tensor:
        s = self.anchor_stride
        ys, xs = torch.meshgrid(torch.arange(h // s, device=device), torch.arange(w // s, device=device),
                                indexing="ij")
        return torch.stack([xs, ys], -1).view(-1, 2).float() * s + s / 2

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        n, _, h, w = images.shape
        levels = self.pyramid(images)
        at_stride = levels[self.strides.index(self.anchor_stride)]
        anchors = self.anchors(h, w, images.device)
        # the offset network's output at each anchor's cell (anchors sit at cell centres, in row-major order)
        initial = self.offset(at_stride).flatten(2).transpose(1, 2) * self.anchor_stride
        moved = anchors[None] + initial
        grid = torch.stack([moved[..., 0] / w * 2 - 1, moved[..., 1] / h * 2 - 1], -1)[:, :, None]  # N×A×1×2
        sampled = torch.cat([F.grid_sample(lv, grid, mode="bilinear", align_corners=False)[..., 0]
                             for lv in levels], 1).transpose(1, 2)  # N×A×(L·C)
        reg = self.regression(sampled)
        out = {"points": moved + reg[..., :2] * self.regression_scale, "logits": self.classification(sampled),
               "fg": F.interpolate(self.foreground(levels[0]), size=(h, w), mode="bilinear", align_corners=False)}
        if self.boxes:
            out["sizes"] = reg[..., 2:]
        return out


def match_anchors(prob: np.ndarray, points: np.ndarray, gt_points: np.ndarray, gt_classes: np.ndarray,
                  alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """Eq. 1: one anchor per ground-truth centroid, maximising Σ p_j(c_i) - α·‖p_j - g_i‖ (Hungarian algorithm).

    prob: A×(1+K) class probabilities (column 0 background); points A×2 and gt_points M×2 in px; gt_classes M (1..K,
    or 0 for a nucleus of unknown class, scored by 1 - p(background)). Returns (anchor index, centroid index) pairs,
    one per centroid (every centroid, when A ≥ M)."""
    if len(gt_points) == 0:
        return np.zeros(0, np.intp), np.zeros(0, np.intp)
    fg = 1.0 - prob[:, 0]
    p = np.where(gt_classes[None, :] > 0, prob[:, np.maximum(gt_classes, 0)], fg[:, None])
    dist = np.linalg.norm(points[:, None, :] - gt_points[None, :, :], axis=-1)
    anchors, centroids = linear_sum_assignment(-(p - alpha * dist))
    return anchors, centroids


def select_points(points: torch.Tensor, logits: torch.Tensor, height: int, width: int, threshold: float = 0.5,
                  min_distance: float = 3.0, max_points: int = 4096) -> tuple[torch.Tensor, ...]:
    """Sec. 3.3.3: the anchors of one image scored as a nucleus (1 - p(background) > `threshold`; 0.5 keeps those
    whose most likely class is not background, in the common case), inside the image, de-duplicated: of points closer
    than `min_distance` px only the highest-scoring is kept. Returns (points P×2, classes P (1..K), scores P, the
    kept anchors' indices P), by decreasing score."""
    prob = logits.float().softmax(-1)
    score = 1.0 - prob[:, 0]
    cls = prob[:, 1:].argmax(-1) + 1
    keep = (score > threshold) & (points[:, 0] >= 0) & (points[:, 0] < width) & (points[:, 1] >= 0) & \
        (points[:, 1] < height)
    index = keep.nonzero()[:, 0]
    order = score[index].argsort(descending=True)[:max_points]
    index = index[order]
    points, cls, score = points[index], cls[index], score[index]
    if len(points) > 1 and min_distance > 0:
        close = torch.cdist(points, points) < min_distance
        # greedy suppression in score order: a point survives unless a kept, stronger point is close
        kept = torch.zeros(len(points), dtype=torch.bool, device=points.device)
        suppressed = torch.zeros_like(kept)
        for i in range(len(points)):
            if not suppressed[i]:
                kept[i] = True
                suppressed |= close[i]
        points, cls, score, index = points[kept], cls[kept], score[kept], index[kept]
    return points, cls, score, index


def prompt_learner_loss(out: dict[str, torch.Tensor], gt: list[dict[str, np.ndarray]], fg_target: torch.Tensor,
                        alpha: float = 0.1, weight_negative: float = 0.4, weight_regression: float = 2e-4,
                        weight_foreground: float = 1.0, weight_size: float = 0.1,
                        focal_gamma: float = 2.0) -> dict[str, torch.Tensor]:
    """Eq. 2 over a batch. `gt[i]`: {"points": M×2 (x, y), "classes": M (0 = unknown class), "sizes": M×2 log
    box (w, h)}; fg_target N×H×W (0/1)."""
    logits, points = out["logits"].float(), out["points"].float()
    n, a, k1 = logits.shape
    target = torch.zeros(n, a, dtype=torch.long, device=logits.device)
    unknown = torch.zeros(n, a, dtype=torch.bool, device=logits.device)
    reg, size, matched = [], [], 0
    prob = logits.detach().softmax(-1).cpu().numpy()
    pts = points.detach().cpu().numpy()
    for i, g in enumerate(gt):
        ai, ci = match_anchors(prob[i], pts[i], g["points"], g["classes"], alpha)
        if len(ai) == 0:
            continue
        ai_t = torch.as_tensor(ai, device=logits.device)
        cls = torch.as_tensor(g["classes"][ci], device=logits.device)
        target[i, ai_t] = cls.clamp(min=1)
        unknown[i, ai_t] = cls == 0
        gp = torch.as_tensor(g["points"][ci], device=points.device, dtype=points.dtype)
        reg.append(((points[i, ai_t] - gp) ** 2).sum(-1))
        if "sizes" in out:
            gs = torch.as_tensor(g["sizes"][ci], device=points.device, dtype=points.dtype)
            size.append((out["sizes"][i, ai_t].float() - gs).abs().sum(-1))
        matched += len(ai)
    log_prob = logits.log_softmax(-1)
    log_pt = log_prob.gather(-1, target[..., None])[..., 0]
    # a nucleus of unknown class: the log of its summed nucleus-class probability
    log_pt = torch.where(unknown, torch.logsumexp(log_prob[..., 1:], -1), log_pt)
    w = torch.where(target > 0, 1.0, weight_negative)
    losses = {"cls": -(w * log_pt).sum() / w.sum()}
    zero = logits.sum() * 0
    losses["reg"] = weight_regression * torch.cat(reg).mean() if reg else zero
    if "sizes" in out:
        losses["size"] = weight_size * torch.cat(size).mean() if size else zero
    # auxiliary foreground head: binary focal loss
    fg_logit = out["fg"][:, 0].float()
    t = fg_target.float()
    bce = F.binary_cross_entropy_with_logits(fg_logit, t, reduction="none")
    pt = torch.exp(-bce)
    losses["fg"] = weight_foreground * ((1 - pt) ** focal_gamma * bce).mean()
    losses["total"] = sum(losses.values())
    losses["matched"] = torch.tensor(float(matched) / max(n, 1))
    return losses


def prompt_detection(points: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """How well one image's prompts (P×2 x, y px) cover its nuclei (label map): recall, the fraction of nuclei that
    hold a prompt (a nucleus without one is lost whatever the masks do); precision, the fraction of prompts on a
    nucleus; duplicates, the fraction of nuclei holding two or more."""
    ids = np.unique(labels)
    ids = ids[ids > 0]
    h, w = labels.shape
    pts = np.floor(np.asarray(points, np.float64).reshape(-1, 2)).astype(np.int64)
    pts = pts[(pts[:, 0] >= 0) & (pts[:, 0] < w) & (pts[:, 1] >= 0) & (pts[:, 1] < h)]
    hit = labels[pts[:, 1], pts[:, 0]]
    per_nucleus = np.bincount(hit[hit > 0], minlength=int(labels.max()) + 1)[ids] if len(ids) else np.zeros(0)
    return {"prompt_recall": float((per_nucleus >= 1).mean()) if len(ids) else float("nan"),
            "prompt_precision": float((hit > 0).mean()) if len(hit) else float("nan"),
            "prompt_duplicates": float((per_nucleus >= 2).mean()) if len(ids) else float("nan"),
            "prompts_per_nucleus": float(len(hit) / len(ids)) if len(ids) else float("nan")}
