"""Metrics defined exactly as the literature's reference implementations, computed from one pass over the pixels.

This package never imports torch, so `nucseg evaluate` starts fast.
"""

from nucseg.metrics.instance import (
    aji,
    aji_plus,
    detection_by_centroid,
    detection_by_iou,
    dice,
    hausdorff,
    instance_scores,
    match_pairs,
    pair_coordinates,
    pq,
    semantic_scores,
)
from nucseg.metrics.overlap import Overlap, compute_overlap
from nucseg.metrics.typed import TypedAccumulator

__all__ = [
    "Overlap",
    "TypedAccumulator",
    "aji",
    "aji_plus",
    "compute_overlap",
    "detection_by_centroid",
    "detection_by_iou",
    "dice",
    "hausdorff",
    "instance_scores",
    "match_pairs",
    "pair_coordinates",
    "pq",
    "semantic_scores",
]
