"""Joint augmentation of an image and its instance map (labels resampled by nearest neighbour, so they stay integral).

Geometry and photometry come from albumentations; HED stain jitter (which it lacks) is ours.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import cv2
import numpy as np


@dataclass
class AugmentConfig:
    flips: bool = True  # horizontal/vertical flips and 90° rotations
    rotate: float = 0.0  # max free rotation in degrees (0 = off)
    scale: tuple[float, float] = (0.8, 1.25)
    affine_p: float = 0.5
    elastic_p: float = 0.0
    blur_p: float = 0.1
    brightness_contrast_p: float = 0.4
    gamma_p: float = 0.2
    hed_sigma: float = 0.04  # HED stain jitter: multiplicative N(1, σ) and additive N(0, σ) per stain channel
    hed_p: float = 0.5
    # which images get the HED jitter: stained (colour brightfield, by `detect_modality` of the whole image: no
    # fluorescence or greyscale image holds H&E or DAB) | all
    hed_images: str = "stained"


def hed_jitter(image: np.ndarray, rng: np.random.Generator, sigma: float) -> np.ndarray:
    """Perturb haematoxylin / eosin / DAB concentrations (Tellez et al. 2018) of an RGB uint8 image."""
    from skimage.color import hed2rgb, rgb2hed

    hed = rgb2hed(image)
    alpha = rng.normal(1.0, sigma, 3)
    beta = rng.normal(0.0, sigma, 3)
    hed = hed * alpha + beta * np.abs(hed).mean(axis=(0, 1))
    rgb = hed2rgb(hed)
    return np.clip(rgb * 255, 0, 255).astype(np.uint8)


class Augmenter:
    def __init__(self, cfg: AugmentConfig):
        # albumentations asks PyPI for its latest version at import: a warning offline, a stall where DNS hangs
        os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
        import albumentations as A

        if cfg.hed_images not in ("stained", "all"):
            raise ValueError(f"augment.hed_images must be stained or all, not '{cfg.hed_images}'")
        self.cfg = cfg
        geometric = []
        if cfg.flips:
            geometric += [A.HorizontalFlip(p=0.5), A.VerticalFlip(p=0.5), A.RandomRotate90(p=0.5)]
        if cfg.affine_p > 0:
            geometric.append(A.Affine(scale=tuple(cfg.scale), rotate=(-cfg.rotate, cfg.rotate),
                                      interpolation=cv2.INTER_LINEAR, mask_interpolation=cv2.INTER_NEAREST,
                                      border_mode=cv2.BORDER_REFLECT_101, p=cfg.affine_p))
        if cfg.elastic_p > 0:
            geometric.append(A.ElasticTransform(alpha=30, sigma=6, mask_interpolation=cv2.INTER_NEAREST,
                                                border_mode=cv2.BORDER_REFLECT_101, p=cfg.elastic_p))
        photometric = []
        if cfg.blur_p > 0:
            photometric.append(A.GaussianBlur(blur_limit=(3, 5), p=cfg.blur_p))
        if cfg.brightness_contrast_p > 0:
            photometric.append(A.RandomBrightnessContrast(0.15, 0.15, p=cfg.brightness_contrast_p))
        if cfg.gamma_p > 0:
            photometric.append(A.RandomGamma((80, 120), p=cfg.gamma_p))
        self.geometric = A.Compose(geometric)
        self.photometric = A.Compose(photometric)

    def __call__(self, image: np.ndarray, labels: np.ndarray, rng: np.random.Generator,
                 stained: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """Augment a uint8 H×W×C image and its int32 instance map together, reproducibly from `rng`. `stained`:
        False for fluorescence and greyscale images, which get no stain jitter (they hold no H&E or DAB)."""
        self.geometric.set_random_seed(int(rng.integers(2**31)))
        self.photometric.set_random_seed(int(rng.integers(2**31)))
        # float32 keeps ids exact up to 2^24 through OpenCV's nearest-neighbour warps
        out = self.geometric(image=image, mask=labels.astype(np.float32))
        image, labels = out["image"], out["mask"].astype(np.int32)
        if self.cfg.hed_p > 0 and image.shape[-1] == 3 and rng.random() < self.cfg.hed_p and (
                stained or self.cfg.hed_images == "all"):
            image = hed_jitter(image, rng, self.cfg.hed_sigma)
        image = self.photometric(image=image)["image"]
        return np.ascontiguousarray(image), np.ascontiguousarray(labels)
