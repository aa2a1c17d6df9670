"""Marker-controlled watershed: the shared way to split touching nuclei from dense outputs."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi
from skimage.segmentation import watershed

from nucseg.labels import remove_small_instances


def marker_watershed(
    foreground: np.ndarray,
    markers: np.ndarray,
    elevation: np.ndarray,
    min_area: int = 10,
    min_marker_area: int = 3,
) -> np.ndarray:
    """Instances from a binary foreground, binary marker seeds and an elevation map (low inside nuclei).

    Markers are the connected components of `markers & foreground` (smaller than `min_marker_area` are dropped);
    each grows over `elevation` within the foreground. Foreground components that received no marker become
    instances of their own, so no nucleus is lost for want of a seed. Instances under `min_area` pixels are removed.
    """
    fg = foreground.astype(bool)
    seeds, n = ndi.label(markers.astype(bool) & fg)
    if n and min_marker_area > 1:
        seeds = remove_small_instances(seeds, min_marker_area)
    labels = watershed(elevation, seeds, mask=fg) if seeds.any() else np.zeros(fg.shape, np.int32)
    orphans, n_orphans = ndi.label(fg & (labels == 0))
    if n_orphans:
        labels = np.where(orphans > 0, orphans + labels.max(), labels)
    labels = remove_small_instances(labels.astype(np.int32), min_area)
    return labels.astype(np.int32)


@dataclass
class WatershedOptions:
    """Post-processing options shared by methods that predict foreground, interior and distance maps."""

    fg_threshold: float = 0.5
    interior_threshold: float = 0.5
    marker_threshold: float = 0.45
    min_area: int = 12
    min_marker_area: int = 4


# the candidates `nucseg tune` tries for these options
WATERSHED_GRID: dict[str, list] = {
    "marker_threshold": [0.3, 0.35, 0.4, 0.45, 0.5, 0.55, 0.6, 0.65],
    "interior_threshold": [0.3, 0.4, 0.5, 0.6, 0.7],
    "fg_threshold": [0.35, 0.4, 0.45, 0.5, 0.55, 0.6],
    "min_area": [6, 12, 20, 30, 45, 60, 80, 110, 150],  # px at the model's resolution (at 0.25 µm/px: 0.4-9 µm²)
}


def instances_from_maps(foreground: np.ndarray, interior: np.ndarray, distance: np.ndarray | None,
                        opts: WatershedOptions) -> np.ndarray:
    """Instances from foreground / interior probabilities and (optionally) a per-nucleus distance map.

    Seeds are confident cores (distance > marker_threshold and interior > interior_threshold; interior alone without
    a distance map), grown over -distance (or -interior) within foreground > fg_threshold."""
    fg, markers, elevation = watershed_inputs(foreground, interior, distance, opts)
    return marker_watershed(fg, markers, elevation, opts.min_area, opts.min_marker_area)


def watershed_inputs(foreground: np.ndarray, interior: np.ndarray, distance: np.ndarray | None,
                     opts: WatershedOptions) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`instances_from_maps`' thresholds: (foreground mask, marker mask, elevation) for `marker_watershed`."""
    fg = foreground > opts.fg_threshold
    core = interior > opts.interior_threshold
    markers = core & (distance > opts.marker_threshold) if distance is not None else core
    elevation = -distance if distance is not None else -interior
    return fg, markers, elevation
