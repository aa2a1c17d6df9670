"""The reader registry and the helpers every reader shares.

A reader is a function `read(src: Path)` registered under a format name. It yields, per source file, a `Deferred`
(the file and a call that builds its Sample or Samples), so that one bad file costs only itself: `read_samples`
runs each call and either raises the file's `InputError` or, given a `skipped` list, records it there and goes on.
A problem with the whole source (no annotation files at all) is raised by the reader itself. Readers never import
torch; bad input raises `InputError` naming the file and the problem, and any other exception while a file is read
is turned into one naming that file. What a reader changes or ignores in a file that is still usable (a polygon of
two vertices, annotations of an unknown image) goes into the Sample's `meta["warnings"]`, counted.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np

from nucseg.io.images import IMAGE_EXTENSIONS, InputError, read_image
from nucseg.structures import Modality, Sample


@dataclass
class Deferred:
    """One source file and the call that reads it: `load()` returns a Sample or an iterable of Samples."""

    path: Path
    load: Callable[[], Sample | Iterable[Sample]]


@dataclass
class Skipped:
    """A source file that could not be converted, and why."""

    path: str
    problem: str


@dataclass
class SourceWarning:
    """Something a reader ignored or changed in a usable source (with a count): never a silent change."""

    path: str
    message: str


def deferred(path: Path, fn: Callable, *args, **kwargs) -> Deferred:
    """`fn(*args, **kwargs)` as the reading of `path`."""
    return Deferred(Path(path), partial(fn, *args, **kwargs))


Reader = Callable[[Path], Iterator[Deferred | Sample | SourceWarning]]
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


def read_samples(fmt: str, src: str | Path, skipped: list[Skipped] | None = None,
                 warnings: list[SourceWarning] | None = None) -> Iterator[Sample]:
    """The Samples of `src` in format `fmt`. A file that cannot be read raises its InputError, or, with a `skipped`
    list, is appended there (file and problem) while every other file is still read. What readers ignore or change
    in usable files (the Samples' `meta["warnings"]` and the source's own) goes to `warnings`, or without that list
    is issued as Python warnings (UserWarning) naming the file."""
    src = Path(src)
    if not src.exists():
        raise InputError(src, "source not found")
    reader = get_reader(fmt)
    return _resolve(reader(src), skipped, warnings)


def _warn(notes: list[SourceWarning] | None, path, message: str) -> None:
    if notes is None:
        import warnings

        warnings.warn(f"{path}: {message}", stacklevel=3)
    else:
        notes.append(SourceWarning(str(path), message))


def _with_warnings(sample: Sample, notes: list[SourceWarning] | None) -> Sample:
    for message in sample.meta.get("warnings") or ():
        _warn(notes, sample.meta.get("annotation_path", sample.id), message)
    return sample


def _resolve(items: Iterable, skipped: list[Skipped] | None,
             notes: list[SourceWarning] | None) -> Iterator[Sample]:
    for item in items:
        if isinstance(item, SourceWarning):
            _warn(notes, item.path, item.message)
            continue
        if isinstance(item, Sample):
            yield _with_warnings(item, notes)
            continue
        try:
            result = item.load()
            if isinstance(result, Sample):
                yield _with_warnings(result, notes)
            else:  # a file of many images (a PanNuke fold) streams them
                for sample in result:
                    yield _with_warnings(sample, notes)
        except InputError as exc:
            if skipped is None:
                raise
            skipped.append(Skipped(exc.path, exc.problem))
        except Exception as exc:  # a reader's unforeseen failure on a damaged file: still that file's problem
            error = InputError(item.path, f"cannot read ({type(exc).__name__}: {exc})")
            if skipped is None:
                raise error from exc
            skipped.append(Skipped(error.path, error.problem))


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
