"""The OpenVINO forward pass equals torch's, is cached, and falls back to torch when it cannot run."""

import numpy as np
import pytest
import torch

from nucseg.data.synthetic import synthetic_sample
from nucseg.engine import runtime as R
from nucseg.engine.config import InferConfig
from nucseg.engine.infer import Predictor
from nucseg.methods import get_method

pytestmark = pytest.mark.skipif(not R.openvino_available(), reason="openvino / onnx not installed")


def tiny_unet():
    method = get_method("unet")({"encoder": "test_efficientnet", "decoder_channels": [16, 16, 8, 8, 8]})
    torch.manual_seed(0)
    return method, method.build_model()


def test_openvino_equals_torch_and_is_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("NUCSEG_CACHE", str(tmp_path))
    method, model = tiny_unet()
    image = synthetic_sample(150, 12, seed=4).image  # not a multiple of 32: padded, as in real use
    cfg = InferConfig(window=128, overlap=32)
    fast = Predictor(method, model, cfg, runtime="openvino")
    assert fast.runtime == "openvino"
    ref = Predictor(method, model, cfg, runtime="torch")
    a, b = fast.dense(image), ref.dense(image)
    for k in b:
        assert np.abs(a[k] - b[k]).max() < 1e-4
    assert np.array_equal(fast.segment(image).labels, ref.segment(image).labels)
    Predictor(method, model, cfg, runtime="openvino")  # the same weights reuse the cached export
    assert len(list((tmp_path / "openvino").glob("*.onnx"))) == 1


def test_auto_picks_openvino_on_the_cpu_in_fp32_and_bf16():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert R.resolve_runtime("auto", cpu, "fp32") == "openvino"
    assert R.resolve_runtime("auto", cpu, "bf16") == "openvino"  # OpenVINO's bf16 kernels on CPUs with AMX
    assert R.resolve_runtime("auto", cuda, "bf16") == "torch"
    with pytest.raises(ValueError, match="runtime must be"):
        R.resolve_runtime("tensorrt", cpu, "fp32")


def test_falls_back_to_torch_with_a_warning(tmp_path, monkeypatch):
    monkeypatch.setenv("NUCSEG_CACHE", str(tmp_path))

    def broken(*args, **kwargs):
        raise RuntimeError("compile failed")

    monkeypatch.setattr(R, "OpenVINODense", broken)
    method, model = tiny_unet()
    with pytest.warns(UserWarning, match="using torch"):
        p = Predictor(method, model, InferConfig(window=64), runtime="openvino")
    assert p.runtime == "torch"
    assert p.segment(synthetic_sample(64, 5, seed=1).image).labels.shape == (64, 64)


def test_a_model_that_cannot_export_is_not_retried(tmp_path, monkeypatch):
    monkeypatch.setenv("NUCSEG_CACHE", str(tmp_path))
    calls = []

    def failing_export(*args, **kwargs):
        calls.append(1)
        raise RuntimeError("unsupported operator")

    monkeypatch.setattr(torch.onnx, "export", failing_export)
    method, model = tiny_unet()
    for _ in range(2):
        with pytest.warns(UserWarning, match="using torch"):
            assert Predictor(method, model, InferConfig(window=64), runtime="openvino").runtime == "torch"
    assert len(calls) == 1


def test_cached_export_needs_no_torch_model(tmp_path, monkeypatch):
    import dataclasses

    from nucseg.engine.checkpoints import save_checkpoint
    from nucseg.engine.config import RunConfig

    monkeypatch.setenv("NUCSEG_CACHE", str(tmp_path / "cache"))
    method, model = tiny_unet()
    cfg = RunConfig(method="unet", model=dataclasses.asdict(method.config))
    cfg.infer.window = 64
    ckpt = save_checkpoint(tmp_path / "m.pt", model, cfg)
    image = synthetic_sample(100, 8, seed=6).image
    first = Predictor.from_checkpoint(ckpt, precision="fp32")  # builds, exports, checks and caches
    assert first.runtime == "openvino" and first.model is not None
    second = Predictor.from_checkpoint(ckpt, precision="fp32")  # from the cache alone
    assert second.runtime == "openvino" and second.model is None
    assert np.array_equal(first.segment(image).labels, second.segment(image).labels)
    torch_run = Predictor.from_checkpoint(ckpt, precision="fp32", runtime="torch")
    assert np.array_equal(torch_run.segment(image).labels, second.segment(image).labels)


def test_a_corrupt_cache_entry_is_exported_again(tmp_path, monkeypatch):
    import dataclasses

    from nucseg.engine.checkpoints import save_checkpoint
    from nucseg.engine.config import RunConfig

    monkeypatch.setenv("NUCSEG_CACHE", str(tmp_path / "cache"))
    method, model = tiny_unet()
    cfg = RunConfig(method="unet", model=dataclasses.asdict(method.config))
    ckpt = save_checkpoint(tmp_path / "m.pt", model, cfg)
    Predictor.from_checkpoint(ckpt, precision="fp32")
    (entry,) = (tmp_path / "cache" / "openvino").glob("*.onnx")
    entry.write_bytes(b"not an onnx file")
    again = Predictor.from_checkpoint(ckpt, precision="fp32")
    assert again.runtime == "openvino" and again.model is not None  # rebuilt from the torch model
    assert entry.stat().st_size > 1000


class _TracedConstant(torch.nn.Module):
    """A model the ONNX tracer gets wrong: a tensor that went through numpy is a constant to the tracer, so the
    exported graph keeps the export input's mean where torch takes each input's own. Its OpenVINO outputs differ."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        frozen = torch.from_numpy(x.detach().cpu().numpy().copy()).mean()
        # zero in torch; in the export, 100 × (the export input's mean - this input's): far beyond the tolerance
        return {k: v + 100 * (frozen - x.mean()) for k, v in self.inner(x).items()}


def test_an_export_that_differs_from_torch_is_rejected(tmp_path, monkeypatch):
    """The check at load: outputs off by more than the tolerance reject the export (nothing enters the cache) and
    the predictor runs on torch, saying why."""
    monkeypatch.setenv("NUCSEG_CACHE", str(tmp_path))
    method, model = tiny_unet()
    wrong = _TracedConstant(model)
    with pytest.warns(UserWarning, match="OpenVINO output .* differs from torch by"):
        p = Predictor(method, wrong, InferConfig(window=64, fold_batchnorm=False), runtime="openvino")
    assert p.runtime == "torch" and p._openvino is None
    assert not list((tmp_path / "openvino").glob("*.onnx"))  # only a checked export is cached
    # the same model without the tracer trap exports, checks and is cached
    assert Predictor(method, model, InferConfig(window=64), runtime="openvino").runtime == "openvino"
    assert len(list((tmp_path / "openvino").glob("*.onnx"))) == 1


class _TracedSize(torch.nn.Module):
    """A model that turns its input's width into a Python number: the tracer keeps the export input's width, so
    the export agrees with torch at that size only (a fault of WeaveSeg's first ASR and LSGR)."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        width = max(int(x.shape[-1]), 1)
        return {k: v + 0.1 * (width - 64) for k, v in self.inner(x).items()}


def test_an_export_right_only_at_its_example_size_is_rejected(tmp_path, monkeypatch):
    monkeypatch.setenv("NUCSEG_CACHE", str(tmp_path))
    method, model = tiny_unet()
    with pytest.warns(UserWarning, match="differs from torch by .* on a 1×3×96×160 input"):
        p = Predictor(method, _TracedSize(model), InferConfig(window=64, fold_batchnorm=False), runtime="openvino")
    assert p.runtime == "torch"


@pytest.mark.parametrize("name", ["weaveseg", "frgnet"])
def test_methods_with_local_kernels_and_contours_run_on_openvino(name, tmp_path, monkeypatch):
    """WeaveSeg (ASR, LSGR, windowed attention) and FrGNet export; on an image of no multiple of 32 their maps
    equal torch's."""
    monkeypatch.setenv("NUCSEG_CACHE", str(tmp_path))
    tiny = {"weaveseg": {"encoder": "test_efficientnet", "channels": 16, "context_channels": 8, "dense_growth": 8,
                         "dense_layers": 2, "lsgr_groups": 2, "icw_iterations": 2},
            "frgnet": {"encoder": "test_efficientnet", "decoder_channels": [16, 16, 8, 8, 8], "order": 4}}[name]
    method = get_method(name)(tiny)
    torch.manual_seed(0)
    model = method.build_model()
    for p in model.parameters():  # off the zero starts (LSGR offsets, GARU), so every path carries signal
        if p.dim() > 1:
            torch.nn.init.normal_(p, 0, 0.05)
    image = synthetic_sample(150, 12, seed=4).image
    cfg = InferConfig(window=128, overlap=32)
    fast = Predictor(method, model, cfg, runtime="openvino")
    assert fast.runtime == "openvino"
    a, b = fast.dense(image), Predictor(method, model, cfg, runtime="torch").dense(image)
    for k in b:
        assert np.abs(a[k] - b[k]).max() < 1e-3, k


def test_the_shipped_graph_runs_f32_unless_bf16_is_asked_for(monkeypatch):
    """On a CPU with AMX too, `nucseg segment`'s default (the exported `he` graph, precision auto) compiles in f32;
    bf16 only when asked for (it cost `he` 0.006 PQ on the H&E protocol)."""
    from nucseg.engine import device
    from nucseg.engine.exported import ExportedPredictor
    from nucseg.engine.model import exported_bundle
    from nucseg.engine.segment import DEFAULT_MODEL

    monkeypatch.setattr(device, "cpu_has_amx", lambda: True)
    bundle = exported_bundle(DEFAULT_MODEL, runtime="openvino")
    assert bundle is not None
    hint = {p: ExportedPredictor.from_bundle(bundle, precision=p).graph.config["INFERENCE_PRECISION_HINT"]
            for p in (None, "auto", "fp32", "bf16")}
    assert hint == {None: "f32", "auto": "f32", "fp32": "f32", "bf16": "bf16"}
