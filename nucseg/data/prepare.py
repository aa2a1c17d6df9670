"""Image preparation shared by training and inference, torch-free: an image as read -> the uint8 array of the
model's channels (optionally stain-normalised), and that array -> the network's float input.

Training (`nucseg.data.dataset`) and inference (`nucseg.engine.infer`, and the torch-free runtime) both come here,
so a model sees at inference exactly the pixels it was trained on.
"""

from __future__ import annotations

import numpy as np

# the network's input scaling (`data.input_scale`): ImageNet statistics for RGB (the encoders' pretraining), fixed
# ones for greyscale; or [0, 1]
NORMALIZE_MEAN = {3: (0.485, 0.456, 0.406), 1: (0.5,)}
NORMALIZE_STD = {3: (0.229, 0.224, 0.225), 1: (0.25,)}
INPUT_SCALES = ("imagenet", "unit")


def to_uint8(image: np.ndarray) -> np.ndarray:
    """16-bit images are scaled by their 0.1/99.9 percentiles to uint8 (fluorescence often uses a fraction of the range)."""
    if image.dtype == np.uint8:
        return image
    lo, hi = np.percentile(image, (0.1, 99.9))
    scaled = (image.astype(np.float32) - lo) / max(hi - lo, 1.0)
    return (np.clip(scaled, 0, 1) * 255).astype(np.uint8)


def to_channels(image: np.ndarray, channels: int) -> np.ndarray:
    """Convert an H×W×C image to the model's channel count (greyscale repeated to RGB, RGB to luminance)."""
    c = image.shape[-1]
    if c == channels:
        return image
    if channels == 3 and c == 1:
        return np.repeat(image, 3, axis=-1)
    if channels == 1 and c >= 3:
        lum = image[..., :3].astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
        return lum.round().astype(image.dtype)[..., None]
    raise ValueError(f"cannot convert a {c}-channel image to {channels} channels")


def stain_normalizer(data_cfg):
    """The configured StainNormalizer (`data.stain_norm`) fitted on its reference image (`data.stain_reference`), or
    None."""
    if not data_cfg.stain_norm:
        return None
    from nucseg.data.stain import StainNormalizer
    from nucseg.io.images import read_image

    if not data_cfg.stain_reference:
        raise ValueError("data.stain_norm needs data.stain_reference (an RGB image to normalise to)")
    return StainNormalizer(data_cfg.stain_norm).fit(to_uint8(read_image(data_cfg.stain_reference)))


def normalize_array(images: np.ndarray, scale: str = "imagenet") -> np.ndarray:
    """uint8 N×C×H×W -> float32, as `nucseg.engine.infer.normalize` does in torch (the same numbers)."""
    if scale == "unit":
        return images.astype(np.float32) / 255.0
    if scale != "imagenet":
        raise ValueError(f"input scale must be one of {', '.join(INPUT_SCALES)}, not '{scale}'")
    c = images.shape[1]
    mean = np.asarray(NORMALIZE_MEAN[c], np.float32).reshape(1, c, 1, 1)
    std = np.asarray(NORMALIZE_STD[c], np.float32).reshape(1, c, 1, 1)
    return (images.astype(np.float32) / 255.0 - mean) / std
