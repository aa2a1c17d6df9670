"""Dense prediction over any image size, whatever runs the network: sliding windows with Gaussian blending,
flip TTA, block tiling with margins for large images (an instance is kept by the block whose core holds its
centroid), resampling to the model's resolution, and the per-image side input. Torch-free: the torch Predictor
(`nucseg.engine.infer`) and the exported-graph one (`nucseg.engine.exported`) differ only in `_forward`."""

from __future__ import annotations

import numpy as np

from nucseg.data.prepare import to_channels, to_uint8
from nucseg.structures import Instances


def gaussian_window(size: int, sigma_scale: float = 0.125) -> np.ndarray:
    g = np.exp(-0.5 * ((np.arange(size) - (size - 1) / 2) / (size * sigma_scale)) ** 2)
    w = np.outer(g, g)
    return np.maximum(w / w.max(), 1e-3).astype(np.float32)


def window_starts(length: int, window: int, stride: int) -> list[int]:
    if length <= window:
        return [0]
    starts = list(range(0, length - window + 1, stride))
    if starts[-1] != length - window:
        starts.append(length - window)
    return starts


def instance_maps(inst: Instances) -> dict[str, np.ndarray]:
    """Instances as the maps a `blendable = False` method's `predict_dense` gives: "instance" (ids), "class" and
    "score", each 1×H×W float32."""
    ids = inst.labels
    top = int(ids.max()) if ids.size else 0
    classes = np.zeros(top + 1, np.float32)
    scores = np.zeros(top + 1, np.float32)
    for i, c in inst.classes.items():
        classes[i] = c
    for i, v in inst.scores.items():
        scores[i] = v
    return {"instance": ids[None].astype(np.float32), "class": classes[ids][None], "score": scores[ids][None]}


class DensePredictor:
    """The image side of a predictor. A subclass sets `method` (a MethodInference), `cfg` (InferConfig),
    `channels`, `normalizer` (a fitted StainNormalizer or None), `class_names`, `input_scale`, calls `_setup()`, and
    implements `_forward(batch)`: uint8 N×(channels + planes)×H×W -> {name: float32 N×C×H×W}, flips included."""

    def _setup(self) -> None:
        self.weight = gaussian_window(self.cfg.window)
        self.planes = self.method.image_plane_count  # per-image side input appended after the channels

    def _forward(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def prepare(self, image: np.ndarray, planes: np.ndarray | None = None) -> np.ndarray:
        """uint8 H×W×(channels + planes): the model's channels, then the method's per-image planes as constants,
        `planes` when given (a slide's, or a whole image's for its tiles), else computed from this image."""
        image = self._channels(image)
        if not self.planes:
            return image
        values = self.method.image_planes(image) if planes is None else planes
        constant = np.broadcast_to(np.round(np.clip(values, 0, 1) * 255).astype(np.uint8),
                                   (*image.shape[:2], self.planes))
        return np.concatenate([image, constant], axis=-1)

    def _channels(self, image: np.ndarray) -> np.ndarray:
        image = to_uint8(image if image.ndim == 3 else image[..., None])
        if self.normalizer is not None:
            image = self.normalizer.transform(image)
        return to_channels(image, self.channels)

    def image_planes_of(self, image: np.ndarray) -> np.ndarray | None:
        """The method's per-image values for a whole image (or a slide's thumbnail); None when it has none."""
        if not self.planes:
            return None
        return np.asarray(self.method.image_planes(self._channels(image)), np.float32)

    def dense(self, image: np.ndarray) -> dict[str, np.ndarray]:
        """Blended dense maps {name: C×H×W float32} of a whole H×W×C image."""
        h, w = image.shape[:2]
        win = self.cfg.window
        if not self.method.blendable and (h > win or w > win):
            # instance maps cannot be blended across windows: segment block by block, then give the maps
            return instance_maps(self.segment(image))
        image = self.prepare(image)
        if h <= win and w <= win:
            # one pass over the image padded to a multiple of 32 (the encoder's stride): no seams to blend
            ph, pw = -h % 32, -w % 32
            padded = np.pad(image, ((0, ph), (0, pw), (0, 0)), mode="reflect") if ph or pw else image
            out = self._forward(np.ascontiguousarray(padded.transpose(2, 0, 1))[None])
            return {k: v[0, :, :h, :w] for k, v in out.items()}
        return self._dense_region(self._pad_to_window(image), (0, h, 0, w))

    def dense_batch(self, images: list[np.ndarray], planes: np.ndarray | None = None) -> list[dict[str, np.ndarray]]:
        """Dense maps of equally sized images (slide tiles) in one forward pass: no windows and no blending, so the
        tile size sets the memory. Height and width must be multiples of 32 (the encoder's stride). `planes`: the
        whole image's or slide's side input (`image_planes_of`); without it each tile's own."""
        batch = np.stack([self.prepare(im, planes).transpose(2, 0, 1) for im in images])
        if batch.shape[2] % 32 or batch.shape[3] % 32:
            raise ValueError(f"tile size {batch.shape[2]}×{batch.shape[3]} is not a multiple of 32")
        out = self._forward(np.ascontiguousarray(batch))
        return [{k: v[j] for k, v in out.items()} for j in range(len(images))]

    def _pad_to_window(self, image: np.ndarray) -> np.ndarray:
        win = self.cfg.window
        ph, pw = max(win - image.shape[0], 0), max(win - image.shape[1], 0)
        return np.pad(image, ((0, ph), (0, pw), (0, 0)), mode="reflect") if ph or pw else image

    def _dense_region(self, image: np.ndarray, region: tuple[int, int, int, int]) -> dict[str, np.ndarray]:
        """Blended maps over `region` (r0, r1, c0, c1) of a prepared, window-padded image, from the windows of the
        image's global grid that touch the region: a region's maps equal the whole image's there, so blocks stitch
        without seams."""
        r0, r1, c0, c1 = region
        win, stride = self.cfg.window, max(self.cfg.window - self.cfg.overlap, 1)
        hh, ww = image.shape[:2]
        coords = [(r, c) for r in window_starts(hh, win, stride) if r < r1 and r + win > r0
                  for c in window_starts(ww, win, stride) if c < c1 and c + win > c0]
        acc: dict[str, np.ndarray] = {}
        norm = np.zeros((r1 - r0, c1 - c0), np.float32)
        for i in range(0, len(coords), self.cfg.batch_size):
            chunk = coords[i : i + self.cfg.batch_size]
            batch = np.stack([image[r : r + win, c : c + win].transpose(2, 0, 1) for r, c in chunk])
            out = self._forward(np.ascontiguousarray(batch))
            for j, (r, c) in enumerate(chunk):
                # the part of window (r, c) inside the region, in region and in window coordinates
                a0, a1, b0, b1 = max(r, r0), min(r + win, r1), max(c, c0), min(c + win, c1)
                wsl = (slice(a0 - r, a1 - r), slice(b0 - c, b1 - c))
                rsl = (slice(a0 - r0, a1 - r0), slice(b0 - c0, b1 - c0))
                weight = self.weight[wsl]
                for k, v in out.items():
                    if k not in acc:
                        acc[k] = np.zeros((v.shape[1], r1 - r0, c1 - c0), np.float32)
                    acc[k][(slice(None), *rsl)] += v[j][(slice(None), *wsl)] * weight
                norm[rsl] += weight
        return {k: v / norm for k, v in acc.items()}

    def single_pass(self, image: np.ndarray, mpp: float | None = None) -> bool:
        """Whether `segment` is `method.postprocess(dense(image))`: no resampling to the model's resolution and one
        forward pass (so a caller may run the two steps on different threads)."""
        scale = mpp / self.cfg.mpp if mpp and self.cfg.mpp else 1.0
        return abs(scale - 1.0) <= 0.05 and max(image.shape[:2]) <= self.cfg.window

    def segment(self, image: np.ndarray, mpp: float | None = None, progress=None) -> Instances:
        """Instances of a whole image; images larger than one window go tile by tile (`segment_tiles`).

        With the image's `mpp` and the model's (`infer.mpp`) both known and more than 5 % apart, the image is
        resampled to the model's resolution and the instances mapped back (nearest neighbour) to the image's pixels.
        `progress(done, total)`, when given, is called after each tile (once for a single pass)."""
        if self.single_pass(image, mpp):
            inst = self.method.postprocess(self.dense(image))
            if progress is not None:
                progress(1, 1)
            return inst
        scale = mpp / self.cfg.mpp if mpp and self.cfg.mpp else 1.0
        if abs(scale - 1.0) > 0.05:
            return self._segment_rescaled(image, scale, progress)
        from nucseg.postprocess.tiles import default_tile

        margin = self.cfg.block_margin
        h, w = image.shape[:2]
        return self.segment_tiles(image, default_tile(self.cfg.window, margin, w, h), margin, progress,
                                  self.image_planes_of(image))

    def _segment_rescaled(self, image: np.ndarray, scale: float, progress=None) -> Instances:
        import cv2

        h, w = image.shape[:2]
        size = (max(round(w * scale), 32), max(round(h * scale), 32))
        interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
        resized = cv2.resize(image, size, interpolation=interp)
        inst = self.segment(resized.reshape(size[1], size[0], *image.shape[2:]), progress=progress)
        rows = np.minimum(((np.arange(h) + 0.5) * size[1] / h).astype(np.intp), size[1] - 1)
        cols = np.minimum(((np.arange(w) + 0.5) * size[0] / w).astype(np.intp), size[0] - 1)
        labels = inst.labels[rows[:, None], cols[None, :]]
        kept = set(np.unique(labels).tolist())  # a nucleus smaller than a pixel of the image vanishes
        return Instances(labels, {i: c for i, c in inst.classes.items() if i in kept},
                         {i: s for i, s in inst.scores.items() if i in kept})

    def segment_tiles(self, image: np.ndarray, tile: int, margin: int, progress=None,
                      planes: np.ndarray | None = None) -> Instances:
        """Segment tile by tile with `margin` pixels of context (`nucseg.postprocess.tiles`: the mechanism slides use
        too). Each tile keeps the nuclei whose centroid lies in its core, so none is cut or counted twice when the
        margin is wider than a nucleus."""
        from nucseg.postprocess.tiles import owned, pad_to_tile, paste, plan_tiles

        h, w = image.shape[:2]
        _, tiles = plan_tiles(w, h, tile, margin)
        out = np.zeros((h, w), np.int32)
        classes: dict[int, int] = {}
        scores: dict[int, float] = {}
        next_id = 1
        for i in range(0, len(tiles), max(self.cfg.batch_size, 1)):
            chunk = tiles[i : i + max(self.cfg.batch_size, 1)]
            crops = [image[t.region[1] : t.region[3], t.region[0] : t.region[2]] for t in chunk]
            dense = self.dense_batch([pad_to_tile(c if c.ndim == 3 else c[..., None], tile) for c in crops], planes)
            for t, crop, maps in zip(chunk, crops, dense):
                ch, cw = crop.shape[:2]
                inst = self.method.postprocess({k: v[:, :ch, :cw] for k, v in maps.items()})
                local, old = owned(inst, t)
                x0, y0, x1, y1 = t.region
                new_ids, _ = paste(out[y0:y1, x0:x1], local, next_id)
                for old_id, new_id in zip(old.tolist(), new_ids.tolist()):
                    if new_id and old_id in inst.classes:
                        classes[new_id] = inst.classes[old_id]
                    if new_id and old_id in inst.scores:
                        scores[new_id] = inst.scores[old_id]
                next_id += int((new_ids > 0).sum())
            if progress is not None:
                progress(min(i + len(chunk), len(tiles)), len(tiles))
        return Instances(out, classes, scores)
