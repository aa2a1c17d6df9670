"""Result writers: 16-bit label maps, overlays, QuPath GeoJSON, per-nucleus CSV and COCO JSON. All atomic."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np

from nucseg.io.images import write_image, write_label, write_text
from nucseg.labels import instance_outlines, instance_properties
from nucseg.structures import Instances

OUTPUT_KINDS = ("labels", "overlay", "geojson", "csv")


def write_geojson(path: Path, inst: Instances, class_names: dict[int, str] | None = None,
                  properties: dict[str, np.ndarray] | None = None, outlines: dict | None = None) -> Path:
    """A FeatureCollection with one 'detection' per nucleus, every id of the label map included, as QuPath 0.5/0.6
    import it (File > Import objects): a UUID id (QuPath parses ids as UUIDs), classification {name, color} and a
    flat measurements dict. The geometry is the pixel-edge outline (`labels.instance_outlines`): a Polygon, or a
    MultiPolygon for a nucleus in pieces, holes kept, in pixel-corner coordinates (QuPath's convention)."""
    import uuid

    import shapely

    outlines = instance_outlines(inst.labels) if outlines is None else outlines
    rows = {}
    if properties is not None:
        for k, i in enumerate(properties["id"]):
            rows[int(i)] = {name: float(col[k]) for name, col in properties.items() if name != "id"}
    features = []
    for i, geom in outlines.items():
        uid = str(uuid.uuid5(uuid.NAMESPACE_URL, f"nucseg/{Path(path).stem}/{i}"))
        features.append(geojson_feature(uid, f"nucleus {i}", shapely.geometry.mapping(geom), rows.get(i, {}),
                                        inst.classes.get(i), class_names, inst.scores.get(i)))
    return write_text(path, json.dumps({"type": "FeatureCollection", "features": features}))


def geojson_feature(uid: str, name: str, geometry: dict | None, measurements: dict, cls: int | None = None,
                    class_names: dict[int, str] | None = None, score: float | None = None) -> dict:
    """One QuPath detection: `geometry` is a GeoJSON geometry mapping, `measurements` a flat {name: number} dict."""
    from nucseg.viz import class_colour

    props = {"objectType": "detection", "name": name, "measurements": dict(measurements)}
    if cls:
        props["classification"] = {"name": (class_names or {}).get(cls, f"class{cls}"), "color": list(class_colour(cls))}
    if score is not None:  # 4 decimals, as the CSV: more would be noise between runtimes, not information
        props["measurements"]["probability"] = round(float(score), 4)
    return {"type": "Feature", "id": uid, "geometry": geometry, "properties": props}


def nucleus_table(inst: Instances, properties: dict[str, np.ndarray],
                  class_names: dict[int, str] | None = None) -> dict[str, list]:
    """The per-nucleus table as columns, in the CSV's order: id, the measurements of `instance_properties`, class
    (its name; "" for none) and probability (None where the method gives no score). `write_csv` writes it and
    `Result.table()` returns it as a DataFrame, so the two cannot differ."""
    ids = [int(i) for i in properties["id"]]
    columns: dict[str, list] = {"id": ids}
    for name, col in properties.items():
        if name != "id":
            columns[name] = [float(v) for v in col]
    classes = [inst.classes.get(i, 0) for i in ids]
    columns["class"] = [(class_names or {}).get(c, str(c) if c else "") for c in classes]
    columns["probability"] = [inst.scores.get(i) for i in ids]
    return columns


def write_csv(path: Path, inst: Instances, properties: dict[str, np.ndarray],
              class_names: dict[int, str] | None = None) -> Path:
    table = nucleus_table(inst, properties, class_names)
    measured = [c for c in table if c not in ("id", "class", "probability")]
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(list(table))
    for k, i in enumerate(table["id"]):
        prob = table["probability"][k]
        writer.writerow([i, *[f"{table[c][k]:.4f}" for c in measured], table["class"][k],
                         "" if prob is None else f"{prob:.4f}"])
    return write_text(path, buf.getvalue())


def write_coco(path: Path, items: list[tuple[str, Instances]], class_names: dict[int, str] | None = None) -> Path:
    """COCO instance JSON for several images. Segmentations are compressed RLE: the pixel set that the GeoJSON
    outline rasterises to (a COCO polygon cannot carry a hole); bbox and area are that same pixel set's."""
    from nucseg.data.readers.instance_lists import coco_rle_encode
    from nucseg.labels import bounding_boxes

    images, anns, cats = [], [], set()
    for img_id, (name, inst) in enumerate(items, start=1):
        h, w = inst.labels.shape
        images.append({"id": img_id, "file_name": name, "height": h, "width": w})
        for i, (r0, c0, r1, c1) in bounding_boxes(inst.labels).items():
            mask = inst.labels == i
            cls = inst.classes.get(i, 1)
            cats.add(cls)
            anns.append({"id": len(anns) + 1, "image_id": img_id, "category_id": cls, "iscrowd": 0,
                         "area": int(mask.sum()), "bbox": [c0, r0, c1 - c0, r1 - r0],
                         "segmentation": coco_rle_encode(mask)})
    categories = [{"id": c, "name": (class_names or {}).get(c, "nucleus" if c == 1 else f"class{c}")}
                  for c in sorted(cats or {1})]
    return write_text(path, json.dumps({"images": images, "annotations": anns, "categories": categories}))


def write_outputs(out_dir: Path, stem: str, image: np.ndarray, inst: Instances, kinds=OUTPUT_KINDS,
                  mpp: float | None = None, class_names: dict[int, str] | None = None) -> dict[str, Path]:
    """Write the requested outputs of one image; returns {kind: path} (with "types", the per-pixel class map, when
    the labels are written and the instances carry classes)."""
    from nucseg.viz import overlay_contours

    unknown = set(kinds) - set(OUTPUT_KINDS)
    if unknown:
        raise ValueError(f"unknown output kind(s) {sorted(unknown)} (known: {', '.join(OUTPUT_KINDS)})")
    out_dir = Path(out_dir)
    written = {}
    props = outlines = None
    if "csv" in kinds or "geojson" in kinds:
        outlines = instance_outlines(inst.labels)  # traced once: GeoJSON geometry and CSV perimeter / solidity
        props = instance_properties(inst.labels, image, mpp, outlines)
    if "labels" in kinds:
        written["labels"] = write_label(out_dir / "labels" / f"{stem}.png", inst.labels)
        if inst.classes:  # beside the labels, as the training sets keep them: types/<stem>.png, 0 = background
            from nucseg.labels import instances_to_class_map

            written["types"] = write_image(out_dir / "types" / f"{stem}.png",
                                           instances_to_class_map(inst.labels, inst.classes))  # 8-bit
    if "overlay" in kinds:
        written["overlay"] = write_image(out_dir / "overlays" / f"{stem}.png",
                                         overlay_contours(image, inst.labels, inst.classes))
    if "geojson" in kinds:
        written["geojson"] = write_geojson(out_dir / "geojson" / f"{stem}.geojson", inst, class_names, props, outlines)
    if "csv" in kinds:
        written["csv"] = write_csv(out_dir / "csv" / f"{stem}.csv", inst, props, class_names)
    return written
