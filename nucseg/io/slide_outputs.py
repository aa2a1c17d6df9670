"""A slide's outputs, written as streams from per-tile results: nothing whole-slide is held in memory.

- `nuclei.geojson`: QuPath detections (valid pixel-edge polygons in level-0 pixel coordinates), one feature per line.
- `nuclei.csv`: one row per nucleus, centroid in level-0 pixels, measurements in µm / µm² where the resolution is
  known (else pixels), class and probability.
- `nuclei.sqlite`: the same rows with the polygon as WKB (level-0 pixels) and an R*Tree index over the nuclei's
  bounding boxes, for queries such as "nuclei in this region" without reading the GeoJSON. SQLite rather than
  GeoParquet: it is in Python's standard library, appends row by row and is opened by any language.
- `labels.zarr`: the instance labels (int32, chunked, zstd) at the model's resolution, as an OME-Zarr (NGFF 0.4)
  label image: napari opens the folder (or `labels.zarr/0` as a plain array); the scale metadata gives µm per pixel.
- `overview.png`: a low-resolution picture of the slide with the tissue outline and the nuclei density.

Every file is written under a temporary name and renamed into place by `SlideWriter.commit`, so a final file only
exists once complete.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import sqlite3
import uuid
from pathlib import Path

import numpy as np

from nucseg.io.writers import geojson_feature

CHUNK = 1024  # label-store chunk side, in pixels


def _box(mask: np.ndarray) -> tuple[int, int, int, int]:
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1


class SlideWriter:
    def __init__(self, out_dir: Path, stem: str, work_size: tuple[int, int], mpp: float | None, to_level0: float,
                 columns: list[str], class_names: dict[int, str] | None = None):
        import zarr
        from numcodecs import Blosc

        self.out_dir, self.stem, self.mpp, self.to_level0 = Path(out_dir), stem, mpp, to_level0
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.class_names = class_names
        self.columns = [c for c in columns if c not in ("id", "centroid_x", "centroid_y")]
        self.count = 0
        names = ("nuclei.geojson", "nuclei.csv", "nuclei.sqlite", "labels.zarr", "overview.png")
        # named by this process, so no two jobs ever write one file; the folder's lock (nucseg.io.lock) is held, so
        # partial files already here are a killed job's: removed
        for n in names:
            for stale in self.out_dir.glob(f".{Path(n).stem}.*partial{Path(n).suffix}"):
                shutil.rmtree(stale) if stale.is_dir() else stale.unlink()
        self._tmp = {n: self.out_dir / f".{Path(n).stem}.{os.getpid()}.partial{Path(n).suffix}" for n in names}
        w, h = work_size
        # zarr format 2: what OME-Zarr 0.4, napari-ome-zarr and QuPath's readers expect
        root = zarr.open_group(str(self._tmp["labels.zarr"]), mode="w", zarr_format=2)
        self.labels = root.create_array("0", shape=(h, w), chunks=(CHUNK, CHUNK), dtype=np.int32, fill_value=0,
                                        compressors=Blosc(cname="zstd", clevel=3, shuffle=Blosc.BITSHUFFLE),
                                        config={"write_empty_chunks": False})
        scale = [mpp or 1.0, mpp or 1.0]
        unit = "micrometer" if mpp else None
        root.attrs["multiscales"] = [{
            "version": "0.4", "name": "nuclei",
            "axes": [{"name": "y", "type": "space", **({"unit": unit} if unit else {})},
                     {"name": "x", "type": "space", **({"unit": unit} if unit else {})}],
            "datasets": [{"path": "0", "coordinateTransformations": [{"type": "scale", "scale": scale}]}],
        }]
        root.attrs["image-label"] = {"version": "0.4", "source": {"image": "../../"}}
        self._geojson = open(self._tmp["nuclei.geojson"], "w", encoding="utf-8")
        self._geojson.write('{"type": "FeatureCollection", "features": [\n')
        self._csv_file = open(self._tmp["nuclei.csv"], "w", encoding="utf-8", newline="")
        self._csv = csv.writer(self._csv_file)
        self._csv.writerow(["id", "centroid_x", "centroid_y", *self.columns, "class", "probability"])
        self._db = sqlite3.connect(self._tmp["nuclei.sqlite"])
        cols = ", ".join(f'"{c}" REAL' for c in self.columns)
        self._db.execute(f"CREATE TABLE nuclei (id INTEGER PRIMARY KEY, centroid_x REAL, centroid_y REAL, {cols}, "
                         "class TEXT, probability REAL, geometry BLOB)")
        self._db.execute("CREATE VIRTUAL TABLE nuclei_bbox USING rtree(id, min_x, max_x, min_y, max_y)")
        self._db.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT)")
        self._centroids: list[np.ndarray] = []

    def add_tile(self, tile: dict) -> None:
        """Append one tile's nuclei (`engine.slide.finish_tile` packs them), pasted by the rules of
        `postprocess.tiles.paste`: ids continue the count in tile order, a duplicate across a border is dropped, and a
        nucleus that lost a few pixels to an earlier tile gets its outline, centroid, area, perimeter and solidity
        from what it kept (the moment-based shape measures and intensities keep the tile's values)."""
        import shapely

        from nucseg.labels import instance_outlines, midpoint_length, outline_rings
        from nucseg.postprocess.tiles import paste

        local = tile["labels"].astype(np.int32)
        if local.size == 0 or local.max() == 0:
            return
        oy, ox = (int(v) for v in tile["origin"])
        h, w = local.shape
        region = self.labels[oy : oy + h, ox : ox + w]
        new_ids, trimmed = paste(region, local, self.count + 1)
        self.labels[oy : oy + h, ox : ox + w] = region
        geoms = list(shapely.from_wkb(tile["wkb"]))
        props = {k: np.array(v, np.float64) for k, v in tile["props"].items()}
        f, unit = self.to_level0, self.mpp or 1.0
        for j in np.flatnonzero(trimmed):
            # within the nucleus' own box in the tile, not the whole region
            r0, r1, c0, c1 = _box(local == j + 1)
            mask = (region[r0:r1, c0:c1] == new_ids[j]).astype(np.int32)
            g = instance_outlines(mask)[1]
            shift = np.array([ox + c0, oy + r0], np.float64)
            geoms[j] = shapely.transform(g, lambda xy, shift=shift: (xy + shift) * f)
            rr, cc = np.nonzero(mask)
            props["centroid_x"][j] = (cc.mean() + c0 + ox + 0.5) * f - 0.5
            props["centroid_y"][j] = (rr.mean() + r0 + oy + 0.5) * f - 0.5
            props["area"][j] = mask.sum() * unit**2
            props["perimeter"][j] = sum(midpoint_length(r) for r in outline_rings(g)) * unit
            props["solidity"][j] = mask.sum() / g.convex_hull.area
        keep = np.flatnonzero(new_ids > 0)
        bounds = shapely.bounds(np.array(geoms, dtype=object))
        classes, scores = tile["classes"], tile["scores"]
        rows_csv, rows_db, rows_box = [], [], []
        for j in keep:
            gid = int(new_ids[j])
            measures = {c: float(props[c][j]) for c in self.columns}
            cls = int(classes[j])
            score = float(scores[j]) if np.isfinite(scores[j]) else None
            name = (self.class_names or {}).get(cls, str(cls) if cls else "")
            cx, cy = float(props["centroid_x"][j]), float(props["centroid_y"][j])
            feature = geojson_feature(str(uuid.uuid5(uuid.NAMESPACE_URL, f"nucseg/{self.stem}/{gid}")),
                                      f"nucleus {gid}", None, {"centroid_x": cx, "centroid_y": cy, **measures}, cls,
                                      self.class_names, score)
            # GEOS writes the geometry's JSON itself: spliced in rather than parsed and encoded again
            text = json.dumps(feature).replace('"geometry": null', f'"geometry": {shapely.to_geojson(geoms[j])}', 1)
            self._geojson.write(("" if gid == 1 else ",\n") + text)
            rows_csv.append([gid, f"{cx:.2f}", f"{cy:.2f}", *[f"{measures[c]:.4f}" for c in self.columns], name,
                             "" if score is None else f"{score:.4f}"])
            rows_db.append((gid, cx, cy, *measures.values(), name, score, shapely.to_wkb(geoms[j])))
            rows_box.append((gid, bounds[j, 0], bounds[j, 2], bounds[j, 1], bounds[j, 3]))
        self._csv.writerows(rows_csv)
        marks = ", ".join("?" * (len(self.columns) + 6))
        self._db.executemany(f"INSERT INTO nuclei VALUES ({marks})", rows_db)
        self._db.executemany("INSERT INTO nuclei_bbox VALUES (?, ?, ?, ?, ?)", rows_box)
        self._centroids.append(np.stack([props["centroid_x"][keep], props["centroid_y"][keep]], 1))
        self.count += len(keep)

    def overview(self, thumbnail: np.ndarray, downsample: float, tissue: np.ndarray | None) -> None:
        """The thumbnail with a nuclei-density heat map (nuclei per thumbnail pixel, smoothed) and the tissue
        outline in green."""
        import cv2

        from nucseg.io.images import write_image

        h, w = thumbnail.shape[:2]
        out = thumbnail[..., :3].astype(np.float32)
        if self._centroids:
            pts = np.concatenate(self._centroids) / downsample
            density = np.zeros((h, w), np.float32)
            c = np.clip(pts[:, 0].astype(int), 0, w - 1)
            r = np.clip(pts[:, 1].astype(int), 0, h - 1)
            np.add.at(density, (r, c), 1.0)
            density = cv2.GaussianBlur(density, (0, 0), max(w, h) / 200)
            if density.max() > 0:
                d = density / density.max()
                heat = np.stack([np.clip(2 * d, 0, 1), np.clip(2 * d - 1, 0, 1), np.zeros_like(d)], -1) * 255
                alpha = (0.6 * np.clip(d * 3, 0, 1))[..., None]
                out = out * (1 - alpha) + heat * alpha
        if tissue is not None and tissue.any():
            mask = cv2.resize(tissue.astype(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST)
            edge = mask ^ cv2.erode(mask, np.ones((3, 3), np.uint8))
            out[edge > 0] = (0, 200, 0)
        write_image(self._tmp["overview.png"], np.clip(out, 0, 255).astype(np.uint8))

    def commit(self, meta: dict) -> dict[str, Path]:
        """Close every stream and rename the files into place; returns {name: final path}."""
        self._geojson.write("\n]}\n")
        self._geojson.close()
        self._csv_file.close()
        self._db.executemany("INSERT INTO meta VALUES (?, ?)", [(k, json.dumps(v)) for k, v in meta.items()])
        self._db.commit()
        self._db.close()
        final = {}
        for name, tmp in self._tmp.items():
            if not tmp.exists():
                continue
            target = self.out_dir / name
            if target.is_dir():
                shutil.rmtree(target)
            os.replace(tmp, target)
            final[name] = target
        return final

    def abort(self) -> None:
        for f in (self._geojson, self._csv_file):
            f.close()
        self._db.close()
        for tmp in self._tmp.values():
            if tmp.is_dir():
                shutil.rmtree(tmp, ignore_errors=True)
            else:
                tmp.unlink(missing_ok=True)
