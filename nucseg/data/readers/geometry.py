"""Polygon annotations checked where they are read, then rasterised.

Rules (every polygon format: MoNuSeg and GBM40 XML, ImageJ ROIs, COCO polygons, QuPath GeoJSON):
- A vertex that is not a finite number, or that lies far outside the image (more than one image size beyond its
  edge: a damaged or mis-scaled file, not an annotator drawing past the border), is an error naming the file and
  the polygon: rasterising it would paint a stripe or a whole region.
- A polygon with fewer than 3 vertices encloses nothing: ignored, counted in the Sample's warnings.
- A self-intersecting outline is rasterised by the even-odd rule (a pixel centre is inside when a ray from it
  crosses the outline an odd number of times), as MATLAB's poly2mask, which made MoNuSeg's official label maps, does;
  the readers reproduce those maps pixel for pixel. Where an outline loops back over its own area that rule leaves
  the doubly enclosed pixels out; the warning counts such polygons and the pixels the union of their enclosed areas
  would have added, so the choice is never silent.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np

from nucseg.io.images import InputError


class PolygonRasteriser:
    """Checks and rasterises the polygons of one annotation file onto an image of `shape` (rows, columns);
    `warnings()` reports what was ignored or is worth knowing."""

    def __init__(self, shape: tuple[int, int], path: Path):
        self.shape, self.path = tuple(int(v) for v in shape[:2]), Path(path)
        self.counts: Counter = Counter()

    def pixels(self, vertices, name: str) -> tuple[np.ndarray, np.ndarray] | None:
        """(rows, cols) of the pixels whose centres the polygon encloses (even-odd), or None when it has fewer than
        3 vertices. `vertices` are (x, y) with pixel (r, c)'s centre at x = c, y = r; `name` says which polygon."""
        from skimage.draw import polygon as draw_polygon

        try:
            poly = np.asarray(vertices, dtype=np.float64)
        except (TypeError, ValueError):
            raise InputError(self.path, f"{name}: vertices are not numbers") from None
        if poly.ndim != 2 or poly.shape[1] != 2:
            raise InputError(self.path, f"{name}: vertices are not (x, y) pairs (shape {poly.shape})")
        if len(poly) < 3:
            self.counts["short"] += 1
            return None
        if not np.isfinite(poly).all():
            bad = poly[~np.isfinite(poly).all(axis=1)][0]
            raise InputError(self.path, f"{name}: vertex ({bad[0]}, {bad[1]}) is not a finite number")
        h, w = self.shape
        reach = max(h, w)
        outside = (poly[:, 0] < -reach) | (poly[:, 0] > w + reach) | (poly[:, 1] < -reach) | (poly[:, 1] > h + reach)
        if outside.any():
            x, y = poly[np.flatnonzero(outside)[0]]
            raise InputError(self.path, f"{name}: vertex ({x:.6g}, {y:.6g}) lies far outside the {w}×{h} image")
        rr, cc = draw_polygon(poly[:, 1], poly[:, 0], shape=self.shape)
        self._note_self_intersection(poly, rr.size)
        return rr, cc

    def _note_self_intersection(self, poly: np.ndarray, drawn: int) -> None:
        import shapely

        ring = shapely.Polygon(poly)
        if ring.is_valid:
            return
        self.counts["self_intersecting"] += 1
        union = shapely.make_valid(ring, method="structure")  # the area the outline encloses, loops merged
        self.counts["union_pixels"] += max(_centre_count(union, self.shape) - drawn, 0)

    def instances(self, polygons, names=None) -> np.ndarray:
        """An int32 instance map: polygon k gets id k + 1 (ids stay in file order, so classes keep their rows);
        where polygons overlap, the later one wins."""
        out = np.zeros(self.shape, np.int32)
        for k, poly in enumerate(polygons):
            drawn = self.pixels(poly, names[k] if names else f"polygon {k + 1}")
            if drawn is not None:
                out[drawn] = k + 1
        return out

    def warnings(self) -> list[str]:
        notes = []
        if self.counts["short"]:
            notes.append(f"{self.counts['short']} polygon(s) with fewer than 3 vertices ignored")
        if self.counts["union_pixels"]:  # self-intersections that change no pixel are not worth a word
            notes.append(f"{self.counts['self_intersecting']} self-intersecting polygon(s) rasterised by the even-odd "
                         f"rule, as the official MoNuSeg maps: {self.counts['union_pixels']} pixel(s) where an outline "
                         "loops over its own area left out")
        return notes


def _centre_count(geom, shape: tuple[int, int]) -> int:
    """Pixel centres inside a (multi)polygon, holes excluded, on an image of `shape`."""
    from skimage.draw import polygon as draw_polygon

    mask = np.zeros(shape, bool)
    for part in getattr(geom, "geoms", [geom]):
        if part.geom_type != "Polygon" or part.is_empty:
            continue
        ext = np.asarray(part.exterior.coords)
        mask[draw_polygon(ext[:, 1], ext[:, 0], shape=shape)] = True
        for hole in part.interiors:
            inner = np.asarray(hole.coords)
            mask[draw_polygon(inner[:, 1], inner[:, 0], shape=shape)] = False
    return int(mask.sum())
