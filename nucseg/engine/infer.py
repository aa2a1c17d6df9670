"""Inference with torch: the Predictor runs a method's torch model (or its OpenVINO export, compiled from torch)
under the windowing, tiling and TTA of `nucseg.engine.dense`."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn as nn

from nucseg.data.prepare import INPUT_SCALES, NORMALIZE_MEAN, NORMALIZE_STD  # noqa: F401 (imported from here)
from nucseg.engine.config import InferConfig
from nucseg.engine.dense import DensePredictor, gaussian_window, instance_maps, window_starts  # noqa: F401
from nucseg.engine.device import autocast
from nucseg.methods.base import Method


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


@dataclass
class Predictor(DensePredictor):
    """Dense prediction with a torch model (or its OpenVINO export, compiled from torch): training's validation,
    `nucseg segment` where torch is installed, GPUs, bf16."""

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

        self._setup()
        if self.prebuilt is not None:
            self._openvino, self.runtime = self.prebuilt, "openvino"
            return
        # the predictor owns placement: the model goes where the inputs will go (callers need not move it)
        self.model = self.model.to(self.device).to(memory_format=torch.channels_last).eval()
        if not self.method.blendable:  # instance maps: per-prompt loops, which no fixed-graph export follows
            self.runtime = "torch"
        if self.cfg.fold_batchnorm:
            from nucseg.models.fusion import fold_batchnorm

            # dense maps are compared with the unfolded model's on an example; instance maps from per-prompt loops
            # (CFR-SAM) cannot be compared so, and their folding is checked by the method's tests instead
            example = None
            if self.method.blendable:
                example = torch.rand(1, self.channels + self.planes, 64, 64, device=self.device)
            self.model = fold_batchnorm(self.model, example)
        self.runtime = resolve_runtime(self.runtime, self.device, self.precision)
        self._openvino = None
        if self.runtime == "openvino":
            self._openvino = openvino_or_none(self.method, self.model, self.channels + self.planes, self.runtime_key,
                                              self.precision)
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
        precision = resolve_precision(precision or "auto", device)  # inference's rule, not the training's
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
        precision = resolve_precision(precision or "auto", device)  # inference's rule, not the training's
        runtime = resolve_runtime(runtime or cfg.infer.runtime, device, precision) if method.blendable else "torch"
        key = None
        if runtime == "openvino":
            key = checkpoint_key(path, cfg.infer.fold_batchnorm, cfg.data.channels + method.image_plane_count)
            try:
                cached = OpenVINODense.cached(key, precision=precision)
            except Exception:  # an unreadable cache entry: drop it, so it is exported again below
                cache_path(key).unlink(missing_ok=True)
                cached = None
            if cached is not None:
                return cls.for_run(method, None, cfg, device, precision, runtime, key, cached)
        _, model, _ = build_from_checkpoint(path, ckpt)
        return cls.for_run(method, model, cfg, device, precision, runtime, key)

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

