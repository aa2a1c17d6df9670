"""WeaveSeg's targets: certain foreground / certain background (the decoupling branch) and the uncertainty map U*.

U* (Fig. 4; the supplement with the exact recipe is not available, so this follows the figure's steps):
  (b) the trilateral grey map (interior 1, boundary 0.5, background 0); (c) its Sobel gradient magnitude, normalised;
  (e) erosion of each nucleus marks its certain interior; (f) dilation marks the expanded region;
  (d) a disc around each centroid stays certain even where erosion removes a small nucleus;
  (g) uncertainty = max(gradient, 0.5 inside the band between erosion and dilation), 1 where two nuclei lie within
  the dilation radius of each other (touching / overlapping), 0 in certain interiors, centroid discs and background
  beyond the dilation; (h) a Gaussian (σ = 1) smooths it, clipped to [0, 1].
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from nucseg.labels import relabel_sequential
from nucseg.targets import three_class


def _disk(r: int) -> np.ndarray:
    y, x = np.ogrid[-r : r + 1, -r : r + 1]
    return x * x + y * y <= r * r


def certain_regions(labels: np.ndarray, erode: int = 1, dilate: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """(certain foreground, certain background): nuclei eroded by `erode` px; background beyond `dilate` px."""
    fg = labels > 0
    inner = ndi.binary_erosion(fg, _disk(erode)) if erode > 0 else fg
    # erode each nucleus separately so touching nuclei are kept apart
    inner &= ndi.minimum_filter(labels, footprint=_disk(max(erode, 1))) == ndi.maximum_filter(
        labels, footprint=_disk(max(erode, 1)))
    outer = ndi.binary_dilation(fg, _disk(dilate)) if dilate > 0 else fg
    return inner.astype(np.float32), (~outer).astype(np.float32)


def uncertainty_map(labels: np.ndarray, erode: int = 2, dilate: int = 3, centroid_radius: int = 2,
                    boundary_width: int = 1) -> np.ndarray:
    relabelled, _ = relabel_sequential(labels)
    tri = three_class(relabelled, boundary_width).astype(np.float32)
    grey = np.select([tri == 1, tri == 2], [1.0, 0.5], 0.0).astype(np.float32)
    grad = np.hypot(ndi.sobel(grey, 0), ndi.sobel(grey, 1))
    grad = grad / grad.max() if grad.max() > 0 else grad
    fg = relabelled > 0
    inner, _ = certain_regions(relabelled, erode, 0)
    outer = ndi.binary_dilation(fg, _disk(dilate)) if dilate > 0 else fg
    band = outer & ~inner.astype(bool)
    u = np.maximum(grad, 0.5 * band)
    # touching / overlapping: two different nuclei within the dilation radius
    big = ndi.maximum_filter(relabelled, footprint=_disk(dilate))
    small = ndi.minimum_filter(np.where(fg, relabelled, relabelled.max() + 1), footprint=_disk(dilate))
    contact = outer & (big != small) & (small <= relabelled.max()) & (big > 0)
    u[contact] = 1.0
    n = int(relabelled.max())
    if n:
        cents = np.array(ndi.center_of_mass(fg, relabelled, np.arange(1, n + 1)))
        seeds = np.zeros(labels.shape, bool)
        rc = np.round(cents).astype(int)
        seeds[rc[:, 0].clip(0, labels.shape[0] - 1), rc[:, 1].clip(0, labels.shape[1] - 1)] = True
        core = ndi.binary_dilation(seeds, _disk(centroid_radius)) & fg
        u[core] = 0.0
    u[inner.astype(bool)] = 0.0
    u[~outer] = 0.0
    return np.clip(ndi.gaussian_filter(u, 1.0), 0, 1).astype(np.float32)
