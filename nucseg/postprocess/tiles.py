"""Stitching: the one mechanism by which images larger than a forward pass are segmented: tiles with margins and centroid
ownership. `Predictor.segment` uses it for large images and `segment-slide` for slides, with the same grid, padding
and rules, so a slide's result equals `segment` on the same pixels as one flat picture.

A tile's core is `tile - 2·margin` pixels; it is read with `margin` pixels of context on each side (clipped at the
image's edges, then reflect-padded at the bottom and right to `tile`, as a single pass pads), predicted in one
forward pass and post-processed alone. A nucleus belongs to the tile whose core holds its centroid. Tiles are
pasted in row-major order; a pixel already taken by an earlier tile's nucleus stays with it, and a nucleus that
finds most of its pixels taken is the same nucleus seen from both sides of a border: it is dropped.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from nucseg.labels import centroids, relabel_sequential
from nucseg.structures import Instances

DUPLICATE_FRACTION = 0.5  # a pasted nucleus keeping less than this share of its pixels is a duplicate


@dataclass(frozen=True)
class Tile:
    index: int  # row-major position in the grid: the order in which tiles are pasted and ids are numbered
    core: tuple[int, int, int, int]  # x0, y0, x1, y1
    region: tuple[int, int, int, int]  # the core and its margins, clipped to the image


def default_tile(window: int, margin: int, width: int | None = None, height: int | None = None) -> int:
    """The forward-pass size for an image of width × height: at most the model's window (or four margins, where the
    window would leave a small core), shrunk to the smallest multiple of 32 that needs no more tiles, so a 2000²
    image is cut into 9 tiles of 800² rather than 9 of 1024²."""
    largest = max(window, 32 * math.ceil(4 * margin / 32))
    if not width or not height:
        return largest
    core = largest - 2 * margin
    cols, rows = math.ceil(width / core), math.ceil(height / core)
    needed = max(math.ceil(width / cols), math.ceil(height / rows))
    return min(largest, 32 * math.ceil((needed + 2 * margin) / 32))


def plan_tiles(width: int, height: int, tile: int, margin: int, keep=None) -> tuple[tuple[int, int], list[Tile]]:
    """((columns, rows), tiles) covering width × height; `keep(core) -> bool` leaves tiles out (no tissue)."""
    if tile % 32 or tile <= 2 * margin:
        raise ValueError(f"tile size {tile} must be a multiple of 32 larger than twice the margin ({margin})")
    core = tile - 2 * margin
    cols, rows = math.ceil(width / core), math.ceil(height / core)
    tiles = []
    for r in range(rows):
        for c in range(cols):
            x0, y0 = c * core, r * core
            box = (x0, y0, min(x0 + core, width), min(y0 + core, height))
            if keep is not None and not keep(box):
                continue
            region = (max(x0 - margin, 0), max(y0 - margin, 0), min(box[2] + margin, width),
                      min(box[3] + margin, height))
            tiles.append(Tile(r * cols + c, box, region))
    return (cols, rows), tiles


def pad_to_tile(image: np.ndarray, tile: int) -> np.ndarray:
    ph, pw = tile - image.shape[0], tile - image.shape[1]
    return np.pad(image, ((0, ph), (0, pw), (0, 0)), mode="reflect") if ph or pw else image


def owned(inst: Instances, tile: Tile) -> tuple[np.ndarray, np.ndarray]:
    """(labels over the tile's region with only the nuclei whose centroid lies in its core, renumbered 1..k;
    their ids in `inst`)."""
    ids, cents = centroids(inst.labels)
    x0, y0, x1, y1 = tile.core
    if ids.size:
        r, c = cents[:, 0] + tile.region[1], cents[:, 1] + tile.region[0]
        ids = ids[(r >= y0) & (r < y1) & (c >= x0) & (c < x1)]
    return relabel_sequential(np.where(np.isin(inst.labels, ids), inst.labels, 0))


def paste(canvas: np.ndarray, local: np.ndarray, first_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Paste `local` (ids 1..k) into `canvas` (the tile region's view of the output, modified in place) as ids
    first_id, first_id + 1, ... for the nuclei that are kept. Returns (new id per local id, 0 where dropped;
    whether each kept nucleus lost pixels to an earlier tile)."""
    k = int(local.max()) if local.size else 0
    free = (local > 0) & (canvas == 0)
    total = np.bincount(local.ravel(), minlength=k + 1)[1:]
    placed = np.bincount(local[free], minlength=k + 1)[1:]
    kept = placed >= DUPLICATE_FRACTION * np.maximum(total, 1)
    kept &= total > 0
    new = np.zeros(k + 1, np.int64)
    new[1:][kept] = np.arange(first_id, first_id + int(kept.sum()))
    write = free & (new[local] > 0)
    canvas[write] = new[local[write]]
    return new[1:], kept & (placed < total)
