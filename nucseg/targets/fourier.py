"""Fourier guide masks (FrGNet, Sec. 3.3 and Fig. 4): where nuclei are, from the image alone, without training.

    grey image -> 2-D FFT -> shift the zero frequency to the centre -> zero a disc of radius R there (R = 1) ->
    inverse FFT -> one side (or the magnitude) -> min-max normalise to [0, 1]                = soft guide
    training target = clip(soft guide + binary annotated mask, 0, 1); hard: (soft guide > threshold) | mask

Removing the lowest frequencies removes the slowly varying stain and illumination, so what is left is large where a
pixel departs from its surroundings: dense, dark hematoxylin nuclei most of all. The disc is symmetric about the zero
frequency, so the inverse transform of a real image is real and signed; the paper normalises it to [0, 1] without
saying how its sign is treated. `polarity="abs"` takes the magnitude, which lights up bright spots (lumina, fat,
glass) as much as dark nuclei of the same contrast; `"dark"` keeps the side darker than the filtered mean, `"bright"`
the brighter side (fluorescence), `"auto"` picks dark or bright from the background. Mean ROC AUC of the soft guide
against the nucleus masks of the first six images of each set (docs/frgnet.md): MoNuSeg abs 0.707, dark 0.876;
CPM-15 abs 0.778, dark 0.867; DSB2018 abs 0.928. The grey image is the luminance for RGB and the single channel
otherwise. Pure numpy; it runs in data-loader workers.
"""

from __future__ import annotations

import numpy as np

POLARITIES = ("abs", "dark", "bright", "auto")


def grey(image: np.ndarray) -> np.ndarray:
    """Luminance (ITU-R 601) of an RGB image, the single channel of a greyscale one, as float32."""
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[-1] >= 3:
        return image[..., :3].astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    return (image[..., 0] if image.ndim == 3 else image).astype(np.float32)


def fourier_guide(image: np.ndarray, radius: float = 1.0, polarity: str = "abs") -> np.ndarray:
    """The soft guide mask of an image: H×W float32 in [0, 1] (all zeros for a flat image)."""
    if polarity not in POLARITIES:
        raise ValueError(f"polarity must be one of {', '.join(POLARITIES)}, not '{polarity}'")
    g = grey(image)
    h, w = g.shape
    if polarity == "auto":  # nuclei are dark on a bright background (brightfield), bright on a dark one
        polarity = "bright" if float(np.median(g)) < 70 else "dark"
    spectrum = np.fft.fftshift(np.fft.fft2(g))
    yy, xx = np.ogrid[:h, :w]
    # the centre of a shifted spectrum is (h // 2, w // 2) for even and odd sizes alike
    spectrum[(yy - h // 2) ** 2 + (xx - w // 2) ** 2 <= radius**2] = 0
    filtered = np.fft.ifft2(np.fft.ifftshift(spectrum))
    if polarity == "abs":
        guide = np.abs(filtered)
    else:
        sign = -1.0 if polarity == "dark" else 1.0
        guide = np.maximum(sign * filtered.real, 0)
    lo, hi = float(guide.min()), float(guide.max())
    if hi - lo < 1e-6:
        return np.zeros((h, w), np.float32)
    return ((guide - lo) / (hi - lo)).astype(np.float32)


def guide_target(image: np.ndarray, labels: np.ndarray, kind: str = "soft", radius: float = 1.0,
                 polarity: str = "abs", hard_threshold: float | None = None) -> np.ndarray:
    """FrGNet's guide-head target: the Fourier guide + the annotated nuclei, clipped to [0, 1] (`kind="soft"`), or
    the binarised Fourier guide + the annotated nuclei (`"hard"`: the guide thresholded at `hard_threshold`, Otsu's
    threshold of the guide itself when None).

    The hard guide binarises the Fourier guide before the annotations are added. Binarising their sum instead
    (Otsu on soft guide + mask) puts the threshold between the guide's values and the mask's 1s and leaves little but
    the annotation: no prior where nuclei are unannotated, which is what the hard guide is for (Table 2)."""
    guide = fourier_guide(image, radius, polarity)
    mask = labels > 0
    if kind == "soft":
        return np.clip(guide + mask, 0, 1).astype(np.float32)
    if kind != "hard":
        raise ValueError(f"guide kind must be soft or hard, not '{kind}'")
    if hard_threshold is None:
        from skimage.filters import threshold_otsu

        hard_threshold = float(threshold_otsu(guide)) if guide.max() > guide.min() else 0.5
    return ((guide > hard_threshold) | mask).astype(np.float32)
