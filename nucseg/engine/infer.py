"""Inference for every method: sliding windows with Gaussian blending for dense outputs, flip TTA, and block tiling
with margins for large images (an instance is kept by the block whose core holds its centroid)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn as nn

from nucseg.data.prepare import INPUT_SCALES, NORMALIZE_MEAN, NORMALIZE_STD, to_channels, to_uint8
from nucseg.engine.config import InferConfig
from nucseg.engine.device import autocast
from nucseg.methods.base import Method
from nucseg.structures import Instances


def normalize(images: torch.Tensor, scale: str = "imagenet") -> torch.Tensor:
    """uint8 N×C×H×W -> float: `imagenet`, ImageNet statistics for RGB (the encoders' pretraining), fixed ones for
    greyscale; `unit`, [0, 1] (`data.input_scale`, as WeaveSeg's paper feeds its network)."""
    if scale == "unit":
        return images.float() / 255.0
    if scale != "imagenet":
        raise ValueError(f"input scale must be one of {', '.join(INPUT_SCALES)}, not '{scale}'")
    c = images.shape[1]
    mean = torch.tensor(NORMALIZE_MEAN[c], device=images.device).view(1, c, 1, 1)
    std = torch.tensor(NORMALIZE_STD[c], device=images.device).view(1, c, 1, 1)
    return (images.float() / 255.0 - mean) / std


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


@dataclass
class Predictor:
    method: Method
    model: nn.Module
    cfg: InferConfig
    channels: int = 3
    device: torch.device = torch.device("cpu")
    precision: str = "fp32"

    normalizer: object | None = None  # a fitted StainNormalizer when the model was trained with one
    runtime: str = "torch"  # torch | openvino | auto (see nucseg.engine.runtime); for_run takes infer.runtime
    runtime_key: str | None = None  # cache key of the OpenVINO export (default: a hash of the weights)
    prebuilt: object | None = None  # a compiled OpenVINODense from the cache: then `model` may be None
    class_names: dict[int, str] = field(default_factory=dict)  # the training sets' nucleus classes, for outputs
    input_scale: str = "imagenet"  # how the model was fed in training (`data.input_scale`)

    def __post_init__(self) -> None:
        from nucseg.engine.runtime import openvino_or_none, resolve_runtime

        self.weight = gaussian_window(self.cfg.window)
        self.planes = self.method.image_plane_count  # per-image side input appended after the channels
        if self.prebuilt is not None:
            self._openvino, self.runtime = self.prebuilt, "openvino"
            return
        # the predictor owns placement: the model goes where the inputs will go (callers need not move it)
        self.model = self.model.to(self.device).to(memory_format=torch.channels_last).eval()
        if not self.method.blendable:  # instance maps: per-prompt loops no fixed-graph export or fold follows
            self.runtime = "torch"
        if self.cfg.fold_batchnorm and self.method.blendable:
            from nucseg.models.fusion import fold_batchnorm

            example = torch.rand(1, self.channels + self.planes, 64, 64, device=self.device)
            self.model = fold_batchnorm(self.model, example)
        self.runtime = resolve_runtime(self.runtime, self.device, self.precision)
        self._openvino = None
        if self.runtime == "openvino":
            self._openvino = openvino_or_none(self.method, self.model, self.channels + self.planes, self.runtime_key)
        if self._openvino is None:
            self.runtime = "torch"

    @classmethod
    def for_run(cls, method: Method, model: nn.Module | None, cfg, device: torch.device | None = None,
                precision: str | None = None, runtime: str | None = None, runtime_key: str | None = None,
                prebuilt=None) -> Predictor:
        """A predictor with the run's window, channels, runtime and stain normalisation (refitted from its
        reference)."""
        from nucseg.data.prepare import stain_normalizer
        from nucseg.engine.device import default_device, resolve_precision

        device = device or default_device()
        precision = resolve_precision(precision or cfg.train.precision, device)
        return cls(method, model, cfg.infer, cfg.data.channels, device, precision, stain_normalizer(cfg.data),
                   runtime or cfg.infer.runtime, runtime_key, prebuilt,
                   {int(k): str(v) for k, v in dict(cfg.data.class_names).items()}, cfg.data.input_scale)

    @classmethod
    def from_checkpoint(cls, path, device: torch.device | None = None, precision: str | None = None,
                        runtime: str | None = None, batch_size: int | None = None, tta: bool = False) -> Predictor:
        """A predictor for a checkpoint file. With the OpenVINO runtime and this file's checked export already in
        the cache, the torch model is never built (no timm import, no weight loading, no BatchNorm folding):
        start-up drops by seconds."""
        from nucseg.engine.checkpoints import build_from_checkpoint, load_checkpoint, method_from_checkpoint
        from nucseg.engine.device import default_device, resolve_precision
        from nucseg.engine.runtime import OpenVINODense, cache_path, checkpoint_key, resolve_runtime

        device = device or default_device()
        ckpt = load_checkpoint(path)
        method, cfg = method_from_checkpoint(path, ckpt)
        if batch_size:
            cfg.infer.batch_size = batch_size
        cfg.infer.tta = tta
        precision = resolve_precision(precision or cfg.train.precision, device)
        runtime = resolve_runtime(runtime or cfg.infer.runtime, device, precision) if method.blendable else "torch"
        key = None
        if runtime == "openvino":
            key = checkpoint_key(path, cfg.infer.fold_batchnorm, cfg.data.channels + method.image_plane_count)
            try:
                cached = OpenVINODense.cached(key)
            except Exception:  # an unreadable cache entry: drop it, so it is exported again below
                cache_path(key).unlink(missing_ok=True)
                cached = None
            if cached is not None:
                return cls.for_run(method, None, cfg, device, precision, runtime, key, cached)
        _, model, _ = build_from_checkpoint(path, ckpt)
        return cls.for_run(method, model, cfg, device, precision, runtime, key)

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

    @torch.no_grad()
    def _forward(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        x = torch.from_numpy(batch).to(self.device)
        if self.planes:  # the image's channels are normalised; the side planes go in as [0, 1]
            c = self.channels
            x = torch.cat([normalize(x[:, :c], self.input_scale), x[:, c:].float() / 255.0], 1)
        else:
            x = normalize(x, self.input_scale)
        if self._openvino is None:
            x = x.contiguous(memory_format=torch.channels_last)
        flips = [(), (-1,), (-2,), (-2, -1)] if self.cfg.tta and self.method.blendable else [()]
        acc: dict[str, torch.Tensor] = {}
        count: dict[str, int] = {}
        with autocast(self.device, self.precision):
            for dims in flips:  # the identity first: every map has at least that pass
                xi = torch.flip(x, dims) if dims else x
                if self._openvino is not None:
                    out = self._openvino(xi)
                else:
                    out = self.method.predict_dense(self.model, xi)
                for k, v in out.items():
                    v = self.method.unflip(k, v.float(), dims) if dims else v.float()
                    if v is None:  # a map flips cannot be averaged for (the method says)
                        continue
                    acc[k] = acc[k] + v if k in acc else v
                    count[k] = count.get(k, 0) + 1
        return {k: (v / count[k]).cpu().numpy() for k, v in acc.items()}

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
