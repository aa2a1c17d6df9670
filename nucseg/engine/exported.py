"""Exported models, run with numpy and OpenVINO alone: no torch, no timm, no weights to load into a network.

`nucseg export SRC DST.pt --graph` writes, beside DST.pt, DST.xml + DST.bin (the network as an OpenVINO IR, its
weights in fp16 when the outputs hold, else fp32) and DST.json (the run's config with its tuned thresholds, the
digest of DST.pt, and what the check against torch measured). The check runs once, when the files are made
(`nucseg.engine.runtime.export_graph`); loading trusts a bundle whose digest matches its .pt. The shipped models
that export ship one (nucseg/weights/*.json), so `nucseg segment` and `nucseg.load_model(...).segment` start
without importing torch. A method whose inference half is not torch-free, or that cannot export (CFR-SAM's
per-prompt loops), has no bundle and runs on torch.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from nucseg.data.prepare import normalize_array
from nucseg.engine.dense import DensePredictor

BUNDLE_FORMAT = 1


def bundle_path(checkpoint: str | Path) -> Path:
    return Path(checkpoint).with_suffix(".json")


def file_digest(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def usable_bundle(checkpoint: str | Path) -> Path | None:
    """The bundle beside `checkpoint` when it exists, is of this format and was made from these exact bytes."""
    path = bundle_path(checkpoint)
    if not path.is_file() or not Path(checkpoint).is_file():
        return None
    try:
        info = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if info.get("format") != BUNDLE_FORMAT or info.get("checkpoint_sha256") != file_digest(checkpoint):
        return None
    if not (path.parent / info.get("graph", "")).is_file():
        return None
    return path


def openvino_importable() -> bool:
    try:
        import openvino  # noqa: F401
    except ImportError:
        return False
    return True


class OpenVINOGraph:
    """A compiled OpenVINO model over numpy: float32 N×C×H×W -> {output name: float32 array}.

    Large inputs get a model compiled for their exact shape: a static shape lets OpenVINO plan its buffers (at
    1024², peak memory 338 MiB against 501 MiB for the dynamic model, at the same speed); the two most recent
    shapes are kept. Small inputs (a folder of 256-320 px images in many sizes) share the dynamic model, since a
    compile per size would cost more than their inference."""

    _SHAPES_KEPT = 2
    _STATIC_FROM_PIXELS = 512 * 512

    def __init__(self, path: str | Path, threads: int | None = None, precision: str = "fp32"):
        import openvino as ov

        self.core = ov.Core()
        # bf16 when asked for (`--precision bf16`): OpenVINO's bf16 kernels on CPUs with AMX, 2.3-3.2x faster than
        # f32 per window on the shipped models (docs/design.md); f32 otherwise, and for every export check
        hint = "bf16" if precision == "bf16" else "f32"
        self.config = {"INFERENCE_PRECISION_HINT": hint, "PERFORMANCE_HINT": "LATENCY",
                       "INFERENCE_NUM_THREADS": int(threads or os.cpu_count() or 1)}
        self.model = self.core.read_model(str(path))
        self.keys = [o.get_any_name() for o in self.model.outputs]
        self.by_shape: OrderedDict = OrderedDict()
        self.dynamic = None
        self.path = Path(path)

    def compiled_for(self, shape: tuple[int, ...]):
        if shape[-1] * shape[-2] < self._STATIC_FROM_PIXELS:
            if self.dynamic is None:
                self.dynamic = self.core.compile_model(self.model, "CPU", self.config)
            return self.dynamic
        if shape in self.by_shape:
            self.by_shape.move_to_end(shape)
            return self.by_shape[shape]
        model = self.model.clone()
        model.reshape({model.inputs[0]: list(shape)})
        compiled = self.core.compile_model(model, "CPU", self.config)
        self.by_shape[shape] = compiled
        while len(self.by_shape) > self._SHAPES_KEPT:
            self.by_shape.popitem(last=False)
        return compiled

    def run(self, array: np.ndarray) -> dict[str, np.ndarray]:
        array = np.ascontiguousarray(array, dtype=np.float32)
        result = self.compiled_for(array.shape)(array)
        return {k: np.asarray(result[i]) for i, k in enumerate(self.keys)}


@dataclass
class ExportedPredictor(DensePredictor):
    """Dense prediction with an exported graph: the same windows, tiles, flips and side input as the torch
    Predictor, with numpy normalisation and the method's torch-free inference half (`MethodInference`)."""

    method: object
    cfg: object  # InferConfig
    graph: OpenVINOGraph
    channels: int = 3
    normalizer: object | None = None
    class_names: dict[int, str] = field(default_factory=dict)
    input_scale: str = "imagenet"
    runtime: str = "openvino"

    def __post_init__(self) -> None:
        self._setup()

    @classmethod
    def from_bundle(cls, path: str | Path, batch_size: int | None = None, tta: bool = False,
                    threads: int | None = None, precision: str | None = None) -> ExportedPredictor:
        """precision: fp32, bf16, or None / auto (fp32: bf16 is opt-in, see `cpu_precision`)."""
        from nucseg.data.prepare import stain_normalizer
        from nucseg.engine.config import config_from_yaml
        from nucseg.methods.inference import get_inference

        path = Path(path)
        info = json.loads(path.read_text())
        cfg = config_from_yaml(info["config"])
        model_cfg = dict(cfg.model)
        for key, value in model_cfg.items():  # the graph holds the trained weights: never read their files
            if isinstance(value, str) and (key.endswith("_weights") or key.endswith("_cache")):
                model_cfg[key] = None
        method = get_inference(cfg.method)(model_cfg)
        if batch_size:
            cfg.infer.batch_size = batch_size
        cfg.infer.tta = tta
        from nucseg.engine.device import cpu_precision

        graph = OpenVINOGraph(path.parent / info["graph"], threads, cpu_precision(precision))
        return cls(method, cfg.infer, graph, cfg.data.channels, stain_normalizer(cfg.data),
                   {int(k): str(v) for k, v in dict(cfg.data.class_names).items()}, cfg.data.input_scale)

    def _forward(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        c = self.channels
        x = normalize_array(batch[:, :c], self.input_scale)
        if self.planes:  # the side planes go in as [0, 1], after the image's channels
            x = np.concatenate([x, batch[:, c:].astype(np.float32) / 255.0], axis=1)
        flips = [(), (-1,), (-2,), (-2, -1)] if self.cfg.tta and self.method.blendable else [()]
        acc: dict[str, np.ndarray] = {}
        count: dict[str, int] = {}
        for dims in flips:  # the identity first: every map has at least that pass
            xi = np.ascontiguousarray(np.flip(x, dims)) if dims else x
            for k, v in self.graph.run(xi).items():
                v = self.method.unflip_array(k, v, dims) if dims else v
                if v is None:
                    continue
                acc[k] = acc[k] + v if k in acc else v.astype(np.float32, copy=True)
                count[k] = count.get(k, 0) + 1
        return {k: v / count[k] for k, v in acc.items()}
