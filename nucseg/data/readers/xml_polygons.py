"""Polygon XML formats: MoNuSeg's Aperio ImageScope XML and GBM40's drawing-program contour XML.

Rasterisation (both): a pixel belongs to a nucleus when its centre lies inside the polygon (vertex X = column,
Y = row, pixel centres at integer coordinates); where polygons overlap, the later one in the file wins. This
reproduces the official MoNuSeg label maps pixel for pixel (checked against ../shared/data in the tests). Vertices
are checked first (`geometry.PolygonRasteriser`: non-finite or far-outside vertices are errors). XML entity
expansion is refused by expat's amplification limit (a "billion laughs" file is a malformed-XML error).
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
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
from nucseg.data.readers.geometry import PolygonRasteriser
from nucseg.io.images import InputError, read_image
from nucseg.structures import Sample


def _parse(path: Path) -> ET.Element:
    try:
        return ET.parse(path).getroot()
    except ET.ParseError as exc:
        raise InputError(path, f"malformed XML ({exc})") from None


def _vertices(element: ET.Element, tag: str, path: Path, name: str) -> np.ndarray:
    """The (X, Y) attributes of `element`'s <tag> children as an N×2 array."""
    pts = []
    for v in element.iter(tag):
        try:
            pts.append((float(v.get("X")), float(v.get("Y"))))
        except (TypeError, ValueError):
            raise InputError(path, f"{name}: a <{tag}> without numeric X and Y "
                             f"(X={v.get('X')!r}, Y={v.get('Y')!r})") from None
    return np.array(pts, dtype=np.float64).reshape(-1, 2)


def parse_aperio_xml(path: Path) -> tuple[list[np.ndarray], list[str], float | None]:
    """Polygons ((x, y) vertices, one per Region), their names and MicronsPerPixel of an Aperio ImageScope XML
    file. Regions with fewer than 3 vertices are kept here; the rasteriser ignores and counts them."""
    root = _parse(path)
    if root.tag != "Annotations":
        raise InputError(path, f"not an Aperio ImageScope XML file (root element <{root.tag}>)")
    polygons, names = [], []
    for k, region in enumerate(root.iter("Region"), start=1):
        name = f"Region {k} (Id={region.get('Id')})"
        polygons.append(_vertices(region, "Vertex", path, name))
        names.append(name)
    if not any(len(p) >= 3 for p in polygons):
        raise InputError(path, "annotation file has no polygons (no <Region> with 3 or more vertices)")
    mpp = root.get("MicronsPerPixel")
    try:
        return polygons, names, (float(mpp) if mpp else None)
    except ValueError:
        raise InputError(path, f"MicronsPerPixel={mpp!r} is not a number") from None


def parse_gbm_xml(path: Path) -> tuple[list[np.ndarray], list[str]]:
    """Polygons of a GBM40 contour XML (<Shape Type=...Polygon> with <Point X= Y=> children) and their names."""
    root = _parse(path)
    polygons, names = [], []
    for k, shape in enumerate(root.iter("Shape"), start=1):
        if "polygon" not in (shape.get("Type") or "").lower():
            continue
        name = f"Shape {k}"
        polygons.append(_vertices(shape, "Point", path, name))
        names.append(name)
    if not any(len(p) >= 3 for p in polygons):
        raise InputError(path, "annotation file has no polygons (no <Shape Type=\"...Polygon\"> with points)")
    return polygons, names


def _rasterise(polygons: list[np.ndarray], names: list[str], image: np.ndarray, path: Path):
    raster = PolygonRasteriser(image.shape[:2], path)
    labels = raster.instances(polygons, names)
    return labels, raster.warnings()


@register_reader("monuseg", "MoNuSeg: Aperio XML + TIFF ('Tissue Images/' + 'Annotations/', or side by side)")
def read_monuseg(src: Path) -> Iterator[Deferred]:
    src = Path(src)
    if src.is_file():
        xmls, image_dirs = [src], [src.parent]
    else:
        ann_dir = find_subdir(src, ("Annotations", "annotations")) or src
        img_dir = find_subdir(src, ("Tissue Images", "Tissue images", "images", "Images"))
        image_dirs = [d for d in (img_dir, src) if d is not None]
        xmls = require_nonempty(files_with(ann_dir, (".xml",)), src, "Aperio .xml annotation files")
    for xml in xmls:
        yield deferred(xml, _monuseg_sample, xml, image_dirs)


def _monuseg_sample(xml: Path, image_dirs: list[Path]) -> Sample:
    image_path = find_image(xml.stem, image_dirs, xml)
    polygons, names, mpp = parse_aperio_xml(xml)
    image = read_image(image_path)
    labels, warnings = _rasterise(polygons, names, image, xml)
    return make_sample(image_path, labels, xml, "monuseg", image=image, mpp=mpp, warnings=warnings)


@register_reader("gbm", "GBM40: <id>.tif + <id>_data.xml contour XML")
def read_gbm(src: Path) -> Iterator[Deferred]:
    src = Path(src)
    xmls = require_nonempty(sorted(src.glob("*_data.xml")), src, "'<id>_data.xml' contour files")
    for xml in xmls:
        yield deferred(xml, _gbm_sample, xml, src)


def _gbm_sample(xml: Path, src: Path) -> Sample:
    stem = xml.name[: -len("_data.xml")]
    image_path = find_image(stem, [src, src / "images"], xml)
    image = read_image(image_path)
    labels, warnings = _rasterise(*parse_gbm_xml(xml), image, xml)
    return make_sample(image_path, labels, xml, "gbm40", image=image, warnings=warnings)
