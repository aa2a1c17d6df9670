"""Inference runtimes for the forward pass: torch (training, GPUs, the fallback) and OpenVINO on CPUs.

Why OpenVINO: on this project's 2-core AVX2 CPUs it ran the default U-Net's 1024² forward pass in 0.59 s against
0.82 s for torch eager in fp32 (idle machine; 1.56 against 3.68 s under load, where ONNX Runtime took 1.97 s),
with outputs equal to 2e-6 (docs/design.md has the A/B). The model is exported once through ONNX and checked against
torch on a probe input; only a checked export enters the cache (`$NUCSEG_CACHE`, default ~/.cache/nucseg), keyed by
the checkpoint file's bytes or the weights' hash. Large inputs run on a model compiled for their shape, small ones
on the dynamic model. Any failure (package missing, export or compile error, outputs that differ) falls back to
torch with a warning.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

RUNTIMES = ("auto", "torch", "openvino")
_TOLERANCE = 1e-3  # probabilities and normalised distances in [0, 1]


def openvino_available() -> bool:
    try:
        import onnx  # noqa: F401
        import openvino  # noqa: F401
    except ImportError:
        return False
    return True


def resolve_runtime(name: str, device: torch.device, precision: str) -> str:
    """auto: OpenVINO on the CPU when installed (in bf16 where `precision` asks for it), else torch.
    CUDA stays on torch."""
    if name not in RUNTIMES:
        raise ValueError(f"runtime must be one of {', '.join(RUNTIMES)}, not '{name}'")
    if name == "auto":
        use = device.type == "cpu" and precision in ("fp32", "bf16") and openvino_available()
        return "openvino" if use else "torch"
    if name == "openvino" and device.type != "cpu":
        raise ValueError("runtime 'openvino' runs on the CPU; use runtime torch on a GPU")
    return name


def cache_dir() -> Path:
    return Path(os.environ.get("NUCSEG_CACHE", Path.home() / ".cache" / "nucseg")) / "openvino"


class _DenseOutputs(nn.Module):
    """`method.predict_dense(model, x)` as a module with tuple outputs in a fixed key order (exportable)."""

    def __init__(self, method, model: nn.Module, keys: list[str]):
        super().__init__()
        self.method, self.model, self.keys = method, model, keys

    def forward(self, x: torch.Tensor):
        out = self.method.predict_dense(self.model, x)
        return tuple(out[k].float() for k in self.keys)


class OpenVINODense:
    """Callable: NCHW float tensor (already normalised) -> {name: tensor}, the same maps as `predict_dense`.

    Build it from a torch model (`OpenVINODense(method, model, channels, key)`: exported, compiled and checked
    against torch once, then cached under `key`), or from the cache alone (`OpenVINODense.cached(key)`),
    which needs neither the torch model nor timm: a cached file exists only once its check has passed."""

    def __init__(self, method, model: nn.Module, channels: int, key: str | None = None, threads: int | None = None,
                 precision: str = "fp32"):
        model = model.eval()
        generator = torch.Generator().manual_seed(0)
        # the export's example size and another, not square: a size traced into the graph as a number shows
        probes = [torch.rand(1, channels, 64, 64, generator=generator),
                  torch.rand(1, channels, 96, 160, generator=generator)]
        with torch.no_grad():
            references = [method.predict_dense(model, p) for p in probes]
        keys = sorted(references[0])
        wrapped = _DenseOutputs(method, model, keys).eval()
        path = cache_path(key or weights_key(method, model, channels))
        if not path.is_file():
            export_checked(wrapped, torch.rand(1, channels, 64, 64), path, probes, references, threads,
                           input_names=["image"], output_names=keys, dynamic_axes={"image": {0: "n", 2: "h", 3: "w"}})
        self._compile(path, threads, precision)

    @classmethod
    def cached(cls, key: str, threads: int | None = None, precision: str = "fp32") -> OpenVINODense | None:
        path = cache_path(key)
        if not path.is_file():
            return None
        self = cls.__new__(cls)
        self._compile(path, threads, precision)
        return self

    def _compile(self, path: Path, threads: int | None, precision: str) -> None:
        from nucseg.engine.exported import (
            OpenVINOGraph,  # shape-specific compiles, kept per shape (see there)
        )

        self.graph = OpenVINOGraph(path, threads or torch.get_num_threads(), precision)
        self.onnx_path = path

    def __call__(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        out = self.graph.run(images.detach().cpu().float().numpy())
        return {k: torch.from_numpy(v) for k, v in out.items()}


def export_checked(module: nn.Module, example: torch.Tensor, path: Path, probes: list[torch.Tensor],
                   references: list[dict[str, torch.Tensor]], threads: int | None = None, *, input_names: list[str],
                   output_names: list[str], dynamic_axes: dict, tolerance: float = _TOLERANCE,
                   relative: bool = False) -> None:
    """Export `module` (tuple outputs named `output_names`) to ONNX at `path`, but only once OpenVINO's outputs on
    each probe equal `references` (a dict per probe, keyed like the outputs) within `tolerance` (of each reference's
    largest magnitude when `relative`). Atomic: a failed or unchecked export never enters the cache; one that cannot
    export writes `path.failed`, so it is not retried at every start."""
    from nucseg.engine.exported import OpenVINOGraph

    failed = path.with_suffix(".failed")
    if failed.is_file():
        raise RuntimeError(f"export failed before ({failed}): {failed.read_text().strip()}")
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.onnx")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(module, (example,), str(tmp), input_names=input_names, output_names=output_names,
                              dynamic_axes=dynamic_axes, opset_version=17, dynamo=False)
    except Exception as exc:
        failed.write_text(f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}\n")
        tmp.unlink(missing_ok=True)
        raise
    try:
        graph = OpenVINOGraph(tmp, threads or torch.get_num_threads())
        for probe, reference in zip(probes, references):
            got = graph.run(probe.detach().cpu().float().numpy())
            for k, ref in reference.items():
                ref = ref.detach().float().cpu().numpy()
                diff = float(np.abs(got[k] - ref).max())
                allowed = tolerance * (float(np.abs(ref).max()) if relative else 1.0)
                if not diff <= allowed:
                    size = "×".join(str(d) for d in probe.shape)
                    raise RuntimeError(f"OpenVINO output '{k}' differs from torch by {diff:.2e} on a {size} input "
                                       f"(tolerance {allowed:.2e})")
    except Exception:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)  # atomic for concurrent runs


def cache_path(key: str) -> Path:
    folder = cache_dir()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        folder = Path(tempfile.gettempdir()) / "nucseg-openvino"
        folder.mkdir(parents=True, exist_ok=True)
    return folder / f"{key}.onnx"


def runtime_versions() -> str:
    """torch, OpenVINO and the ONNX opset: part of every export cache key."""
    import openvino as ov

    return f"{torch.__version__}|{ov.__version__}|opset17"


def weights_key(method, model: nn.Module, channels: int) -> str:
    """Cache key of a model in memory: its weights, method config, channels and the runtime versions."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    digest.update(f"{method.name}|{method.config}|{channels}|{runtime_versions()}".encode())
    return digest.hexdigest()[:24]


def checkpoint_key(path: str | Path, fold_batchnorm: bool, channels: int) -> str:
    """Cache key of a checkpoint file (its bytes, which include the config and thresholds), without loading it."""
    digest = hashlib.sha256(Path(path).read_bytes())
    digest.update(f"ckpt|{fold_batchnorm}|{channels}|{runtime_versions()}".encode())
    return digest.hexdigest()[:24]


def openvino_or_none(method, model: nn.Module, channels: int, key: str | None = None,
                     precision: str = "fp32") -> OpenVINODense | None:
    """An OpenVINO forward for `model`, or None (with a warning saying why) so the caller stays on torch."""
    try:
        return OpenVINODense(method, model, channels, key, precision=precision)
    except Exception as exc:  # any failure of an optional accelerator must not stop segmentation
        warnings.warn(f"OpenVINO runtime unavailable, using torch: {type(exc).__name__}: {exc}", stacklevel=2)
        return None


def export_graph(checkpoint: str | Path, fp16: bool = False) -> Path:
    """Write `checkpoint`'s exported bundle beside it (`nucseg.engine.exported`): the network as an OpenVINO IR
    (.xml + .bin) and a .json with the run's config and the check's result. Returns the .json's path. Raises
    ValueError for a method that cannot run without torch.

    Weights are fp32 unless `fp16` (then fp16 if every map on the probe inputs stays within the tolerance of
    torch's, else fp32). Measured on the shipped H&E U-Net: the fp32 graph's maps are within 4e-6 of torch's and
    its label maps equal torch's on the sample images; the fp16 graph's maps are within 1.1e-4, yet 835 of the
    81,920 pixels of one sample's label map change (OpenVINO folds BatchNorm into the weights before rounding them),
    so the shipped bundles are fp32."""
    import json

    import openvino as ov

    from nucseg.engine.checkpoints import build_from_checkpoint, load_checkpoint
    from nucseg.engine.exported import BUNDLE_FORMAT, OpenVINOGraph, bundle_path, file_digest
    from nucseg.methods.inference import get_inference

    checkpoint = Path(checkpoint)
    ckpt = load_checkpoint(checkpoint)
    method, model, cfg = build_from_checkpoint(checkpoint, ckpt)
    if not method.blendable:
        raise ValueError(f"{checkpoint}: method '{cfg.method}' gives instance maps from per-prompt loops; it runs on "
                         "torch and has no exported graph")
    get_inference(cfg.method)  # its post-processing must load without torch
    channels = cfg.data.channels + method.image_plane_count
    # BatchNorm is left unfolded: a checkpoint's weights are fp16 values, so the fp16 graph stores them exactly,
    # where folding would round the products; OpenVINO folds BatchNorm itself when it compiles, in fp32
    generator = torch.Generator().manual_seed(0)
    probes = [torch.rand(1, channels, 64, 64, generator=generator),
              torch.rand(1, channels, 96, 160, generator=generator),
              torch.rand(2, channels, 256, 256, generator=generator)]
    with torch.no_grad():
        references = [{k: v.float().numpy() for k, v in method.predict_dense(model, p).items()} for p in probes]
    keys = sorted(references[0])
    wrapped = _DenseOutputs(method, model, keys).eval()
    json_path = bundle_path(checkpoint)
    xml = json_path.with_suffix(".xml")
    tmp = xml.with_name(f".{xml.stem}.{os.getpid()}")
    onnx_tmp = Path(f"{tmp}.onnx")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(wrapped, (probes[0],), str(onnx_tmp), input_names=["image"], output_names=keys,
                              dynamic_axes={"image": {0: "n", 2: "h", 3: "w"}}, opset_version=17, dynamo=False)
        converted = ov.convert_model(str(onnx_tmp))
        diffs = {}
        for half in ((True, False) if fp16 else (False,)):
            ov.save_model(converted, f"{tmp}.xml", compress_to_fp16=half)
            graph = OpenVINOGraph(f"{tmp}.xml")
            diff = 0.0
            for probe, reference in zip(probes, references):
                got = graph.run(probe.numpy())
                diff = max(diff, *(float(np.abs(got[k] - reference[k]).max()) for k in keys))
            diffs["fp16" if half else "fp32"] = diff
            if diff <= _TOLERANCE:
                break
        else:
            raise RuntimeError(f"{checkpoint}: the exported graph's maps differ from torch's by {diff:.2e} "
                               f"(tolerance {_TOLERANCE})")
        os.replace(f"{tmp}.bin", xml.with_suffix(".bin"))
        os.replace(f"{tmp}.xml", xml)
    finally:
        for leftover in (onnx_tmp, Path(f"{tmp}.xml"), Path(f"{tmp}.bin")):
            leftover.unlink(missing_ok=True)
    info = {"format": BUNDLE_FORMAT, "method": cfg.method, "graph": xml.name, "weights": "fp16" if half else "fp32",
            "checkpoint": checkpoint.name, "checkpoint_sha256": file_digest(checkpoint), "config": ckpt["config"],
            "check": {"tolerance": _TOLERANCE, "max_abs_diff": diffs, "probes": [list(p.shape) for p in probes],
                      "versions": runtime_versions()}}
    from nucseg.io.images import write_text

    return write_text(json_path, json.dumps(info, indent=1))
