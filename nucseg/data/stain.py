"""Stain normalisation of brightfield RGB images to a reference image: Reinhard, Macenko, Vahadane.

- Reinhard et al. 2001: match per-channel mean and standard deviation in CIE L*a*b*.
- Macenko et al. 2009: stain vectors from the extreme angles of optical-density pixels projected on their two main
  SVD directions; concentrations by least squares; the 99th-percentile concentration is matched to the reference's.
- Vahadane et al. 2016: stain vectors by sparse non-negative matrix factorisation of optical density
  (V ≈ W H, W ≥ 0 with unit columns, H ≥ 0 with an L1 penalty), here by alternating projected-gradient steps on a
  pixel subsample (the paper uses SPAMS' dictionary learning, which is not on PyPI for this Python); then as Macenko.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

METHODS = ("reinhard", "macenko", "vahadane")


def _od(image: np.ndarray) -> np.ndarray:
    return -np.log((image.reshape(-1, 3).astype(np.float64) + 1.0) / 256.0)


def _tissue(od: np.ndarray, beta: float = 0.15) -> np.ndarray:
    keep = od[np.all(od > beta, axis=1)]
    return keep if len(keep) > 100 else od[np.any(od > beta, axis=1)] if np.any(od > beta) else od


def _order(stains: np.ndarray) -> np.ndarray:
    """Haematoxylin first: it has the larger red-channel optical density."""
    stains = stains / np.linalg.norm(stains, axis=0, keepdims=True)
    return stains if stains[0, 0] >= stains[0, 1] else stains[:, ::-1]


def macenko_stains(image: np.ndarray, alpha: float = 1.0) -> np.ndarray:
    od = _tissue(_od(image))
    _, vecs = np.linalg.eigh(np.cov(od.T))
    plane = vecs[:, 1:3]
    proj = od @ plane
    phi = np.arctan2(proj[:, 1], proj[:, 0])
    lo, hi = np.percentile(phi, (alpha, 100 - alpha))
    v1 = plane @ np.array([np.cos(lo), np.sin(lo)])
    v2 = plane @ np.array([np.cos(hi), np.sin(hi)])
    stains = np.stack([v1, v2], axis=1)
    return _order(np.abs(stains))


def vahadane_stains(image: np.ndarray, lam: float = 0.1, iters: int = 200, n_pixels: int = 20000,
                    seed: int = 0) -> np.ndarray:
    od = _tissue(_od(image))
    rng = np.random.default_rng(seed)
    if len(od) > n_pixels:
        od = od[rng.choice(len(od), n_pixels, replace=False)]
    v = od.T  # 3 × N
    w = macenko_stains(image)  # a good start
    h = np.maximum(np.linalg.lstsq(w, v, rcond=None)[0], 0)
    for _ in range(iters):
        # H step: projected gradient with L1 (soft threshold), step 1/L
        step_h = 1.0 / max(np.linalg.norm(w.T @ w, 2), 1e-6)
        h = np.maximum(h - step_h * (w.T @ (w @ h - v) + lam), 0)
        step_w = 1.0 / max(np.linalg.norm(h @ h.T, 2), 1e-6)
        w = np.maximum(w - step_w * ((w @ h - v) @ h.T), 1e-8)
        w /= np.linalg.norm(w, axis=0, keepdims=True)
    return _order(w)


def concentrations(image: np.ndarray, stains: np.ndarray) -> np.ndarray:
    return np.linalg.lstsq(stains, _od(image).T, rcond=None)[0]  # 2 × N


@dataclass
class StainNormalizer:
    """Fit on a reference image, then `transform` any RGB uint8 image to look stained like it."""

    method: str = "macenko"

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"stain normalisation must be one of {', '.join(METHODS)}, not '{self.method}'")
        self.fitted = False

    def fit(self, reference: np.ndarray) -> StainNormalizer:
        ref = np.ascontiguousarray(reference[..., :3])
        if self.method == "reinhard":
            lab = _to_lab(ref)
            self.mean, self.std = lab.mean((0, 1)), lab.std((0, 1)) + 1e-6
        else:
            self.stains = self._stains(ref)
            self.max_c = np.percentile(concentrations(ref, self.stains), 99, axis=1)
        self.fitted = True
        return self

    def _stains(self, image):
        return macenko_stains(image) if self.method == "macenko" else vahadane_stains(image)

    def transform(self, image: np.ndarray) -> np.ndarray:
        if not self.fitted:
            raise RuntimeError("StainNormalizer.transform before fit")
        if image.ndim != 3 or image.shape[-1] != 3:
            return image  # greyscale / fluorescence: nothing to normalise
        if self.method == "reinhard":
            lab = _to_lab(image)
            lab = (lab - lab.mean((0, 1))) / (lab.std((0, 1)) + 1e-6) * self.std + self.mean
            return _from_lab(lab)
        stains = self._stains(image)
        c = concentrations(image, stains)
        c *= (self.max_c / np.maximum(np.percentile(c, 99, axis=1), 1e-6))[:, None]
        rgb = 256.0 * np.exp(-(self.stains @ c)) - 1.0
        return np.clip(rgb.T.reshape(image.shape), 0, 255).astype(np.uint8)


def _to_lab(image: np.ndarray) -> np.ndarray:
    from skimage.color import rgb2lab

    return rgb2lab(image)


def _from_lab(lab: np.ndarray) -> np.ndarray:
    from skimage.color import lab2rgb

    return (np.clip(lab2rgb(lab), 0, 1) * 255).round().astype(np.uint8)
