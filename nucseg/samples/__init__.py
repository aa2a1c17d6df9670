"""The bundled sample images (DSB2018 stage-1 training images, CC0; see README.md here): two H&E-like brightfield
tiles and two fluorescence tiles, for the README's examples, `make demo` and napari's File > Open Sample."""

from __future__ import annotations

from pathlib import Path

import numpy as np

FOLDER = Path(__file__).resolve().parent
SAMPLES = {  # name -> file
    "he": "dsb2018_00ae65c1c6631ae6.png",
    "he-2": "dsb2018_0c2550a23b8a0f29.png",
    "fluo": "dsb2018_00071198d059ba7f.png",
    "fluo-2": "dsb2018_0280fa8f60f6bcae.png",
}


def sample_path(name: str = "he") -> Path:
    """The file of a sample image: he, he-2 (brightfield RGB) or fluo, fluo-2 (greyscale fluorescence)."""
    if name not in SAMPLES:
        raise ValueError(f"no sample image '{name}' (samples: {', '.join(SAMPLES)})")
    return FOLDER / SAMPLES[name]


def sample_image(name: str = "he") -> np.ndarray:
    """A sample image as the pipeline reads it: H×W×3 (he) or H×W×1 (fluo) uint8."""
    from nucseg.io.images import read_image

    return read_image(sample_path(name))
