"""The canonical layout that `nucseg data convert` writes and ../shared/data uses:

    DST/images/<id>.png|jpg   DST/labels/<id>.png (16-bit; .tif when ids exceed 65535)   DST/types/<id>.png
    DST/dataset.json          {"name", "classes": {id: name}, "modality", "mpp", "provenance"}
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from nucseg.data.readers.base import files_with, find_image, make_sample, register_reader, require_nonempty
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


def list_ids(src: Path) -> list[str]:
    """Ids of a canonical set (the stems of its label files)."""
    label_dir = src / "labels"
    if not label_dir.is_dir():
        raise InputError(src, "not a canonical nucseg set (no labels/ folder)")
    return [p.stem for p in require_nonempty(files_with(label_dir, (".png", ".tif", ".tiff", ".npy")), label_dir,
                                             "label maps")]


def read_canonical_one(src: Path, stem: str, info: dict | None = None) -> Sample:
    info = dataset_info(src) if info is None else info
    label_path = next((src / "labels" / f"{stem}{e}" for e in (".png", ".tif", ".tiff", ".npy")
                       if (src / "labels" / f"{stem}{e}").is_file()), src / "labels" / f"{stem}.png")
    labels = read_label(label_path)
    type_path = src / "types" / f"{stem}.png"
    classes = class_map_to_instance_classes(labels, read_label(type_path)) if type_path.is_file() else None
    modality = info.get("modality") or _MODALITY_BY_NAME.get(src.name.split("-")[0], Modality.HE.value)
    return make_sample(find_image(stem, [src / "images"], label_path), labels, label_path, info.get("name", src.name),
                       classes=classes, modality=modality, mpp=info.get("mpp"))


@register_reader("nucseg", "the canonical layout: images/, labels/ (16-bit instances), types/, dataset.json")
def read_canonical(src: Path) -> Iterator[Sample]:
    src = Path(src)
    info = dataset_info(src)
    for stem in list_ids(src):
        yield read_canonical_one(src, stem, info)
