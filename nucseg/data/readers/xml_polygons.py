"""Polygon XML formats: MoNuSeg's Aperio ImageScope XML and GBM40's drawing-program contour XML.

Rasterisation (both): a pixel belongs to a nucleus when its centre lies inside the polygon (vertex X = column,
Y = row, pixel centres at integer coordinates); where polygons overlap, the later one in the file wins. This
reproduces the official MoNuSeg label maps pixel for pixel (checked against ../shared/data in the tests).
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from nucseg.data.readers.base import (
    files_with,
    find_image,
    find_subdir,
    make_sample,
    register_reader,
    require_nonempty,
)
from nucseg.io.images import InputError, read_image
from nucseg.labels import polygons_to_instances
from nucseg.structures import Sample


def _parse(path: Path) -> ET.Element:
    try:
        return ET.parse(path).getroot()
    except ET.ParseError as exc:
        raise InputError(path, f"malformed XML ({exc})") from None


def parse_aperio_xml(path: Path) -> tuple[list[np.ndarray], float | None]:
    """Polygons ((x, y) vertices, one per Region) and MicronsPerPixel of an Aperio ImageScope XML file."""
    root = _parse(path)
    if root.tag != "Annotations":
        raise InputError(path, f"not an Aperio ImageScope XML file (root element <{root.tag}>)")
    polygons = []
    for region in root.iter("Region"):
        pts = [(float(v.get("X")), float(v.get("Y"))) for v in region.iter("Vertex")]
        if len(pts) >= 3:
            polygons.append(np.array(pts))
    if not polygons:
        raise InputError(path, "annotation file has no polygons (no <Region> with 3 or more vertices)")
    mpp = root.get("MicronsPerPixel")
    return polygons, (float(mpp) if mpp else None)


def parse_gbm_xml(path: Path) -> list[np.ndarray]:
    """Polygons of a GBM40 contour XML (<Shape Type=...Polygon> with <Point X= Y=> children)."""
    root = _parse(path)
    polygons = []
    for shape in root.iter("Shape"):
        if "polygon" not in (shape.get("Type") or "").lower():
            continue
        pts = [(float(p.get("X")), float(p.get("Y"))) for p in shape.iter("Point")]
        if len(pts) >= 3:
            polygons.append(np.array(pts))
    if not polygons:
        raise InputError(path, "annotation file has no polygons (no <Shape Type=\"...Polygon\"> with points)")
    return polygons


@register_reader("monuseg", "MoNuSeg: Aperio XML + TIFF ('Tissue Images/' + 'Annotations/', or side by side)")
def read_monuseg(src: Path) -> Iterator[Sample]:
    src = Path(src)
    if src.is_file():
        xmls, image_dirs = [src], [src.parent]
    else:
        ann_dir = find_subdir(src, ("Annotations", "annotations")) or src
        img_dir = find_subdir(src, ("Tissue Images", "Tissue images", "images", "Images"))
        image_dirs = [d for d in (img_dir, src) if d is not None]
        xmls = require_nonempty(files_with(ann_dir, (".xml",)), src, "Aperio .xml annotation files")
    for xml in xmls:
        image_path = find_image(xml.stem, image_dirs, xml)
        polygons, mpp = parse_aperio_xml(xml)
        image = read_image(image_path)
        labels = polygons_to_instances(polygons, image.shape[:2])
        yield make_sample(image_path, labels, xml, "monuseg", image=image, mpp=mpp)


@register_reader("gbm", "GBM40: <id>.tif + <id>_data.xml contour XML")
def read_gbm(src: Path) -> Iterator[Sample]:
    src = Path(src)
    xmls = require_nonempty(sorted(src.glob("*_data.xml")), src, "'<id>_data.xml' contour files")
    for xml in xmls:
        stem = xml.name[: -len("_data.xml")]
        image_path = find_image(stem, [src, src / "images"], xml)
        image = read_image(image_path)
        labels = polygons_to_instances(parse_gbm_xml(xml), image.shape[:2])
        yield make_sample(image_path, labels, xml, "gbm40", image=image)
