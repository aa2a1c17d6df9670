"""Formats that ship dense label maps: HoVer-Net/CoNSeP .mat/.npy, CPM ASCII maps, PanNuke arrays, generic folders."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from nucseg.data.readers.base import (
    Deferred,
    deferred,
    files_with,
    find_image,
    find_subdir,
    make_sample,
    register_reader,
    require_nonempty,
)
from nucseg.io.images import LABEL_EXTENSIONS, InputError, read_label
from nucseg.labels import class_map_to_instance_classes, instance_ids
from nucseg.structures import Sample

IMAGE_DIRS = ("Images", "images", "imgs", "Tissue Images")
LABEL_DIRS = ("Labels", "labels", "masks", "Masks", "annotations")


def _classes_from_inst_type(labels: np.ndarray, inst_type: np.ndarray, path: Path) -> dict[int, int]:
    """HoVer-Net's inst_type: row k is the class of the k-th instance id in increasing order."""
    ids = instance_ids(labels)
    inst_type = np.asarray(inst_type).reshape(-1)
    if inst_type.size != ids.size:
        raise InputError(path, f"inst_type has {inst_type.size} rows but the instance map has {ids.size} nuclei")
    return {int(i): int(t) for i, t in zip(ids, inst_type)}


def read_hovernet_annotation(path: Path) -> tuple[np.ndarray, dict[int, int] | None]:
    """(instance map, classes) from a .mat (inst_map + type_map or inst_type) or a .npy instance map with an
    optional sibling .mat holding inst_type."""
    from scipy.io import loadmat

    if path.suffix.lower() == ".npy":
        labels = read_label(path)
        sibling = path.with_suffix(".mat")
        if sibling.is_file():
            mat = loadmat(sibling)
            if "inst_type" in mat:
                return labels, _classes_from_inst_type(labels, mat["inst_type"], sibling)
        return labels, None
    try:
        mat = loadmat(path)
    except Exception as exc:
        raise InputError(path, f"cannot read .mat file ({type(exc).__name__}: {exc})") from None
    if "inst_map" not in mat:
        raise InputError(path, "no 'inst_map' in .mat file")
    labels = read_label(path, "inst_map")
    if "type_map" in mat:
        return labels, class_map_to_instance_classes(labels, np.asarray(mat["type_map"]).astype(np.int64))
    if "inst_type" in mat:
        return labels, _classes_from_inst_type(labels, mat["inst_type"], path)
    return labels, None


@register_reader("consep", "HoVer-Net/CoNSeP: Images/ + Labels/ with .mat (inst_map, type_map|inst_type) or .npy")
def read_consep(src: Path) -> Iterator[Deferred]:
    src = Path(src)
    label_dir = find_subdir(src, LABEL_DIRS) or src
    image_dirs = [d for d in (find_subdir(src, IMAGE_DIRS), src) if d is not None]
    anns = files_with(label_dir, (".mat", ".npy"))
    stems = {p.stem for p in anns if p.suffix == ".npy"}
    anns = [p for p in anns if not (p.suffix == ".mat" and p.stem in stems)]  # .mat beside .npy holds inst_type
    for ann in require_nonempty(anns, label_dir, ".mat/.npy annotation files"):
        yield deferred(ann, _consep_sample, ann, image_dirs)


def _consep_sample(ann: Path, image_dirs: list[Path]) -> Sample:
    labels, classes = read_hovernet_annotation(ann)
    return make_sample(find_image(ann.stem, image_dirs, ann), labels, ann, "consep", classes=classes)


def read_cpm_mask(path: Path) -> np.ndarray:
    """CPM-15 ASCII label map: first line 'width height', then one integer per pixel in raster order."""
    try:
        with open(path) as f:
            header = f.readline().split()
            values = np.loadtxt(f, dtype=np.int64, ndmin=1)
    except (OSError, ValueError) as exc:
        raise InputError(path, f"cannot parse ASCII label map ({exc})") from None
    if len(header) != 2 or not all(v.isdigit() for v in header):
        raise InputError(path, f"first line must be 'width height', found {' '.join(header)[:40]!r}")
    w, h = int(header[0]), int(header[1])
    if values.size != w * h:
        raise InputError(path, f"expected {w}×{h} = {w * h} labels, found {values.size}")
    return values.reshape(h, w).astype(np.int32)


@register_reader("cpm", "CPM-15/17: <id>.png + <id>_mask.txt ASCII label maps")
def read_cpm(src: Path) -> Iterator[Deferred]:
    src = Path(src)
    for ann in require_nonempty(sorted(src.glob("*_mask.txt")), src, "'<id>_mask.txt' label maps"):
        stem = ann.name[: -len("_mask.txt")]
        yield deferred(ann, _cpm_sample, ann, stem, src)


def _cpm_sample(ann: Path, stem: str, src: Path) -> Sample:
    return make_sample(find_image(stem, [src, src / "images"], ann), read_cpm_mask(ann), ann, "cpm")


PANNUKE_CLASSES = {1: "neoplastic", 2: "inflammatory", 3: "connective", 4: "dead", 5: "epithelial"}


@register_reader("pannuke", "PanNuke: images.npy (N×256×256×3), masks.npy (N×256×256×6), types.npy")
def read_pannuke(src: Path) -> Iterator[Deferred]:
    src = Path(src)
    found = {name: sorted(src.rglob(name)) for name in ("images.npy", "masks.npy", "types.npy")}
    if not found["images.npy"] or not found["masks.npy"]:
        raise InputError(src, "PanNuke needs images.npy and masks.npy (searched recursively)")
    if len(found["images.npy"]) != len(found["masks.npy"]):
        raise InputError(src, "different numbers of images.npy and masks.npy files")
    for fold, (img_path, mask_path) in enumerate(zip(found["images.npy"], found["masks.npy"]), start=1):
        types_path = next((p for p in found["types.npy"] if p.parent == img_path.parent), None)
        yield deferred(mask_path, _pannuke_fold, fold, img_path, mask_path, types_path)


def _pannuke_fold(fold: int, img_path: Path, mask_path: Path, types_path: Path | None) -> Iterator[Sample]:
    """The samples of one fold, streamed from memory-mapped arrays (checked before the first is built)."""
    images = _load_npy(img_path)
    masks = _load_npy(mask_path)
    tissues = _load_npy(types_path, mmap=False) if types_path else None
    if images.ndim != 4 or masks.ndim != 4 or masks.shape[-1] != 6:
        raise InputError(mask_path, f"expected N×H×W×6 masks, got {masks.shape}")
    if images.shape[:3] != masks.shape[:3]:
        raise InputError(mask_path, f"mask size {masks.shape[1:3]} differs from image size {images.shape[1:3]}")
    return _pannuke_samples(fold, images, masks, tissues, img_path, mask_path)


def _load_npy(path: Path, mmap: bool = True) -> np.ndarray:
    try:
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except Exception as exc:
        raise InputError(path, f"cannot read .npy array ({type(exc).__name__}: {exc})") from None


def _pannuke_samples(fold, images, masks, tissues, img_path, mask_path) -> Iterator[Sample]:
    for n in range(images.shape[0]):
        image = np.asarray(images[n])
        image = np.clip(image, 0, 255).astype(np.uint8) if image.dtype != np.uint8 else image
        labels = np.zeros(image.shape[:2], np.int32)
        classes: dict[int, int] = {}
        next_id = 1
        for ch in range(5):  # the last channel is background
            layer = np.asarray(masks[n, ..., ch]).astype(np.int64)
            for i in instance_ids(layer):
                labels[layer == i] = next_id
                classes[next_id] = ch + 1
                next_id += 1
        meta = {"id": f"fold{fold}_{n:05d}", "fold": fold}
        if tissues is not None:
            meta["tissue"] = str(tissues[n])
        yield make_sample(img_path, labels, mask_path, "pannuke", classes=classes, image=image, **meta)


_MASK_SUFFIXES = ("", "_mask", "_label", "_labels", "_masks", "-mask", "_inst")


@register_reader("folder", "generic images/ + masks/ (or labels/) label images (png/tif/npy), matched by name")
def read_folder(src: Path) -> Iterator[Deferred]:
    src = Path(src)
    image_dir = find_subdir(src, IMAGE_DIRS)
    mask_dir = find_subdir(src, ("masks", "Masks", "labels", "Labels"))
    if image_dir is None or mask_dir is None:
        raise InputError(src, "expected an images/ folder and a masks/ (or labels/) folder")
    masks = require_nonempty(files_with(mask_dir, LABEL_EXTENSIONS), mask_dir, "label images")
    by_stem = {}
    for m in masks:
        stem = m.stem
        for suffix in _MASK_SUFFIXES[1:]:
            if stem.endswith(suffix):
                stem = stem[: -len(suffix)]
                break
        by_stem[stem] = m
    type_dir = find_subdir(src, ("types", "Types"))
    for stem, mask in sorted(by_stem.items()):
        yield deferred(mask, _folder_sample, stem, mask, image_dir, type_dir)


def _folder_sample(stem: str, mask: Path, image_dir: Path, type_dir: Path | None) -> Sample:
    labels = read_label(mask)
    classes = None
    if type_dir is not None and (type_dir / f"{stem}.png").is_file():
        classes = class_map_to_instance_classes(labels, read_label(type_dir / f"{stem}.png"))
    return make_sample(find_image(stem, [image_dir], mask), labels, mask, "folder", classes=classes)
