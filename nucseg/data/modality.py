"""Which kind of image this is, from its pixels: what picks the shipped model per image (`--model auto`) and what
keeps stain augmentation off fluorescence. numpy only."""

from __future__ import annotations


def detect_modality(image) -> str:
    """'fluo' for images the fluorescence model knows (greyscale, or a dark background: fluorescence, greyscale
    brightfield), 'he' for colour brightfield (H&E, IHC).

    Greyscale: one channel, or RGB with mean |R - G| + mean |G - B| under 4 grey levels. Dark background: the
    median luminance under 70 (nuclei on black). Simple on purpose; pass --model he|fluo to override."""
    import numpy as np

    img = image if image.ndim == 3 else image[..., None]
    if img.dtype != np.uint8:
        return "fluo"  # 16-bit stacks are fluorescence in practice
    step = max(1, int(np.sqrt(img.shape[0] * img.shape[1] / 250_000)))  # ~250k pixels are plenty for statistics
    sample = img[::step, ::step].astype(np.int16)
    if sample.shape[-1] == 1:
        return "fluo"
    rgb = sample[..., :3]
    if np.abs(rgb[..., 0] - rgb[..., 1]).mean() + np.abs(rgb[..., 1] - rgb[..., 2]).mean() < 4:
        return "fluo"
    return "fluo" if np.median(rgb.mean(axis=-1)) < 70 else "he"
