"""Trivial segmenters that a quality threshold must rule out: a test whose threshold they pass cannot catch a model
that has stopped working."""

import numpy as np
from scipy import ndimage as ndi
from skimage.filters import threshold_otsu
from skimage.morphology import disk


def threshold_baseline(image: np.ndarray, bright_nuclei: bool | None = None, min_area: int = 30) -> np.ndarray:
    """Otsu on luminance, a 2 px opening, holes filled, connected components: the 'no learning' floor. Nuclei are
    dark on a bright background (H&E) unless `bright_nuclei` (fluorescence); None guesses from the median."""
    grey = image[..., :3].mean(-1) if image.ndim == 3 else image.astype(np.float64)
    t = threshold_otsu(grey)
    if bright_nuclei is None:
        bright_nuclei = np.median(grey) < t
    if bright_nuclei:
        mask = grey > t
    elif image.ndim == 3 and np.abs(np.diff(image[..., :3].astype(np.float64), axis=-1)).mean() > 4:
        from skimage.color import rgb2hed  # stained: the haematoxylin channel separates nuclei from eosin

        haem = rgb2hed(image[..., :3])[..., 0]
        mask = haem > threshold_otsu(haem)
    else:
        mask = grey < t
    mask = ndi.binary_fill_holes(ndi.binary_opening(mask, structure=disk(2)))
    labels, n = ndi.label(mask)
    if n:
        areas = np.bincount(labels.ravel())
        labels[areas[labels] < min_area] = 0
    return labels.astype(np.int32)


def majority_class_accuracy(true_classes: dict[int, int]) -> float:
    """The type accuracy of naming every nucleus the most common class."""
    values = np.array(list(true_classes.values()))
    return float(np.bincount(values).max() / values.size) if values.size else 0.0
