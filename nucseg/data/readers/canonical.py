"""The canonical layout that `nucseg data convert` writes and ../shared/data uses:

    DST/images/<id>.png|jpg   DST/labels/<id>.png (16-bit; .tif when ids exceed 65535)   DST/types/<id>.png
    DST/dataset.json          {"name", "classes": {id: name}, "modality", "mpp", "provenance"}

A weakly labelled set has DST/foreground/<id>.png (0/1 nucleus mask) in place of labels/: read it with
`annotation="foreground"`; the Sample's `instances` then holds that mask, which is not an instance map.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from nucseg.data.readers.base import (
    Deferred,
    deferred,
    files_with,
    find_image,
    make_sample,
    register_reader,
    require_nonempty,
)
from nucseg.io.images import InputError, read_label
from nucseg.labels import class_map_to_instance_classes
from nucseg.structures import Modality, Sample

_MODALITY_BY_NAME = {"dsb2018": Modality.FLUORESCENCE.value, "deepliif": Modality.IHC.value}


def dataset_info(src: Path) -> dict:
    info_path = src / "dataset.json"
    if info_path.is_file():
        try:
            return json.loads(info_path.read_text())
        except json.JSONDecodeError as exc:
            raise InputError(info_path, f"invalid JSON ({exc})") from None
    return {}


ANNOTATIONS = ("labels", "foreground")  # instance maps (full labels) | nucleus masks (weak labels)


def list_ids(src: Path, annotation: str = "labels") -> list[str]:
    """Ids of a canonical set (the stems of its label files, or of its foreground masks)."""
    if annotation not in ANNOTATIONS:
        raise ValueError(f"unknown annotation '{annotation}' (known: {', '.join(ANNOTATIONS)})")
    label_dir = src / annotation
    if not label_dir.is_dir():
        raise InputError(src, f"not a canonical nucseg set (no {annotation}/ folder)")
    return [p.stem for p in require_nonempty(files_with(label_dir, (".png", ".tif", ".tiff", ".npy")), label_dir,
                                             "label maps")]


def read_canonical_one(src: Path, stem: str, info: dict | None = None, annotation: str = "labels") -> Sample:
    info = dataset_info(src) if info is None else info
    folder = src / annotation
    label_path = next((folder / f"{stem}{e}" for e in (".png", ".tif", ".tiff", ".npy")
                       if (folder / f"{stem}{e}").is_file()), folder / f"{stem}.png")
    labels = read_label(label_path)
    if annotation == "foreground":
        labels = (labels > 0).astype(np.int32)
    type_path = src / "types" / f"{stem}.png"
    classes = class_map_to_instance_classes(labels, read_label(type_path)) if type_path.is_file() else None
    modality = info.get("modality") or _MODALITY_BY_NAME.get(src.name.split("-")[0], Modality.HE.value)
    return make_sample(find_image(stem, [src / "images"], label_path), labels, label_path, info.get("name", src.name),
                       classes=classes, modality=modality, mpp=info.get("mpp"))


@register_reader("nucseg", "the canonical layout: images/, labels/ (16-bit instances), types/, dataset.json")
def read_canonical(src: Path) -> Iterator[Deferred]:
    src = Path(src)
    info = dataset_info(src)
    for stem in list_ids(src):
        yield deferred(src / "labels" / stem, read_canonical_one, src, stem, info)
