"""Whole-slide reading: one small interface over OpenSlide, tifffile (OME-TIFF, pyramidal TIFF), OME-Zarr and plain
images, plus tissue detection on a low-resolution level.

A `Slide` has levels (level 0 is the full resolution), each with its size and downsample factor, a level-0
resolution in µm per pixel when the file states one, and `read_region(level, x, y, w, h)`, which returns RGB uint8
H×W×3 in that level's pixel coordinates. Readers are chosen by the file: vendor formats (svs, ndpi, mrxs, scn, ...)
go to OpenSlide; .tif/.tiff (OME-TIFF, pyramidal or plain TIFF, generic tiled TIFF) to tifffile, which reads all of
them and their metadata without the OpenSlide library; OME-Zarr folders to zarr; PNG/JPEG/BMP to a one-level slide.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nucseg.io.images import InputError, read_image

OPENSLIDE_SUFFIXES = (".svs", ".ndpi", ".mrxs", ".scn", ".vms", ".vmu", ".bif", ".svslide")
TIFF_SUFFIXES = (".tif", ".tiff")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")
SUPPORTED = ("OpenSlide formats (" + ", ".join(OPENSLIDE_SUFFIXES) + "), OME-TIFF / pyramidal or plain TIFF (.tif, "
             ".tiff), OME-Zarr (.zarr folders) and plain images (" + ", ".join(IMAGE_SUFFIXES) + ")")


class Slide:
    """The interface every reader fills in: level sizes (width, height), downsamples, level-0 µm per pixel."""

    path: Path
    level_dimensions: list[tuple[int, int]]
    level_downsamples: list[float]
    mpp: float | None = None

    @property
    def dimensions(self) -> tuple[int, int]:
        return self.level_dimensions[0]

    @property
    def level_count(self) -> int:
        return len(self.level_dimensions)

    def read_region(self, level: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        """RGB uint8 h×w×3 at `level`, top-left (x, y) in that level's pixels; parts outside the slide are white."""
        lw, lh = self.level_dimensions[level]
        out = np.full((h, w, 3), 255, np.uint8)
        x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + w, lw), min(y + h, lh)
        if x1 > x0 and y1 > y0:
            try:
                out[y0 - y : y1 - y, x0 - x : x1 - x] = self._read(level, x0, y0, x1 - x0, y1 - y0)
            except InputError:
                raise
            except Exception as exc:  # a corrupt tile: name the file and the place, the caller decides what next
                raise InputError(self.path, f"cannot read level {level} region x={x0} y={y0} w={x1 - x0} "
                                            f"h={y1 - y0}: {type(exc).__name__}: {exc}") from exc
        return out

    def _read(self, level: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        raise NotImplementedError

    def best_level(self, mpp: float | None) -> int:
        """The level whose resolution is nearest `mpp` (in ratio), level 0 when either resolution is unknown."""
        if mpp is None or self.mpp is None:
            return 0
        ratios = [abs(math.log(self.mpp * d / mpp)) for d in self.level_downsamples]
        return int(np.argmin(ratios))

    def thumbnail(self, max_size: int = 2048, block: int = 2048) -> tuple[np.ndarray, float]:
        """(RGB image of the whole slide at most `max_size` on its long side, level-0 pixels per thumbnail pixel),
        from the smallest level that is still at least that large, read block by block (a slide without a pyramid
        is never decoded whole) and with unreadable blocks left white."""
        import cv2

        w0, h0 = self.dimensions
        target = max(w0, h0) / max_size
        level = 0
        for k, d in enumerate(self.level_downsamples):
            if d <= max(target, 1.0):
                level = k
        lw, lh = self.level_dimensions[level]
        scale = min(max_size / max(lw, lh), 1.0)
        tw, th = max(round(lw * scale), 1), max(round(lh * scale), 1)
        thumb = np.full((th, tw, 3), 255, np.uint8)
        for y in range(0, lh, block):
            for x in range(0, lw, block):
                w, h = min(block, lw - x), min(block, lh - y)
                tx0, ty0 = round(x * scale), round(y * scale)
                tx1, ty1 = max(round((x + w) * scale), tx0 + 1), max(round((y + h) * scale), ty0 + 1)
                try:
                    part = self.read_region(level, x, y, w, h)
                except InputError:
                    continue  # reported when the tiles there are read
                if (tx1 - tx0, ty1 - ty0) != (w, h):
                    part = cv2.resize(part, (tx1 - tx0, ty1 - ty0), interpolation=cv2.INTER_AREA)
                thumb[ty0:ty1, tx0:tx1] = part[: th - ty0, : tw - tx0]
        return thumb, w0 / tw

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _as_rgb(arr: np.ndarray) -> np.ndarray:
    """Y×X, Y×X×C (any C) of any dtype -> Y×X×3 uint8."""
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.dtype != np.uint8:
        arr = np.asarray(arr, np.float32)
        hi = float(arr.max()) if arr.size else 0.0
        arr = np.clip(arr / (hi if hi > 0 else 1.0) * 255.0, 0, 255).astype(np.uint8)
    if arr.shape[-1] == 1:
        arr = np.repeat(arr, 3, axis=-1)
    return np.ascontiguousarray(arr[..., :3])


class OpenSlideSlide(Slide):
    def __init__(self, path: Path):
        import openslide

        self.path = path
        try:
            self._slide = openslide.OpenSlide(str(path))
        except Exception as exc:
            raise InputError(path, f"OpenSlide cannot open it: {exc}") from exc
        self.level_dimensions = [tuple(map(int, d)) for d in self._slide.level_dimensions]
        self.level_downsamples = [float(d) for d in self._slide.level_downsamples]
        mpp = self._slide.properties.get(openslide.PROPERTY_NAME_MPP_X)
        self.mpp = float(mpp) if mpp else None

    def _read(self, level, x, y, w, h):
        d = self.level_downsamples[level]
        rgba = np.asarray(self._slide.read_region((round(x * d), round(y * d)), level, (w, h)))
        # transparent pixels (outside the scanned area) are white, as the background they stand for
        alpha = rgba[..., 3:4].astype(np.uint16)
        return ((rgba[..., :3] * alpha + 255 * (255 - alpha)) // 255).astype(np.uint8)

    def close(self):
        self._slide.close()


class TiffSlide(Slide):
    """OME-TIFF, pyramidal TIFF (SubIFDs or one page per level) and plain TIFF through tifffile's zarr view: only the
    tiles a region touches are decoded."""

    def __init__(self, path: Path):
        import tifffile
        import zarr

        self.path = path
        try:
            self._tif = tifffile.TiffFile(path)
            series = self._tif.series[0]
            store = zarr.open(series.aszarr(), mode="r")
        except Exception as exc:
            raise InputError(path, f"not a readable TIFF: {exc}") from exc
        self._levels = [store[k] for k in sorted(store.array_keys(), key=int)] if isinstance(store, zarr.Group) \
            else [store]
        self._axes = series.axes.upper()
        if not {"Y", "X"} <= set(self._axes):
            raise InputError(path, f"TIFF series axes '{series.axes}' have no Y and X")
        y, x = self._axes.index("Y"), self._axes.index("X")
        self.level_dimensions = [(int(a.shape[x]), int(a.shape[y])) for a in self._levels]
        self.level_downsamples = [self.level_dimensions[0][0] / w for w, _ in self.level_dimensions]
        self.mpp = _tiff_mpp(self._tif)

    def _read(self, level, x, y, w, h):
        index = []
        for ax in self._axes:
            index.append(slice(y, y + h) if ax == "Y" else slice(x, x + w) if ax == "X" else
                         slice(None) if ax in "SC" else 0)
        arr = np.asarray(self._levels[level][tuple(index)])
        kept = [ax for ax in self._axes if ax in "YXSC"]
        order = [kept.index("Y"), kept.index("X")] + [i for i, ax in enumerate(kept) if ax in "SC"]
        return _as_rgb(arr.transpose(order))

    def close(self):
        self._tif.close()


def _tiff_mpp(tif) -> float | None:
    """µm per pixel from OME PhysicalSizeX, else the first page's XResolution + ResolutionUnit (inch or cm)."""
    if tif.is_ome and tif.ome_metadata:
        import re

        m = re.search(r'PhysicalSizeX="([0-9.eE+-]+)"', tif.ome_metadata)
        unit = re.search(r'PhysicalSizeXUnit="([^"]+)"', tif.ome_metadata)
        if m:
            factor = {"µm": 1.0, "um": 1.0, "nm": 1e-3, "mm": 1e3, "cm": 1e4}.get(unit.group(1) if unit else "µm")
            if factor:
                return float(m.group(1)) * factor
    page = tif.pages[0]
    tags = page.tags
    if "XResolution" in tags and "ResolutionUnit" in tags:
        num, den = tags["XResolution"].value
        unit = int(tags["ResolutionUnit"].value)
        per_unit = {2: 25400.0, 3: 10000.0}.get(unit)  # 1 = no absolute unit: not a resolution
        if per_unit and num > 0 and den > 0:
            return per_unit / (num / den)
    return None


class ZarrSlide(Slide):
    """OME-Zarr (NGFF 0.4): the multiscales' datasets are the levels; µm per pixel from the first dataset's scale
    when the x axis has a micrometer unit."""

    def __init__(self, path: Path):
        import zarr

        self.path = path
        try:
            group = zarr.open_group(str(path), mode="r")
            ms = group.attrs["multiscales"][0]
        except Exception as exc:
            raise InputError(path, f"not an OME-Zarr image (no multiscales metadata): {exc}") from exc
        axes = ms.get("axes") or [{"name": n} for n in "tczyx"[-group[ms["datasets"][0]["path"]].ndim:]]
        self._names = [a["name"] if isinstance(a, dict) else a for a in axes]
        self._levels = [group[d["path"]] for d in ms["datasets"]]
        y, x = self._names.index("y"), self._names.index("x")
        self.level_dimensions = [(int(a.shape[x]), int(a.shape[y])) for a in self._levels]
        self.level_downsamples = [self.level_dimensions[0][0] / w for w, _ in self.level_dimensions]
        self.mpp = None
        unit = axes[x].get("unit") if isinstance(axes[x], dict) else None
        for t in ms["datasets"][0].get("coordinateTransformations", []):
            if t.get("type") == "scale" and unit in ("micrometer", "µm", "um"):
                self.mpp = float(t["scale"][x])

    def _read(self, level, x, y, w, h):
        index = [slice(y, y + h) if n == "y" else slice(x, x + w) if n == "x" else slice(None) if n == "c" else 0
                 for n in self._names]
        arr = np.asarray(self._levels[level][tuple(index)])
        kept = [n for n in self._names if n in "yxc"]
        order = [kept.index("y"), kept.index("x")] + ([kept.index("c")] if "c" in kept else [])
        return _as_rgb(arr.transpose(order))


class ImageSlide(Slide):
    """A plain image as a one-level slide (read whole: such files are small enough to decode at once)."""

    def __init__(self, path: Path, image: np.ndarray | None = None):
        self.path = path
        self._image = _as_rgb(read_image(path) if image is None else image)
        h, w = self._image.shape[:2]
        self.level_dimensions, self.level_downsamples = [(w, h)], [1.0]
        self.mpp = None

    def _read(self, level, x, y, w, h):
        return self._image[y : y + h, x : x + w]


def open_slide(path: str | os.PathLike, mpp: float | None = None) -> Slide:
    """The reader for `path`; `mpp` (µm per level-0 pixel) overrides what the file states."""
    path = Path(path)
    if not path.exists():
        raise InputError(path, "file not found")
    name = path.name.lower()
    if path.is_dir() or name.endswith(".zarr"):
        slide: Slide = ZarrSlide(path)
    elif name.endswith(OPENSLIDE_SUFFIXES):
        slide = OpenSlideSlide(path)
    elif name.endswith(TIFF_SUFFIXES):
        slide = TiffSlide(path)
    elif name.endswith(IMAGE_SUFFIXES):
        slide = ImageSlide(path)
    else:
        raise InputError(path, f"unsupported slide format '{path.suffix}'; supported: {SUPPORTED}")
    if mpp is not None:
        if mpp <= 0:
            raise ValueError(f"--mpp must be positive, not {mpp}")
        slide.mpp = float(mpp)
    return slide


@dataclass
class TissueMask:
    """A boolean mask over the slide at low resolution: `downsample` level-0 pixels per mask pixel."""

    mask: np.ndarray
    downsample: float

    def fraction(self, x0: float, y0: float, x1: float, y1: float) -> float:
        """Fraction of the level-0 box [x0, x1) × [y0, y1) that is tissue."""
        d = self.downsample
        h, w = self.mask.shape
        c0, r0 = int(max(x0 // d, 0)), int(max(y0 // d, 0))
        c1, r1 = int(min(math.ceil(x1 / d), w)), int(min(math.ceil(y1 / d), h))
        if c1 <= c0 or r1 <= r0:
            return 0.0
        return float(self.mask[r0:r1, c0:c1].mean())


def tissue_mask(thumbnail: np.ndarray, downsample: float, min_area_px: int = 64) -> TissueMask:
    """Tissue on a low-resolution RGB thumbnail.

    Brightfield (a bright background): Otsu's threshold on HSV saturation, which separates stained tissue from
    white glass and grey scanner background better than intensity does. Dark-background images (fluorescence):
    Otsu on intensity. Then a closing, filled holes (lumina and fat inside tissue stay in) and small specks removed.
    A thumbnail with almost no contrast (max saturation and intensity spread under 8 grey levels) has no tissue."""
    import cv2
    from scipy import ndimage as ndi

    rgb = np.ascontiguousarray(thumbnail[..., :3])
    grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    dark_background = float(np.median(grey)) < 70
    channel = grey if dark_background else cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV)[..., 1]
    channel = cv2.GaussianBlur(channel, (5, 5), 0)
    if int(channel.max()) - int(np.percentile(channel, 5)) < 8:
        return TissueMask(np.zeros(channel.shape, bool), downsample)
    threshold, _ = cv2.threshold(channel, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    mask = channel > max(threshold, 8)
    mask = ndi.binary_closing(mask, structure=np.ones((5, 5)), iterations=2)
    mask = ndi.binary_fill_holes(mask)
    lab, n = ndi.label(mask)
    if n:
        sizes = np.bincount(lab.ravel())
        keep = sizes >= min_area_px
        keep[0] = False
        mask = keep[lab]
    return TissueMask(mask, downsample)


def write_pyramid_tiff(path: str | os.PathLike, image: np.ndarray, mpp: float | None = None, tile: int = 256,
                       min_size: int = 512, ome: bool = True) -> Path:
    """Write an RGB image as a tiled pyramidal TIFF (levels halved down to `min_size`, as SubIFDs), OME-TIFF with
    PhysicalSize when `ome`, resolution tags in cm either way: a slide any reader here (and QuPath) opens."""
    import cv2
    import tifffile

    from nucseg.io.images import atomic_path

    path = Path(path)
    levels = [np.ascontiguousarray(image[..., :3])]
    while max(levels[-1].shape[:2]) // 2 >= min_size:
        prev = levels[-1]
        levels.append(cv2.resize(prev, (prev.shape[1] // 2, prev.shape[0] // 2), interpolation=cv2.INTER_AREA))
    with atomic_path(path) as tmp, tifffile.TiffWriter(tmp, bigtiff=True, ome=ome) as tif:
        for k, level in enumerate(levels):
            opts = {"tile": (tile, tile), "compression": "zlib", "photometric": "rgb"}
            if mpp:
                down = image.shape[1] / level.shape[1]
                opts |= {"resolution": (1e4 / (mpp * down), 1e4 / (mpp * down)), "resolutionunit": "CENTIMETER"}
            if k == 0:
                meta = {"axes": "YXS", **({"PhysicalSizeX": mpp, "PhysicalSizeY": mpp} if mpp else {})}
                tif.write(level, subifds=len(levels) - 1, metadata=meta if ome else None, **opts)
            else:
                tif.write(level, subfiletype=1, **opts)
    return path
