"""File > Open Sample > nucseg: the bundled sample images (`nucseg.samples`)."""

from __future__ import annotations


def _sample(name: str, title: str) -> list[tuple]:
    from nucseg.samples import sample_image

    image = sample_image(name)
    rgb = image.shape[-1] == 3
    return [(image if rgb else image[..., 0], {"name": title, "rgb": rgb}, "image")]


def sample_he() -> list[tuple]:
    return _sample("he", "nucseg brightfield sample")


def sample_fluo() -> list[tuple]:
    return _sample("fluo", "nucseg fluorescence sample")
