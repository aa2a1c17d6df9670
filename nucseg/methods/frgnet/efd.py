"""Elliptic Fourier descriptors of nucleus contours (Kuhl & Giardina 1982), the CPN's instance representation.

A closed contour is x(t) = a0 + Σ_k a_k cos(2πkt) + b_k sin(2πkt), y(t) = c0 + Σ_k c_k cos(2πkt) + d_k sin(2πkt),
t in [0, 1) along its arc length, truncated at `order` harmonics. Encoding uses `pyefd` (the reference
implementation of the Kuhl-Giardina integrals, numpy); decoding is ours, in numpy for post-processing and torch for
the losses, laid out as one vector per contour: [a0, c0, a_1, b_1, c_1, d_1, ..., a_K, b_K, c_K, d_K].

The descriptors depend on where a contour starts and which way it runs, so targets fix both: OpenCV's outer
contour of the nucleus (boundary-pixel centres, starting at its top-left-most pixel, one orientation for all).
"""

from __future__ import annotations

import numpy as np


def coefficient_count(order: int) -> int:
    return 2 + 4 * order


def nucleus_contour(mask: np.ndarray) -> np.ndarray | None:
    """The outer contour of a binary mask's largest piece as M×2 (x, y) boundary-pixel centres, or None."""
    import cv2

    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    if not contours:
        return None
    c = max(contours, key=len)[:, 0, :].astype(np.float64)
    return c


def encode(contour: np.ndarray, order: int) -> np.ndarray:
    """Descriptor vector of an M×2 (x, y) contour. A contour of one or two points is a point: only a0, c0."""
    import pyefd

    out = np.zeros(coefficient_count(order))
    if len(contour) < 3:
        out[:2] = contour.mean(0)
        return out
    closed = np.vstack([contour, contour[:1]])
    coeffs = pyefd.elliptic_fourier_descriptors(closed, order=order, normalize=False)  # K×4: a, b, c, d
    out[:2] = pyefd.calculate_dc_coefficients(closed)
    out[2:] = coeffs.reshape(-1)
    return out


def _basis(order: int, points: int) -> tuple[np.ndarray, np.ndarray]:
    t = np.arange(points) / points
    k = np.arange(1, order + 1)
    angle = 2 * np.pi * t[:, None] * k[None]
    return np.cos(angle), np.sin(angle)  # points × order


def decode(coefficients: np.ndarray, points: int = 64) -> np.ndarray:
    """...×(2 + 4K) descriptors -> ...×points×2 (x, y) contour points."""
    c = np.asarray(coefficients, np.float64)
    order = (c.shape[-1] - 2) // 4
    cos, sin = _basis(order, points)
    h = c[..., 2:].reshape(*c.shape[:-1], order, 4)
    x = c[..., :1] + np.einsum("...k,pk->...p", h[..., 0], cos) + np.einsum("...k,pk->...p", h[..., 1], sin)
    y = c[..., 1:2] + np.einsum("...k,pk->...p", h[..., 2], cos) + np.einsum("...k,pk->...p", h[..., 3], sin)
    return np.stack([x, y], -1)


def decode_torch(coefficients, points: int = 64):
    """The torch version of `decode` (differentiable): ...×(2 + 4K) -> ...×points×2."""
    import torch

    order = (coefficients.shape[-1] - 2) // 4
    cos, sin = (torch.as_tensor(b, dtype=coefficients.dtype, device=coefficients.device) for b in _basis(order, points))
    h = coefficients[..., 2:].reshape(*coefficients.shape[:-1], order, 4)
    x = coefficients[..., :1] + h[..., 0] @ cos.T + h[..., 1] @ sin.T
    y = coefficients[..., 1:2] + h[..., 2] @ cos.T + h[..., 3] @ sin.T
    return torch.stack([x, y], -1)


def descriptor_maps(labels: np.ndarray, order: int) -> np.ndarray:
    """(2 + 4K)×H×W: at each nucleus pixel its nucleus' descriptors, with the centre (a0, c0) relative to that
    pixel (so the map is translation-invariant and survives crops); zeros on the background."""
    from nucseg.labels import bounding_boxes

    h, w = labels.shape
    out = np.zeros((coefficient_count(order), h, w), np.float32)
    for i, (r0, c0, r1, c1) in bounding_boxes(labels).items():
        crop = labels[r0:r1, c0:c1] == i
        contour = nucleus_contour(np.pad(crop, 1))
        if contour is None:
            continue
        coef = encode(contour - 1 + np.array([c0, r0]), order).astype(np.float32)
        rr, cc = np.nonzero(crop)
        rr, cc = rr + r0, cc + c0
        out[:, rr, cc] = coef[:, None]
        out[0, rr, cc] -= cc
        out[1, rr, cc] -= rr
    return out
