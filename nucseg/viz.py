"""Overlays: instance contours drawn on the image, coloured by class (or one colour without classes)."""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

CLASS_COLOURS = [(255, 255, 0), (255, 0, 0), (0, 200, 0), (0, 128, 255), (255, 0, 255), (255, 128, 0), (0, 255, 255)]


def class_colour(cls: int) -> tuple[int, int, int]:
    return CLASS_COLOURS[cls % len(CLASS_COLOURS)] if cls else CLASS_COLOURS[0]


def overlay_contours(image: np.ndarray, labels: np.ndarray, classes: dict[int, int] | None = None,
                     thickness: int = 1) -> np.ndarray:
    """RGB uint8 image with each instance's outline drawn in its class colour: the pixels along the inside of the
    pixel-edge outline that GeoJSON carries (a pixel is drawn when an edge it shares with a 4-neighbour of another
    id lies on that outline), `thickness` pixels deep."""
    from nucseg.labels import instances_to_class_map

    img = image if image.ndim == 3 else image[..., None]
    if img.dtype != np.uint8:
        lo, hi = np.percentile(img, (0.1, 99.9))
        img = (np.clip((img.astype(np.float32) - lo) / max(hi - lo, 1), 0, 1) * 255).astype(np.uint8)
    rgb = np.repeat(img, 3, axis=-1) if img.shape[-1] == 1 else img[..., :3].copy()
    cross = ndi.iterate_structure(ndi.generate_binary_structure(2, 1), thickness)
    edge = (labels > 0) & ((ndi.maximum_filter(labels, footprint=cross, mode="nearest") != labels)
                           | (ndi.minimum_filter(labels, footprint=cross, mode="nearest") != labels))
    cls_map = instances_to_class_map(labels, classes) if classes else np.zeros(labels.shape, np.uint8)
    for cls in np.unique(cls_map[edge]):
        rgb[edge & (cls_map == cls)] = class_colour(int(cls))
    return rgb
