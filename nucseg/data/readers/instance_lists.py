"""Formats that list nuclei one by one: DSB2018 (mask per nucleus, or run-length CSV), ImageJ ROI sets (CryoNuSeg),
DeepLIIF RGB-coded masks, COCO instance JSON and QuPath GeoJSON.

Polygon conventions: nucseg puts pixel (r, c)'s centre at x = c, y = r. ImageJ, COCO and QuPath put pixel corners at
integers (the centre of pixel (0, 0) is (0.5, 0.5)), so their vertices are shifted by -0.5 when read and +0.5 when
written.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from nucseg.data.readers.base import files_with, find_image, make_sample, register_reader, require_nonempty
from nucseg.io.images import IMAGE_EXTENSIONS, InputError, read_image
from nucseg.labels import polygons_to_instances
from nucseg.structures import Modality, Sample


def rle_decode(rle: str, shape: tuple[int, int]) -> np.ndarray:
    """Kaggle DSB2018 run-length encoding: 'start length ...' pairs, 1-based, column-major (top to bottom, then left
    to right)."""
    h, w = shape
    values = np.array(rle.split(), dtype=np.int64)
    if values.size % 2:
        raise ValueError("odd number of values in run-length encoding")
    flat = np.zeros(h * w, bool)
    for start, length in zip(values[0::2] - 1, values[1::2]):
        if start < 0 or start + length > h * w:
            raise ValueError(f"run {start + 1}+{length} outside a {h}×{w} image")
        flat[start : start + length] = True
    return flat.reshape(w, h).T


def rle_encode(mask: np.ndarray) -> str:
    flat = np.concatenate([[0], mask.T.ravel().astype(np.int8), [0]])
    runs = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    runs[1::2] -= runs[0::2]
    return " ".join(map(str, runs))


def _dsb_image(folder: Path, stem: str, ann: Path) -> np.ndarray:
    image = read_image(find_image(stem, [folder / stem / "images", folder / "images", folder], ann))
    if image.shape[-1] == 3 and np.all(image[..., 0] == image[..., 1]) and np.all(image[..., 0] == image[..., 2]):
        image = image[..., :1]  # the source stores greyscale as RGBA with equal channels
    return image


def _dsb_modality(image: np.ndarray) -> str:
    # DSB2018 mixes fluorescence (dark background) with brightfield / H&E-like images (light background)
    return Modality.FLUORESCENCE.value if np.median(image) < 100 else Modality.BRIGHTFIELD.value


@register_reader("dsb2018", "DSB2018: <id>/images/<id>.png + <id>/masks/*.png, or a run-length CSV beside them")
def read_dsb2018(src: Path) -> Iterator[Sample]:
    src = Path(src)
    csvs = sorted(src.glob("*.csv")) if src.is_dir() else [src] if src.suffix == ".csv" else []
    if csvs:
        yield from _read_dsb_csv(csvs[0], src if src.is_dir() else src.parent)
        return
    folders = require_nonempty(sorted(p for p in src.iterdir() if (p / "masks").is_dir()), src,
                               "'<id>/masks/' folders")
    for folder in folders:
        stem = folder.name
        image = _dsb_image(src, stem, folder)
        masks = require_nonempty(files_with(folder / "masks", IMAGE_EXTENSIONS), folder / "masks", "mask images")
        labels = np.zeros(image.shape[:2], np.int32)
        for k, mask_path in enumerate(masks, start=1):
            mask = read_image(mask_path)[..., 0] > 0
            if mask.shape != labels.shape:
                raise InputError(mask_path, f"mask size {mask.shape[1]}×{mask.shape[0]} differs from image size "
                                 f"{labels.shape[1]}×{labels.shape[0]}")
            labels[mask] = k
        yield make_sample(folder / "images" / f"{stem}.png", labels, folder / "masks", "dsb2018", image=image,
                          modality=_dsb_modality(image))


def _read_dsb_csv(path: Path, folder: Path) -> Iterator[Sample]:
    rows: dict[str, list[dict]] = {}
    try:
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            if not reader.fieldnames or "ImageId" not in reader.fieldnames or "EncodedPixels" not in reader.fieldnames:
                raise InputError(path, "CSV needs ImageId and EncodedPixels columns")
            for row in reader:
                rows.setdefault(row["ImageId"], []).append(row)
    except (OSError, csv.Error) as exc:
        raise InputError(path, f"cannot read CSV ({exc})") from None
    require_nonempty(list(rows), path, "rows")
    for stem, entries in rows.items():
        image = _dsb_image(folder, stem, path)
        h, w = image.shape[:2]
        if "Height" in entries[0] and entries[0].get("Height"):
            ch, cw = int(entries[0]["Height"]), int(entries[0]["Width"])
            if (ch, cw) != (h, w):
                raise InputError(path, f"{stem}: mask size {cw}×{ch} differs from image size {w}×{h}")
        labels = np.zeros((h, w), np.int32)
        for k, row in enumerate(entries, start=1):
            try:
                labels[rle_decode(row["EncodedPixels"], (h, w))] = k
            except ValueError as exc:
                raise InputError(path, f"{stem}: {exc}") from None
        yield make_sample(folder / stem, labels, path, "dsb2018", image=image, id=stem, modality=_dsb_modality(image))


@register_reader("imagej", "ImageJ ROI sets (CryoNuSeg): <image>.tif + RoiSet.zip per folder")
def read_imagej(src: Path) -> Iterator[Sample]:
    import roifile

    src = Path(src)
    zips = require_nonempty(sorted(src.rglob("*.zip")) if src.is_dir() else [src], src, "ImageJ ROI .zip sets")
    for zip_path in zips:
        images = [p for p in files_with(zip_path.parent, IMAGE_EXTENSIONS)]
        if not images:
            raise InputError(zip_path, f"no image beside the ROI set in {zip_path.parent}")
        image = read_image(images[0])
        try:
            rois = roifile.roiread(zip_path)
        except Exception as exc:
            raise InputError(zip_path, f"cannot read ImageJ ROI set ({type(exc).__name__}: {exc})") from None
        rois = rois if isinstance(rois, list) else [rois]
        polygons = [np.asarray(r.coordinates(), dtype=np.float64) - 0.5 for r in rois]
        polygons = [p for p in polygons if p.ndim == 2 and len(p) >= 3]
        if not polygons:
            raise InputError(zip_path, "ROI set holds no polygons")
        labels = polygons_to_instances(polygons, image.shape[:2])
        yield make_sample(images[0], labels, zip_path, "imagej", image=image)


@register_reader("deepliif", "DeepLIIF: 6-panel PNGs [IHC|H|DAPI|Lap2|Ki67|seg]; red=Ki67+, blue=Ki67- nuclei")
def read_deepliif(src: Path) -> Iterator[Sample]:
    from scipy import ndimage as ndi

    src = Path(src)
    files = [src] if src.is_file() else require_nonempty(files_with(src, (".png",)), src, "DeepLIIF .png panels")
    for path in files:
        full = read_image(path)
        h, w = full.shape[:2]
        if w % h or w // h < 2:
            raise InputError(path, f"expected side-by-side square panels (width a multiple of height), got {w}×{h}")
        n = w // h
        image, seg = full[:, :h], full[:, (n - 1) * h :].astype(np.int16)
        r, g, b = seg[..., 0], seg[..., 1], seg[..., 2]
        positive = (r > 127) & (g < 128) & (b < 128)
        negative = (b > 127) & (r < 128) & (g < 128)
        labels = np.zeros((h, h), np.int32)
        classes: dict[int, int] = {}
        next_id = 1
        for cls, mask in ((1, negative), (2, positive)):
            comp, k = ndi.label(mask)
            labels[comp > 0] = comp[comp > 0] + next_id - 1
            classes.update({i: cls for i in range(next_id, next_id + k)})
            next_id += k
        yield make_sample(path, labels, path, "deepliif", classes=classes, image=image, modality=Modality.IHC.value,
                          class_names={1: "ki67_negative", 2: "ki67_positive"})


def coco_rle_decode(seg: dict) -> np.ndarray:
    """COCO RLE (uncompressed counts list, or the compressed string) -> H×W bool, column-major."""
    h, w = seg["size"]
    counts = seg["counts"]
    if isinstance(counts, str):
        counts = _coco_counts_from_string(counts)
    flat = np.zeros(h * w, bool)
    pos, val = 0, False
    for c in counts:
        if val:
            flat[pos : pos + c] = True
        pos += c
        val = not val
    return flat.reshape(w, h).T


def _coco_counts_from_string(s: str) -> list[int]:
    counts: list[int] = []
    p = 0
    while p < len(s):
        x, k, more = 0, 0, True
        while more:
            c = ord(s[p]) - 48
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and (c & 0x10):
                x |= -1 << (5 * k)
        if len(counts) > 2:
            x += counts[-2]
        counts.append(x)
    return counts


def coco_counts_to_string(counts: list[int]) -> str:
    out = []
    for i, x in enumerate(counts):
        if i > 2:
            x -= counts[i - 2]
        more = True
        while more:
            c = x & 0x1F
            x >>= 5
            more = not ((c & 0x10 == 0 and x == 0) or (c & 0x10 and x == -1))
            if more:
                c |= 0x20
            out.append(chr(c + 48))
    return "".join(out)


def coco_rle_encode(mask: np.ndarray) -> dict:
    flat = mask.T.ravel().astype(np.int8)
    change = np.flatnonzero(np.diff(np.concatenate([[0], flat, [1 - flat[-1] if flat.size else 0]])) != 0)
    counts = np.diff(np.concatenate([[0], change])).tolist()
    if flat.size and not counts:
        counts = [flat.size]
    return {"size": [int(mask.shape[0]), int(mask.shape[1])], "counts": coco_counts_to_string(counts)}


@register_reader("coco", "COCO instance JSON (polygons or RLE) with the images beside it or in images/")
def read_coco(src: Path) -> Iterator[Sample]:
    src = Path(src)
    json_path = src if src.is_file() else next(iter(sorted(src.glob("*.json"))), None)
    if json_path is None:
        raise InputError(src, "no COCO .json file")
    try:
        data = json.loads(json_path.read_text())
    except json.JSONDecodeError as exc:
        raise InputError(json_path, f"invalid JSON ({exc})") from None
    if not isinstance(data, dict) or "images" not in data or "annotations" not in data:
        raise InputError(json_path, "not a COCO instance file (needs 'images' and 'annotations')")
    require_nonempty(data["images"], json_path, "images")
    by_image: dict = {}
    for ann in data["annotations"]:
        by_image.setdefault(ann["image_id"], []).append(ann)
    folders = [json_path.parent, json_path.parent / "images"]
    for info in data["images"]:
        stem = Path(info["file_name"]).stem
        image = read_image(find_image(stem, folders, json_path))
        h, w = image.shape[:2]
        if (info.get("height", h), info.get("width", w)) != (h, w):
            raise InputError(json_path, f"{info['file_name']}: size {info['width']}×{info['height']} differs from "
                             f"image size {w}×{h}")
        labels = np.zeros((h, w), np.int32)
        classes = {}
        for k, ann in enumerate(by_image.get(info["id"], []), start=1):
            seg = ann.get("segmentation")
            if isinstance(seg, dict):
                labels[coco_rle_decode(seg)] = k
            elif isinstance(seg, list):
                for poly in seg:
                    xy = np.asarray(poly, dtype=np.float64).reshape(-1, 2) - 0.5
                    labels[polygons_to_instances([xy], (h, w)) > 0] = k
            else:
                raise InputError(json_path, f"annotation {ann.get('id')}: no segmentation")
            classes[k] = int(ann.get("category_id", 1))
        yield make_sample(json_path.parent / info["file_name"], labels, json_path, "coco", classes=classes,
                          image=image, id=stem)


@register_reader("geojson", "QuPath GeoJSON: <stem>.geojson beside (or in geojson/ next to images/) each image")
def read_geojson(src: Path) -> Iterator[Sample]:
    src = Path(src)
    gj_dir = src / "geojson" if (src / "geojson").is_dir() else src
    files = require_nonempty(sorted(gj_dir.glob("*.geojson")) + sorted(gj_dir.glob("*.json")), gj_dir,
                             ".geojson files")
    for path in files:
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise InputError(path, f"invalid JSON ({exc})") from None
        features = data.get("features", []) if isinstance(data, dict) else data
        image = read_image(find_image(path.stem, [src / "images", path.parent, src], path))
        labels, classes, names = geojson_features_to_instances(features, image.shape[:2], path)
        yield make_sample(find_image(path.stem, [src / "images", path.parent, src], path), labels, path, "geojson",
                          classes=classes, image=image, class_names=names)


def geojson_features_to_instances(features, shape, path: Path):
    labels = np.zeros(shape, np.int32)
    classes: dict[int, int] = {}
    names: dict[str, int] = {}
    k = 0
    for feat in features:
        geom = feat.get("geometry") or {}
        polys = {"Polygon": [geom.get("coordinates")], "MultiPolygon": geom.get("coordinates")}.get(geom.get("type"))
        if not polys:
            continue
        k += 1
        for poly in polys:
            if poly:
                ring = np.asarray(poly[0], dtype=np.float64) - 0.5
                labels[polygons_to_instances([ring], shape) > 0] = k
        props = feat.get("properties") or {}
        cls = props.get("classification") or {}
        name = cls.get("name") if isinstance(cls, dict) else None
        if name:
            classes[k] = names.setdefault(name, len(names) + 1)
    if k == 0:
        raise InputError(path, "no Polygon features")
    return labels, classes, {v: n for n, v in names.items()}
