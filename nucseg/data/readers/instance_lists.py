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

from nucseg.data.readers.base import (
    Deferred,
    SourceWarning,
    deferred,
    files_with,
    find_image,
    make_sample,
    register_reader,
    require_nonempty,
)
from nucseg.data.readers.geometry import PolygonRasteriser
from nucseg.io.images import IMAGE_EXTENSIONS, InputError, read_image
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
def read_dsb2018(src: Path) -> Iterator[Deferred]:
    src = Path(src)
    csvs = sorted(src.glob("*.csv")) if src.is_dir() else [src] if src.suffix == ".csv" else []
    if csvs:
        yield from _read_dsb_csv(csvs[0], src if src.is_dir() else src.parent)
        return
    folders = require_nonempty(sorted(p for p in src.iterdir() if (p / "masks").is_dir()), src,
                               "'<id>/masks/' folders")
    for folder in folders:
        yield deferred(folder, _dsb_folder_sample, src, folder)


def _dsb_folder_sample(src: Path, folder: Path) -> Sample:
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
    return make_sample(folder / "images" / f"{stem}.png", labels, folder / "masks", "dsb2018", image=image,
                       modality=_dsb_modality(image))


def _read_dsb_csv(path: Path, folder: Path) -> Iterator[Deferred]:
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
        yield deferred(path, _dsb_csv_sample, path, folder, stem, entries)


def _dsb_csv_sample(path: Path, folder: Path, stem: str, entries: list[dict]) -> Sample:
    image = _dsb_image(folder, stem, path)
    h, w = image.shape[:2]
    if "Height" in entries[0] and entries[0].get("Height"):
        try:
            ch, cw = int(entries[0]["Height"]), int(entries[0]["Width"])
        except (TypeError, ValueError):
            raise InputError(path, f"{stem}: Height/Width are not integers") from None
        if (ch, cw) != (h, w):
            raise InputError(path, f"{stem}: mask size {cw}×{ch} differs from image size {w}×{h}")
    labels = np.zeros((h, w), np.int32)
    for k, row in enumerate(entries, start=1):
        try:
            labels[rle_decode(row["EncodedPixels"] or "", (h, w))] = k
        except ValueError as exc:
            raise InputError(path, f"{stem}: {exc}") from None
    return make_sample(folder / stem, labels, path, "dsb2018", image=image, id=stem, modality=_dsb_modality(image))


@register_reader("imagej", "ImageJ ROI sets (CryoNuSeg): <image>.tif + RoiSet.zip per folder")
def read_imagej(src: Path) -> Iterator[Deferred]:
    src = Path(src)
    zips = require_nonempty(sorted(src.rglob("*.zip")) if src.is_dir() else [src], src, "ImageJ ROI .zip sets")
    for zip_path in zips:
        yield deferred(zip_path, _imagej_sample, zip_path)


def _imagej_sample(zip_path: Path) -> Sample:
    import roifile

    images = [p for p in files_with(zip_path.parent, IMAGE_EXTENSIONS)]
    if not images:
        raise InputError(zip_path, f"no image beside the ROI set in {zip_path.parent}")
    image = read_image(images[0])
    try:
        rois = roifile.roiread(zip_path)
        rois = rois if isinstance(rois, list) else [rois]
        coords = [(getattr(r, "name", "") or f"ROI {k}", r.coordinates()) for k, r in enumerate(rois, start=1)]
    except Exception as exc:
        raise InputError(zip_path, f"cannot read ImageJ ROI set ({type(exc).__name__}: {exc})") from None
    polygons = [(name, np.asarray(c, dtype=np.float64)) for name, c in coords if c is not None]
    polygons = [(name, c - 0.5) for name, c in polygons if c.ndim == 2 and c.shape[-1] == 2]
    if not any(len(c) >= 3 for _, c in polygons):
        raise InputError(zip_path, "ROI set holds no polygons")
    raster = PolygonRasteriser(image.shape[:2], zip_path)
    labels = raster.instances([c for _, c in polygons], [f"ROI '{name}'" for name, _ in polygons])
    return make_sample(images[0], labels, zip_path, "imagej", image=image, warnings=raster.warnings())


@register_reader("deepliif", "DeepLIIF: 6-panel PNGs [IHC|H|DAPI|Lap2|Ki67|seg]; red=Ki67+, blue=Ki67- nuclei")
def read_deepliif(src: Path) -> Iterator[Deferred]:
    src = Path(src)
    files = [src] if src.is_file() else require_nonempty(files_with(src, (".png",)), src, "DeepLIIF .png panels")
    for path in files:
        yield deferred(path, _deepliif_sample, path)


def _deepliif_sample(path: Path) -> Sample:
    from scipy import ndimage as ndi

    full = read_image(path)
    h, w = full.shape[:2]
    if w % h or w // h < 2:
        raise InputError(path, f"expected side-by-side square panels (width a multiple of height), got {w}×{h}")
    if full.shape[-1] != 3:
        raise InputError(path, "expected RGB panels (the last one colour-codes the nuclei), got a greyscale image")
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
    return make_sample(path, labels, path, "deepliif", classes=classes, image=image, modality=Modality.IHC.value,
                       class_names={1: "ki67_negative", 2: "ki67_positive"})


def coco_rle_decode(seg: dict, shape: tuple[int, int] | None = None) -> np.ndarray:
    """COCO RLE (uncompressed counts list, or the compressed string) -> H×W bool, column-major. With `shape`, the
    RLE's size must be it; the runs must be non-negative and cover the image exactly."""
    h, w = (int(v) for v in seg["size"])
    if shape is not None and (h, w) != tuple(shape):
        raise ValueError(f"RLE size {w}×{h} differs from the image's {shape[1]}×{shape[0]}")
    counts = seg["counts"]
    if isinstance(counts, str):
        counts = _coco_counts_from_string(counts)
    counts = [int(c) for c in counts]
    if any(c < 0 for c in counts) or sum(counts) != h * w:
        raise ValueError(f"runs cover {sum(counts)} pixels (some negative: {any(c < 0 for c in counts)}), "
                         f"not the {h}×{w} image's {h * w}")
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
def read_coco(src: Path) -> Iterator[Deferred | SourceWarning]:
    src = Path(src)
    json_path = src if src.is_file() else next(iter(sorted(src.glob("*.json"))), None)
    if json_path is None:
        raise InputError(src, "no COCO .json file")
    try:
        data = json.loads(json_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(json_path, f"invalid JSON ({exc})") from None
    if not isinstance(data, dict) or not isinstance(data.get("images"), list) \
            or not isinstance(data.get("annotations"), list):
        raise InputError(json_path, "not a COCO instance file (needs 'images' and 'annotations' lists)")
    images = [i for i in data["images"] if isinstance(i, dict) and "id" in i and isinstance(i.get("file_name"), str)]
    require_nonempty(images, json_path, "images (entries with an id and a file_name)")
    if len(images) < len(data["images"]):
        yield SourceWarning(json_path, f"{len(data['images']) - len(images)} image entries without an id or a "
                            "file_name ignored")
    known = {i["id"] for i in images}
    by_image: dict = {}
    orphans = unlinked = 0
    for ann in data["annotations"]:
        if not isinstance(ann, dict) or "image_id" not in ann:
            unlinked += 1
        elif ann["image_id"] not in known:
            orphans += 1
        else:
            by_image.setdefault(ann["image_id"], []).append(ann)
    if orphans:
        yield SourceWarning(json_path, f"{orphans} annotation(s) reference image ids missing from 'images' (ignored)")
    if unlinked:
        yield SourceWarning(json_path, f"{unlinked} annotation(s) without an image_id ignored")
    folders = [json_path.parent, json_path.parent / "images"]
    for info in images:
        yield deferred(json_path, _coco_sample, json_path, info, by_image.get(info["id"], []), folders)


def _coco_sample(json_path: Path, info: dict, anns: list[dict], folders: list[Path]) -> Sample:
    stem = Path(info["file_name"]).stem
    image = read_image(find_image(stem, folders, json_path))
    h, w = image.shape[:2]
    if (info.get("height", h), info.get("width", w)) != (h, w):
        raise InputError(json_path, f"{info['file_name']}: size {info.get('width')}×{info.get('height')} differs "
                         f"from image size {w}×{h}")
    labels = np.zeros((h, w), np.int32)
    classes = {}
    raster = PolygonRasteriser((h, w), json_path)
    for k, ann in enumerate(anns, start=1):
        seg = ann.get("segmentation")
        name = f"{info['file_name']}: annotation {ann.get('id')}"
        if isinstance(seg, dict):
            try:
                labels[coco_rle_decode(seg, (h, w))] = k
            except (KeyError, TypeError, ValueError) as exc:
                raise InputError(json_path, f"{name}: bad RLE ({type(exc).__name__}: {exc})") from None
        elif isinstance(seg, list):
            for part in seg:
                try:
                    xy = np.asarray(part, dtype=np.float64).reshape(-1, 2) - 0.5
                except (TypeError, ValueError):
                    raise InputError(json_path, f"{name}: a polygon that is not a flat list of x, y numbers") from None
                drawn = raster.pixels(xy, name)
                if drawn is not None:
                    labels[drawn] = k
        else:
            raise InputError(json_path, f"{name}: no segmentation")
        try:
            classes[k] = int(ann.get("category_id", 1))
        except (TypeError, ValueError):
            raise InputError(json_path, f"{name}: category_id {ann.get('category_id')!r} is not an integer") from None
    return make_sample(json_path.parent / info["file_name"], labels, json_path, "coco", classes=classes, image=image,
                       id=stem, warnings=raster.warnings())


@register_reader("geojson", "QuPath GeoJSON: <stem>.geojson beside (or in geojson/ next to images/) each image")
def read_geojson(src: Path) -> Iterator[Deferred]:
    src = Path(src)
    gj_dir = src / "geojson" if (src / "geojson").is_dir() else src
    files = require_nonempty(sorted(gj_dir.glob("*.geojson")) + sorted(gj_dir.glob("*.json")), gj_dir,
                             ".geojson files")
    for path in files:
        yield deferred(path, _geojson_sample, path, src)


def _geojson_sample(path: Path, src: Path) -> Sample:
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(path, f"invalid JSON ({exc})") from None
    features = data.get("features", []) if isinstance(data, dict) else data
    if not isinstance(features, list):
        raise InputError(path, "not a GeoJSON FeatureCollection (no 'features' list)")
    image_path = find_image(path.stem, [src / "images", path.parent, src], path)
    image = read_image(image_path)
    labels, classes, names, warnings = geojson_features_to_instances(features, image.shape[:2], path)
    return make_sample(image_path, labels, path, "geojson", classes=classes, image=image, class_names=names,
                       warnings=warnings)


def geojson_features_to_instances(features, shape, path: Path):
    """(instance map, classes, class names, warnings) of QuPath features: Polygon and MultiPolygon geometries
    (the outer ring of each part; holes are not cut), ids in feature order, classes from `classification.name`."""
    labels = np.zeros(shape, np.int32)
    classes: dict[int, int] = {}
    names: dict[str, int] = {}
    raster = PolygonRasteriser(shape, path)
    k = 0
    for n, feat in enumerate(features, start=1):
        if not isinstance(feat, dict):
            raise InputError(path, f"feature {n} is not an object")
        geom = feat.get("geometry") or {}
        polys = {"Polygon": [geom.get("coordinates")], "MultiPolygon": geom.get("coordinates")}.get(geom.get("type"))
        if not polys:
            continue
        k += 1
        for poly in polys:
            if poly:
                if not isinstance(poly, list):
                    raise InputError(path, f"feature {n}: coordinates are not a list of rings")
                try:
                    ring = np.asarray(poly[0], dtype=np.float64) - 0.5
                except (TypeError, ValueError):
                    raise InputError(path, f"feature {n}: a ring that is not a list of [x, y] numbers") from None
                drawn = raster.pixels(ring, f"feature {n}")
                if drawn is not None:
                    labels[drawn] = k
        props = feat.get("properties") or {}
        cls = props.get("classification") or {} if isinstance(props, dict) else {}
        name = cls.get("name") if isinstance(cls, dict) else None
        if isinstance(name, str) and name:
            classes[k] = names.setdefault(name, len(names) + 1)
    if k == 0:
        raise InputError(path, "no Polygon features")
    return labels, classes, {v: n for n, v in names.items()}, raster.warnings()
