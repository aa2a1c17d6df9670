"""FrGNet's Fourier guide alone, the training-free method (`nucseg segment --model fourier-guide`): FrGNet's Fig. 1.

The network is the guide itself (`nucseg.targets.fourier`, here in torch so it runs through the engine like any
model): it has no weights. Post-processing turns the soft guide into instances: a Gaussian smoothing (σ = `sigma`
px), a threshold (Otsu's per image when `threshold` is None, else the given value), holes filled, then the shared
marker watershed on the distance transform (seeds where the normalised distance exceeds `marker_threshold`).
The paper shows the result only as a picture; thresholding and the watershed are this reimplementation's choices,
and `nucseg tune` chooses their values on a validation split like any method's.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn

from nucseg.methods.base import Method, register_method
from nucseg.structures import Instances


@dataclass
class FourierGuideConfig:
    radius: float = 1.0  # the low-frequency disc removed from the centred spectrum (the paper's R)
    polarity: str = "abs"  # abs (the paper's magnitude) | dark | bright | auto (see nucseg.targets.fourier)
    in_channels: int = 3
    sigma: float = 1.0
    threshold: float | None = None  # None: Otsu's threshold of each image's smoothed guide
    marker_threshold: float = 0.5
    min_area: int = 30
    min_marker_area: int = 4


class FourierGuideNet(nn.Module):
    """Normalised images (the engine's input) -> {"guide": N×1×H×W soft guide in [0, 1]}, computed per image."""

    def __init__(self, radius: float = 1.0, polarity: str = "abs", in_channels: int = 3):
        super().__init__()
        from nucseg.engine.infer import NORMALIZE_MEAN, NORMALIZE_STD
        from nucseg.targets.fourier import POLARITIES

        if polarity not in POLARITIES:
            raise ValueError(f"polarity must be one of {', '.join(POLARITIES)}, not '{polarity}'")
        self.radius, self.polarity = radius, polarity
        self.register_buffer("mean", torch.tensor(NORMALIZE_MEAN[in_channels]).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(NORMALIZE_STD[in_channels]).view(1, -1, 1, 1), persistent=False)
        weights = [0.299, 0.587, 0.114] if in_channels == 3 else [1.0]
        self.register_buffer("luma", torch.tensor(weights).view(1, -1, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        grey = ((x.float() * self.std + self.mean) * 255 * self.luma).sum(1)  # N×H×W on the 0-255 scale
        h, w = grey.shape[-2:]
        spectrum = torch.fft.fftshift(torch.fft.fft2(grey), dim=(-2, -1))
        yy = torch.arange(h, device=x.device).view(-1, 1) - h // 2
        xx = torch.arange(w, device=x.device).view(1, -1) - w // 2
        spectrum = spectrum.masked_fill(yy**2 + xx**2 <= self.radius**2, 0)
        filtered = torch.fft.ifft2(torch.fft.ifftshift(spectrum, dim=(-2, -1)))
        polarity = self.polarity
        if polarity == "auto":
            dark_background = grey.flatten(1).median(1).values < 70
            guide = torch.where(dark_background.view(-1, 1, 1), filtered.real, -filtered.real).clamp(min=0)
        elif polarity == "abs":
            guide = filtered.abs()
        else:
            guide = (filtered.real if polarity == "bright" else -filtered.real).clamp(min=0)
        lo = guide.flatten(1).min(1).values.view(-1, 1, 1)
        hi = guide.flatten(1).max(1).values.view(-1, 1, 1)
        guide = (guide - lo) / (hi - lo).clamp(min=1e-6)
        return {"guide": guide[:, None]}


def guide_instances(guide: np.ndarray, sigma: float, threshold: float | None, marker_threshold: float,
                    min_area: int, min_marker_area: int) -> np.ndarray:
    """Instances from a soft guide: smooth, threshold (Otsu when None), fill holes, distance-transform watershed."""
    from scipy import ndimage as ndi
    from skimage.filters import threshold_otsu

    from nucseg.postprocess import marker_watershed

    smooth = ndi.gaussian_filter(guide.astype(np.float32), sigma) if sigma > 0 else guide
    if threshold is None:
        threshold = float(threshold_otsu(smooth)) if smooth.max() > smooth.min() else 1.0
    fg = ndi.binary_fill_holes(smooth > threshold)
    dist = ndi.distance_transform_edt(fg)
    comp, n = ndi.label(fg)
    if n:  # distance normalised per connected component, so small and large nuclei both get seeds
        peak = ndi.maximum(dist, comp, np.arange(1, n + 1))
        dist = dist / np.concatenate([[1.0], np.maximum(peak, 1e-6)])[comp]
    return marker_watershed(fg, dist > marker_threshold, -dist, min_area, min_marker_area)


@register_method
class FourierGuideMethod(Method):
    name = "fourier-guide"
    config_class = FourierGuideConfig
    tunable = {
        "threshold": [None, 0.2, 0.25, 0.3, 0.35, 0.4, 0.5],
        "sigma": [0.0, 1.0, 2.0],
        "marker_threshold": [0.3, 0.4, 0.5, 0.6, 0.7],
        "min_area": [10, 20, 30, 50, 80],
    }

    def build_model(self) -> nn.Module:
        c = self.config
        return FourierGuideNet(c.radius, c.polarity, c.in_channels)

    def targets(self, labels: np.ndarray, classes: dict[int, int] | None = None) -> dict[str, np.ndarray]:
        return {}  # nothing to learn

    def loss(self, outputs, batch):
        raise RuntimeError("the Fourier guide has no weights to train")

    def postprocess(self, dense: dict[str, np.ndarray]) -> Instances:
        c = self.config
        guide = dense["guide"][0]
        labels = guide_instances(guide, c.sigma, c.threshold, c.marker_threshold, c.min_area, c.min_marker_area)
        from nucseg.labels import instance_means

        return Instances(labels, scores=instance_means(labels, guide))
