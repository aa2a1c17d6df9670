"""GeNSeg-Net's "ideal nucleus" targets (Sec. 3.1): coarse edge classes and the image every nucleus is redrawn as.

The paper gives the idea, not the formula: "the staining intensity of each pixel within a nucleus [falls with] its
distance from the centroid, gradually decreasing towards the edge. Shared boundaries among nuclei receive a same
staining intensity, termed pending edges", and its annotators drew edges 4 px wide, 2 px inside the nucleus and 2 px
outside. Our formula, every constant an option of `nucseg.methods.gensegnet.GeNSegConfig`:

- the edge band: pixels less than `edge_width / 2` pixel steps from a change of label (between a nucleus and the
  background, or between two touching nuclei), i.e. 2 px each side of every outline with the default width 4;
- class map: 0 background, 1 body (nucleus minus the band), 2 edge (the band);
- ideal image, in [0, 1]: background 0; every edge pixel one common `edge_level` (so the border between two touching
  nuclei has one level: it is "pending", the watershed decides it); a body pixel p of nucleus i
  `rim_level + (centre_level - rim_level) · (1 - t)`, with t = r / (r + e) ∈ [0, 1], r = |p - centroid_i| and e the
  distance from p to the band. t is 0 at the centroid and 1 where the body meets the band, whatever the nucleus'
  size or shape, so every nucleus gets the same bright centre, solid fill and sharp rim.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

BACKGROUND, BODY, EDGE = 0, 1, 2


def label_changes(labels: np.ndarray) -> np.ndarray:
    """Pixels with a 4-neighbour of another label (both sides of every outline, background included)."""
    change = np.zeros(labels.shape, bool)
    dy = labels[1:] != labels[:-1]
    dx = labels[:, 1:] != labels[:, :-1]
    change[1:] |= dy
    change[:-1] |= dy
    change[:, 1:] |= dx
    change[:, :-1] |= dx
    return change


def edge_classes(labels: np.ndarray, edge_width: int = 4) -> np.ndarray:
    """uint8 map: 0 background, 1 nucleus body, 2 coarse edge `edge_width` px wide centred on every outline."""
    if edge_width < 2 or edge_width % 2:
        raise ValueError(f"edge_width must be an even number ≥ 2 (half inside, half outside), got {edge_width}")
    change = label_changes(labels)
    # distance in pixel steps to the nearest pixel on either side of an outline; rings 0 .. half-1 form the band
    steps = ndi.distance_transform_cdt(~change, metric="taxicab") if change.any() else np.full(labels.shape, 10**6)
    band = steps < edge_width // 2
    out = np.where(labels > 0, BODY, BACKGROUND).astype(np.uint8)
    out[band] = EDGE
    return out


def ideal_nucleus_image(labels: np.ndarray, edge_width: int = 4, centre_level: float = 1.0, rim_level: float = 0.6,
                        edge_level: float = 0.3) -> np.ndarray:
    """float32 image in [0, 1]: each nucleus redrawn as an "ideal" one (module docstring for the formula)."""
    classes = edge_classes(labels, edge_width)
    image = np.zeros(labels.shape, np.float32)
    image[classes == EDGE] = edge_level
    body = classes == BODY
    if not body.any():
        return image
    ids = labels[body]
    ys, xs = np.nonzero(body)
    # centroid of each nucleus (all its pixels, band included: the centre of the outlined shape)
    n = int(labels.max()) + 1
    all_y, all_x = np.nonzero(labels)
    lab = labels[all_y, all_x]
    count = np.bincount(lab, minlength=n).astype(np.float64)
    cy = np.bincount(lab, all_y, minlength=n) / np.maximum(count, 1)
    cx = np.bincount(lab, all_x, minlength=n) / np.maximum(count, 1)
    r = np.hypot(ys - cy[ids], xs - cx[ids])
    e = ndi.distance_transform_edt(body)[ys, xs]  # to the nearest non-body pixel: the band
    t = r / np.maximum(r + e, 1e-6)
    image[ys, xs] = rim_level + (centre_level - rim_level) * (1.0 - t)
    return image
