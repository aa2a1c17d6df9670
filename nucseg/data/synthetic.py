"""Synthetic nuclei images with known instance and class maps, for tests of logic (seedable, no files).

Nuclei are random ellipses (varied size, eccentricity, orientation), some touching or overlapping (the later one
wins, as in the polygon readers), on a textured background; `style` picks H&E-like (purple nuclei on pink),
IHC-like (blue haematoxylin and brown DAB-positive nuclei) or fluorescence-like (bright on dark) rendering.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from nucseg.structures import Modality, Sample

STYLES = {"he": Modality.HE, "ihc": Modality.IHC, "fluorescence": Modality.FLUORESCENCE}


def synthetic_sample(size: int | tuple[int, int] = 256, n_nuclei: int = 40, style: str = "he", n_classes: int = 3,
                     radius: tuple[float, float] = (5, 12), touching: float = 0.3, seed: int = 0) -> Sample:
    if style not in STYLES:
        raise ValueError(f"style must be one of {sorted(STYLES)}")
    rng = np.random.default_rng(seed)
    h, w = (size, size) if isinstance(size, int) else size
    labels = np.zeros((h, w), np.int32)
    classes: dict[int, int] = {}
    rows, cols = np.mgrid[0:h, 0:w]
    centres: list[tuple[float, float]] = []
    for k in range(1, n_nuclei + 1):
        a = rng.uniform(*radius)
        b = a * rng.uniform(0.55, 1.0)
        if centres and rng.random() < touching:
            pr, pc = centres[rng.integers(len(centres))]
            ang = rng.uniform(0, 2 * np.pi)
            cr, cc = pr + 1.6 * a * np.sin(ang), pc + 1.6 * a * np.cos(ang)  # overlaps or touches its neighbour
        else:
            cr, cc = rng.uniform(0, h), rng.uniform(0, w)
        theta = rng.uniform(0, np.pi)
        dr, dc = rows - cr, cols - cc
        u = dc * np.cos(theta) + dr * np.sin(theta)
        v = -dc * np.sin(theta) + dr * np.cos(theta)
        inside = (u / a) ** 2 + (v / b) ** 2 <= 1
        if inside.sum() < 8:
            continue
        labels[inside] = k
        classes[k] = int(rng.integers(1, n_classes + 1))
        centres.append((cr, cc))
    present = set(np.unique(labels)) - {0}
    classes = {k: c for k, c in classes.items() if k in present}
    image = _render(labels, classes, style, rng)
    return Sample(image=image, instances=labels, classes=classes,
                  meta={"id": f"synthetic_{style}_{seed}", "source": "synthetic", "modality": STYLES[style].value})


def _render(labels, classes, style, rng) -> np.ndarray:
    h, w = labels.shape
    fg = labels > 0
    edges = fg & (ndi.maximum_filter(labels, 3) != ndi.minimum_filter(labels, 3))
    texture = ndi.gaussian_filter(rng.normal(0, 1, (h, w)), 2)
    if style == "fluorescence":
        level = np.where(fg, 0.7, 0.05) + 0.08 * texture
        level[edges] *= 0.6
        img = np.repeat(level[..., None], 3, axis=-1)
    else:
        bg = np.array([0.93, 0.75, 0.85]) if style == "he" else np.array([0.92, 0.9, 0.88])
        nucleus = {1: np.array([0.35, 0.2, 0.55]), 2: np.array([0.45, 0.3, 0.62]), 3: np.array([0.3, 0.25, 0.5])}
        if style == "ihc":
            nucleus = {1: np.array([0.35, 0.4, 0.65]), 2: np.array([0.5, 0.3, 0.15]), 3: np.array([0.4, 0.42, 0.6])}
        img = np.broadcast_to(bg, (h, w, 3)).copy()
        cls_map = np.zeros((h, w), np.int64)
        for k, c in classes.items():
            cls_map[labels == k] = c
        for c, colour in nucleus.items():
            img[cls_map == c] = colour
        img[edges] *= 0.8
        img += 0.05 * texture[..., None]
    img = ndi.gaussian_filter(img, (0.8, 0.8, 0)) + rng.normal(0, 0.02, img.shape)
    return (np.clip(img, 0, 1) * 255).astype(np.uint8)
