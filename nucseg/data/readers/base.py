"""The reader registry and the helpers every reader shares.

A reader is a function `read(src: Path) -> Iterator[Sample]` registered under a format name. Readers never import
torch; bad input raises `InputError` naming the file and the problem.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from nucseg.io.images import IMAGE_EXTENSIONS, InputError, read_image
from nucseg.structures import Modality, Sample

Reader = Callable[[Path], Iterator[Sample]]
READERS: dict[str, Reader] = {}
DESCRIPTIONS: dict[str, str] = {}


def register_reader(name: str, description: str) -> Callable[[Reader], Reader]:
    def wrap(fn: Reader) -> Reader:
        READERS[name] = fn
        DESCRIPTIONS[name] = description
        return fn

    return wrap


def get_reader(name: str) -> Reader:
    if name not in READERS:
        raise ValueError(f"unknown format '{name}' (known: {', '.join(sorted(READERS))})")
    return READERS[name]


def read_samples(fmt: str, src: str | Path) -> Iterator[Sample]:
    src = Path(src)
    if not src.exists():
        raise InputError(src, "source not found")
    return get_reader(fmt)(src)


def find_subdir(src: Path, names: tuple[str, ...]) -> Path | None:
    for name in names:
        if (src / name).is_dir():
            return src / name
    return None


def find_image(stem: str, folders: list[Path], annotation: Path) -> Path:
    """The image with this stem in any of the folders, or an error naming the annotation that lacks it."""
    for folder in folders:
        for ext in IMAGE_EXTENSIONS + tuple(e.upper() for e in IMAGE_EXTENSIONS):
            candidate = folder / f"{stem}{ext}"
            if candidate.is_file():
                return candidate
    raise InputError(annotation, f"no image named '{stem}.*' found in {', '.join(str(f) for f in folders)}")


def files_with(folder: Path, extensions: tuple[str, ...]) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in extensions)


def check_size(image: np.ndarray, labels: np.ndarray, path: Path) -> None:
    if labels.shape != image.shape[:2]:
        raise InputError(path, f"mask size {labels.shape[1]}×{labels.shape[0]} differs from image size "
                         f"{image.shape[1]}×{image.shape[0]}")


def make_sample(
    image_path: Path,
    labels: np.ndarray,
    annotation: Path,
    source: str,
    classes: dict[int, int] | None = None,
    image: np.ndarray | None = None,
    **meta,
) -> Sample:
    """Read the image (unless given), check sizes and build the Sample with provenance."""
    image = read_image(image_path) if image is None else image
    check_size(image, labels, annotation)
    meta.setdefault("id", image_path.stem)
    meta.setdefault("modality", Modality.HE.value)
    meta.update(source=source, image_path=str(image_path), annotation_path=str(annotation))
    return Sample(image=image, instances=labels, classes=classes, meta=meta)


def require_nonempty(items: list, src: Path, what: str) -> list:
    if not items:
        raise InputError(src, f"no {what} found")
    return items
