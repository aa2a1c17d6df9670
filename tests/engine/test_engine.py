"""The engine end to end on synthetic data with the tiny smoke config."""

import csv
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from nucseg.engine.config import load_config

ROOT = Path(__file__).resolve().parents[2]
SMOKE = ROOT / "configs/unet/smoke.yaml"


def smoke_cfg(synthetic_set, *extra):
    return load_config(SMOKE, [f"data.sets=[{{path: '{synthetic_set}'}}]", *extra])


def losses(run_dir):
    with open(run_dir / "train.csv") as f:
        return [float(r["total"]) for r in csv.DictReader(f)]


def test_training_lowers_loss_and_writes_run_dir(trained_run):
    out, result = trained_run
    assert {"config.yaml", "last.ckpt", "best.ckpt", "train.csv", "val.csv"} <= {p.name for p in out.iterdir()}
    values = losses(out)
    assert values[-1] < values[0] * 0.8
    ckpt = torch.load(out / "last.ckpt", weights_only=True)
    assert ckpt["step"] == 30 and "nucseg 0.1.0" in (out / "config.yaml").read_text()
    # each row names the precision it trained in (the fixture pins fp32; `auto` would depend on the CPU)
    with open(out / "train.csv") as f:
        assert {r["precision"] for r in csv.DictReader(f)} == {"fp32"}


def test_resume_continues_where_it_stopped(synthetic_set, tmp_path):
    from nucseg.engine.train import train

    cfg = smoke_cfg(synthetic_set, "train.steps=6", "train.val_every=0", "train.log_every=1")
    train(cfg, tmp_path / "full", progress=False)
    cfg_half = smoke_cfg(synthetic_set, "train.steps=3", "train.val_every=0", "train.log_every=1")
    train(cfg_half, tmp_path / "half", progress=False)
    log = tmp_path / "half/train.csv"
    rows = log.read_text().splitlines()
    # a run killed after its last checkpoint (step 3) had logged steps 4 and 5: the resumed run logs them again
    log.write_text("\n".join([*rows, rows[-1].replace("3,", "4,", 1), rows[-1].replace("3,", "5,", 1)]) + "\n")
    train(cfg, tmp_path / "half", resume=True, progress=False)
    assert torch.load(tmp_path / "half/last.ckpt", weights_only=True)["step"] == 6
    steps = [int(line.split(",")[0]) for line in log.read_text().splitlines()[1:]]
    assert steps == [1, 2, 3, 4, 5, 6]
    assert np.allclose(losses(tmp_path / "full"), losses(tmp_path / "half"), rtol=1e-4)


def test_training_resolves_precision_by_the_training_rule_and_logs_it(synthetic_set, tmp_path, monkeypatch):
    """train asks for the training rule (bf16 on AMX CPUs; inference's is fp32) and each train.csv row names the
    precision it got, not the config's `auto`."""
    from nucseg.engine import train as train_module

    asked = []
    monkeypatch.setattr(train_module, "resolve_precision",
                        lambda precision, device, training=False: asked.append((precision, training)) or "fp32")
    train_module.train(smoke_cfg(synthetic_set, "train.steps=2", "train.val_every=0", "train.log_every=1"),
                       tmp_path / "run", progress=False)
    assert asked == [("auto", True)]
    with open(tmp_path / "run/train.csv") as f:
        assert [r["precision"] for r in csv.DictReader(f)] == ["fp32", "fp32"]


def test_bad_config_key_is_an_error(tmp_path):
    with pytest.raises(Exception, match="nonsense"):
        load_config(SMOKE, ["train.nonsense=1"])
    with pytest.raises(Exception, match="bogus"):
        load_config(SMOKE, ["model.bogus=1"])


def test_two_process_ddp(synthetic_set, tmp_path):
    """Two ranks draw different patches, so their weights agree after training only if DDP averaged the
    gradients: each rank saves its own parameters and the two must be equal (and have moved from the start)."""
    code = ("import sys, torch; import torch.distributed as dist; from nucseg.engine.config import load_config; "
            "from nucseg.engine.train import train; from nucseg.methods.unet.method import UNetMethod\n"
            "built = []; build = UNetMethod.build_model\n"
            "def keep(self):\n"
            "    m = build(self); built.append((m, {k: v.detach().clone() for k, v in m.named_parameters()})); return m\n"
            "UNetMethod.build_model = keep\n"
            f"cfg = load_config({str(SMOKE)!r}, [\"data.sets=[{{path: '{synthetic_set}'}}]\", 'train.steps=3', "
            "'train.val_every=0', 'train.log_every=1', 'train.device=cpu'])\n"
            "train(cfg, sys.argv[1], progress=False)\n"
            "rank = int(__import__('os').environ['RANK']); model, init = built[-1]\n"
            "torch.save({'final': {k: v.detach().clone() for k, v in model.named_parameters()}, 'init': init}, "
            "f'{sys.argv[1]}/rank{rank}.pt')\n")
    script = tmp_path / "ddp.py"
    script.write_text(code)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29533",
                           str(script), str(tmp_path / "run")], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert torch.load(tmp_path / "run/last.ckpt", weights_only=True)["step"] == 3
    rank0 = torch.load(tmp_path / "run/rank0.pt", weights_only=True)
    rank1 = torch.load(tmp_path / "run/rank1.pt", weights_only=True)
    saved = torch.load(tmp_path / "run/last.ckpt", weights_only=True)["model"]
    assert rank0["final"].keys() == rank1["final"].keys() and len(rank0["final"]) > 10
    for name, value in rank0["final"].items():
        torch.testing.assert_close(rank1["final"][name], value, rtol=0, atol=1e-6, msg=name)  # in step
        torch.testing.assert_close(saved[name], value, rtol=0, atol=0, msg=name)  # the checkpoint is that state
    moved = max(float((rank0["final"][k] - rank0["init"][k]).abs().max()) for k in rank0["final"])
    assert moved > 1e-3  # and training moved it: equal because synchronised, not because nothing stepped


def test_tiled_equals_whole(trained_run):
    """One forward pass over the whole image (a window larger than it) against 128² tiles with 32 px margins:
    ownership by centroid keeps every nucleus once. Not pixel-equal: the smoke model's maps depend on context
    beyond a 32 px margin, so near a seam a nucleus can differ (measured: 1 of 33, AJI 0.957); a tiler that
    doubled or cut nuclei at seams fails both bounds."""
    import dataclasses

    from nucseg.data.synthetic import synthetic_sample
    from nucseg.engine.checkpoints import build_from_checkpoint
    from nucseg.engine.infer import Predictor
    from nucseg.metrics import aji, compute_overlap, pq

    method, model, cfg = build_from_checkpoint(trained_run[0])
    image = synthetic_sample(200, 60, radius=(5, 9), seed=11).image
    whole_predictor = Predictor(method, model, dataclasses.replace(cfg.infer, window=256), runtime="torch")
    assert whole_predictor.single_pass(image)  # truly one pass, not a tiling of its own
    whole = whole_predictor.segment(image).labels
    tiled = Predictor(method, model, cfg.infer, runtime="torch").segment_tiles(image, tile=128, margin=32).labels
    stats = pq(compute_overlap(whole, tiled))
    assert stats["tp"] > 25
    assert aji(whole, tiled) >= 0.93
    assert stats["fp"] + stats["fn"] <= 2  # at most a nucleus on a seam differs


def test_segment_cli_end_to_end(trained_run, tmp_path, capsys):
    """Every output per image, the bad image reported by name, labels that find the nuclei, and `--mpp` turning
    the CSV's and GeoJSON's measurements into µm (area in µm² = pixels × mpp²)."""
    import json

    from nucseg.cli import main
    from nucseg.data.synthetic import synthetic_sample
    from nucseg.io.images import read_label, write_image
    from nucseg.metrics import aji

    sample = synthetic_sample(96, 12, seed=5)
    write_image(tmp_path / "in" / "a.png", sample.image)
    write_image(tmp_path / "in" / "grey16.tif", (synthetic_sample(80, 8, style="fluorescence").image[..., :1]
                                                 .astype(np.uint16) * 200))
    (tmp_path / "in" / "broken.png").write_bytes(b"nope")
    mpp = 0.25
    rc = main(["segment", str(tmp_path / "in"), "--model", str(trained_run[0]), "--out", str(tmp_path / "out"),
               "--mpp", str(mpp)])
    captured = capsys.readouterr()
    assert rc == 1 and "broken.png" in captured.err  # the bad image fails, the others are written
    for kind, ext in (("labels", "png"), ("overlays", "png"), ("geojson", "geojson"), ("csv", "csv")):
        assert (tmp_path / "out" / kind / f"a.{ext}").is_file()
        assert (tmp_path / "out" / kind / f"grey16.{ext}").is_file()
    labels = read_label(tmp_path / "out/labels/a.png")
    assert labels.shape == (96, 96) and labels.max() >= 5 and aji(sample.instances, labels) > 0.2  # 30 steps
    with open(tmp_path / "out/csv/a.csv") as f:
        rows = list(csv.DictReader(f))
    header = list(rows[0])
    assert header[:5] == ["id", "centroid_x", "centroid_y", "area", "perimeter"] and "mean_intensity_0" in header
    assert len(rows) == len(np.unique(labels)) - 1
    for r in rows:
        pixels = int((labels == int(r["id"])).sum())
        assert float(r["area"]) == pytest.approx(pixels * mpp**2, rel=1e-6)  # µm², not pixels
        assert float(r["centroid_x"]) == pytest.approx(np.nonzero(labels == int(r["id"]))[1].mean() * mpp, abs=1e-3)
    features = json.loads((tmp_path / "out/geojson/a.geojson").read_text())["features"]
    assert len(features) == len(rows)
    measured = {int(f["properties"]["name"].split()[-1]): f["properties"]["measurements"] for f in features}
    for r in rows:  # the GeoJSON carries the same µm values (geometry stays in pixels, QuPath's convention)
        assert measured[int(r["id"])]["area"] == pytest.approx(float(r["area"]), abs=1e-4)
    # without --mpp the same columns are in pixels
    assert main(["segment", str(tmp_path / "in" / "a.png"), "--model", str(trained_run[0]), "--out",
                 str(tmp_path / "px"), "--outputs", "csv"]) == 0
    with open(tmp_path / "px/csv/a.csv") as f:
        px = list(csv.DictReader(f))
    assert float(px[0]["area"]) == pytest.approx(float(rows[0]["area"]) / mpp**2, rel=1e-6)


def test_postprocessing_in_a_process_writes_what_the_thread_writes(trained_run, tmp_path):
    """`postprocess_in="process"` (a spawned worker, the A/B lever) writes byte-identical outputs, an unreadable
    image among them is still reported by name, and an unknown worker is refused."""
    from nucseg.data.synthetic import synthetic_sample
    from nucseg.engine.segment import segment_files
    from nucseg.io.images import write_image

    for seed in (3, 4):
        write_image(tmp_path / "in" / f"s{seed}.png", synthetic_sample(96, 12, seed=seed).image)
    (tmp_path / "in" / "broken.png").write_bytes(b"nope")
    reports = {w: segment_files([str(tmp_path / "in")], tmp_path / w, str(trained_run[0]), progress=False,
                                precision="fp32", postprocess_in=w) for w in ("thread", "process")}
    for w, report in reports.items():
        assert [Path(p).name for p, _ in report.failed] == ["broken.png"] and len(report.rows) == 2, w
    written = sorted(p.relative_to(tmp_path / "thread") for p in (tmp_path / "thread").rglob("*") if p.is_file())
    assert len(written) == 8
    for rel in written:
        assert (tmp_path / "thread" / rel).read_bytes() == (tmp_path / "process" / rel).read_bytes(), rel
    with pytest.raises(ValueError, match="postprocess_in"):
        segment_files([str(tmp_path / "in")], tmp_path / "x", str(trained_run[0]), postprocess_in="gpu")


def test_segment_unknown_model(tmp_path, capsys):
    """A model that does not exist is an error naming it, even with a good image to segment, and writes nothing."""
    from nucseg.cli import main
    from nucseg.data.synthetic import synthetic_sample
    from nucseg.io.images import write_image

    write_image(tmp_path / "in" / "a.png", synthetic_sample(64, 6, seed=1).image)
    out = tmp_path / "out"
    assert main(["segment", str(tmp_path / "in"), "--model", str(tmp_path / "nope.ckpt"), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "nope.ckpt" in err and "no such model" in err
    assert not out.exists()
    assert main(["segment", str(tmp_path / "in"), "--model", "he", "--out", str(out), "--outputs", "labels"]) == 0


def test_tune_and_export(trained_run, tmp_path):
    from nucseg.cli import main
    from nucseg.engine.checkpoints import load_checkpoint

    run = tmp_path / "run"
    import shutil

    shutil.copytree(trained_run[0], run)
    from nucseg.engine.checkpoints import build_from_checkpoint
    from nucseg.engine.tune import tune_postprocess

    result = tune_postprocess(run, log=lambda *_: None)
    method, _, _ = build_from_checkpoint(run)  # a run directory now resolves to tuned.ckpt
    assert {k: getattr(method.config, k) for k in result["params"]} == result["params"]
    tuned = load_checkpoint(run / "tuned.ckpt")
    assert tuned["tuning"]["after"] == pytest.approx(result["after"])
    assert main(["export", str(run), str(tmp_path / "model.pt")]) == 0
    exported = load_checkpoint(tmp_path / "model.pt")
    assert "optimizer" not in exported and exported["config"] == tuned["config"]
    assert main(["export", str(run), str(tmp_path / "m2.pt"), "--set", "infer.mpp=0.25"]) == 0
    assert build_from_checkpoint(tmp_path / "m2.pt")[2].infer.mpp == 0.25
    # post-processing keys may change at export (as a predict-time threshold would), architecture keys may not
    assert main(["export", str(run), str(tmp_path / "m3.pt"), "--set", "model.min_area=3"]) == 0
    assert build_from_checkpoint(tmp_path / "m3.pt")[0].config.min_area == 3
    assert main(["export", str(run), str(tmp_path / "m4.pt"), "--set", "model.in_channels=4"]) != 0
    assert not (tmp_path / "m4.pt").exists()


def test_learning_rate_schedules():
    from nucseg.engine.config import OptimConfig
    from nucseg.engine.train import lr_at

    step = OptimConfig(name="adam", lr=1e-4, schedule="step", step_size=25, gamma=0.1, warmup_steps=0)
    assert [lr_at(s, step, 100) for s in (0, 24, 25, 99)] == pytest.approx([1e-4, 1e-4, 1e-5, 1e-7])
    multi = OptimConfig(lr=1e-3, schedule="multistep", milestones=[10, 20], warmup_steps=5)
    assert lr_at(0, multi, 30) == pytest.approx(2e-4) and lr_at(15, multi, 30) == pytest.approx(1e-4)
    cos = OptimConfig(lr=1.0, schedule="cosine", warmup_steps=0, min_lr_ratio=0.0)
    assert lr_at(0, cos, 100) == pytest.approx(1.0) and lr_at(50, cos, 100) == pytest.approx(0.5)


def test_a_model_fed_unit_scaled_pixels_is_fed_them_at_inference(tmp_path):
    """`data.input_scale: unit` (WeaveSeg's paper: [0, 1]) reaches training and, through the checkpoint's config,
    every predictor; an unknown scale fails before training starts."""
    import torch

    from nucseg.engine.checkpoints import build_from_checkpoint
    from nucseg.engine.config import load_config
    from nucseg.engine.infer import Predictor, normalize
    from nucseg.engine.train import train

    cfg = load_config("configs/unet/smoke.yaml", ["train.steps=2", "train.val_every=0", "data.input_scale=unit"])
    train(cfg, tmp_path / "run", progress=False)
    method, model, run_cfg = build_from_checkpoint(tmp_path / "run")
    assert Predictor.for_run(method, model, run_cfg).input_scale == "unit"
    x = torch.tensor([[[[0, 255]]]], dtype=torch.uint8).repeat(1, 3, 1, 1)
    assert normalize(x, "unit").tolist()[0][0][0] == [0.0, 1.0]
    with pytest.raises(ValueError, match="data.input_scale 'percent'"):
        train(load_config("configs/unet/smoke.yaml", ["train.steps=1", "data.input_scale=percent"]), tmp_path / "bad",
              progress=False)


def test_last_checkpoint_every_few_steps_so_a_stopped_session_loses_little(tmp_path, monkeypatch):
    from nucseg.engine import train as train_module
    from nucseg.engine.config import load_config

    saved = []
    real = train_module.save_checkpoint

    def recording(path, *args, **kwargs):
        if path.name == "last.ckpt":
            saved.append(kwargs["step"])
        return real(path, *args, **kwargs)

    monkeypatch.setattr(train_module, "save_checkpoint", recording)
    cfg = load_config("configs/unet/smoke.yaml", ["train.steps=7", "train.val_every=0", "train.checkpoint_every=3"])
    train_module.train(cfg, tmp_path / "run", progress=False)
    assert saved == [3, 6, 7]
