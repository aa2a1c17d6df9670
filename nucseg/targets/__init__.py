"""Generic training targets from an instance map (pure numpy; they run in data-loader workers).

Every function takes an H×W instance map (0 = background, any ids) and works per nucleus on its bounding-box crop.
Method-specific targets live with their methods.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from nucseg.labels import relabel_sequential

BACKGROUND, INTERIOR, BOUNDARY = 0, 1, 2


def foreground(labels: np.ndarray) -> np.ndarray:
    """Binary nucleus mask (uint8)."""
    return (labels > 0).astype(np.uint8)


def instance_boundaries(labels: np.ndarray, width: int = 1) -> np.ndarray:
    """Pixels of a nucleus within `width` pixels of its own edge (inner boundary), including edges between touching
    nuclei. Computed as nucleus pixels whose (2·width+1)² neighbourhood holds another label."""
    if width < 1:
        return np.zeros(labels.shape, bool)
    size = 2 * width + 1
    hi = ndi.maximum_filter(labels, size=size, mode="nearest")
    lo = ndi.minimum_filter(labels, size=size, mode="nearest")
    return (labels > 0) & ((hi != labels) | (lo != labels))


def three_class(labels: np.ndarray, boundary_width: int = 1) -> np.ndarray:
    """Background (0) / interior (1) / boundary (2) map (uint8). `boundary_width` is the inner edge width in pixels
    (GeNSeg uses ~4-px coarse edges; WeaveSeg's trilateral map and our U-Net default use thin ones)."""
    out = np.where(labels > 0, INTERIOR, BACKGROUND).astype(np.uint8)
    out[instance_boundaries(labels, boundary_width)] = BOUNDARY
    return out


def distance_map(labels: np.ndarray) -> np.ndarray:
    """Distance of each nucleus pixel to its nucleus's edge, normalised to [0, 1] per nucleus (float32)."""
    relabelled, _ = relabel_sequential(labels)
    out = np.zeros(labels.shape, np.float32)
    for k, sl in enumerate(ndi.find_objects(relabelled), start=1):
        if sl is None:
            continue
        sl_pad = tuple(slice(max(s.start - 1, 0), s.stop + 1) for s in sl)
        mask = relabelled[sl_pad] == k
        d = ndi.distance_transform_edt(mask)
        m = d.max()
        if m > 0:
            out[sl_pad][mask] = (d[mask] / m).astype(np.float32)
    return out


def hv_maps(labels: np.ndarray) -> np.ndarray:
    """HoVer-Net horizontal / vertical maps: 2×H×W float32, each pixel's offset to its nucleus centroid divided by
    the nucleus's largest offset along that axis, so values lie in [-1, 1]."""
    relabelled, _ = relabel_sequential(labels)
    out = np.zeros((2, *labels.shape), np.float32)
    for k, sl in enumerate(ndi.find_objects(relabelled), start=1):
        if sl is None:
            continue
        mask = relabelled[sl] == k
        rr, cc = np.nonzero(mask)
        dy = rr - rr.mean()
        dx = cc - cc.mean()
        for ch, d in ((0, dx), (1, dy)):
            neg, pos = -d.min(), d.max()
            scaled = np.where(d < 0, d / neg if neg > 0 else 0.0, d / pos if pos > 0 else 0.0)
            view = out[ch][sl]
            view[rr, cc] = scaled
    return out


def centroid_map(labels: np.ndarray, sigma: float = 0.0) -> np.ndarray:
    """Centroid point map: 1 at each nucleus's (rounded) centroid, optionally blurred by a Gaussian of `sigma` and
    rescaled so every peak is 1."""
    relabelled, _ = relabel_sequential(labels)
    out = np.zeros(labels.shape, np.float32)
    idx = np.arange(1, int(relabelled.max()) + 1)
    if idx.size:
        cents = ndi.center_of_mass(np.ones_like(relabelled), relabelled, idx)
        pts = np.round(np.array(cents)).astype(int)
        pts[:, 0] = pts[:, 0].clip(0, labels.shape[0] - 1)
        pts[:, 1] = pts[:, 1].clip(0, labels.shape[1] - 1)
        out[pts[:, 0], pts[:, 1]] = 1.0
    if sigma > 0:
        out = ndi.gaussian_filter(out, sigma) * (2 * np.pi * sigma**2)
        out = np.clip(out, 0, 1)
    return out
