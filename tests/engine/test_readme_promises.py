"""README promises of the command line that no other test holds: `--tta`, `--precision bf16`, `export --fp16`,
`train --resume` (validation rows and best.ckpt included) and `train.init_from` as a config key."""

import csv
import shutil

import numpy as np
import pytest
import torch

from nucseg.cli import main


def _image(tmp_path, seed=5, size=96):
    from nucseg.data.synthetic import synthetic_sample
    from nucseg.io.images import write_image

    sample = synthetic_sample(size, 12, seed=seed)
    write_image(tmp_path / "in" / "a.png", sample.image)
    return sample


def test_tta_averages_the_four_flips(trained_run, tmp_path):
    """--tta: the dense maps are the mean of the plain maps of the image and of its three flips (each flipped back;
    the 96² image's windows are symmetric, so flipping windows is flipping the image), and `segment --tta` writes
    the labels of those maps."""
    from nucseg.engine.infer import Predictor
    from nucseg.io.images import read_label

    sample = _image(tmp_path)
    plain = Predictor.from_checkpoint(trained_run[0], runtime="torch")
    tta = Predictor.from_checkpoint(trained_run[0], runtime="torch", tta=True)
    manual = {}
    for dims in [(), (1,), (0,), (0, 1)]:  # image axes (rows 0, columns 1): each flip of the image, then back
        flipped = np.ascontiguousarray(np.flip(sample.image, dims)) if dims else sample.image
        for k, v in plain.dense(flipped).items():
            v = np.flip(v, tuple(d + 1 for d in dims)) if dims else v
            manual[k] = manual.get(k, 0) + v / 4
    dense = tta.dense(sample.image)
    assert set(dense) == set(manual)
    for k in dense:
        np.testing.assert_allclose(dense[k], manual[k], atol=1e-5, err_msg=k)
    assert not np.allclose(dense[next(iter(dense))], plain.dense(sample.image)[next(iter(dense))], atol=1e-4)
    assert main(["segment", str(tmp_path / "in"), "--model", str(trained_run[0]), "--tta", "--runtime", "torch", "--precision", "fp32",
                 "--outputs", "labels", "--out", str(tmp_path / "out")]) == 0
    written = read_label(tmp_path / "out/labels/a.png")
    np.testing.assert_array_equal(written, tta.segment(sample.image).labels)
    assert not np.array_equal(written, plain.segment(sample.image).labels)  # so the flag was not ignored


def test_precision_bf16_runs_in_bf16_and_agrees_with_fp32(trained_run, tmp_path):
    from nucseg.engine.infer import Predictor
    from nucseg.io.images import read_label
    from nucseg.metrics import aji

    sample = _image(tmp_path)
    bf16_predictor = Predictor.from_checkpoint(trained_run[0], precision="bf16", runtime="torch")
    assert bf16_predictor.precision == "bf16"
    fp32_maps = Predictor.from_checkpoint(trained_run[0], precision="fp32", runtime="torch").dense(sample.image)
    bf16_maps = bf16_predictor.dense(sample.image)
    for k in fp32_maps:  # computed in bf16: close to fp32, but rounded (an fp32 pass would be identical)
        assert not np.array_equal(bf16_maps[k], fp32_maps[k]) and np.abs(bf16_maps[k] - fp32_maps[k]).max() < 0.1, k
    for precision in ("bf16", "fp32"):
        assert main(["segment", str(tmp_path / "in"), "--model", str(trained_run[0]), "--precision", precision,
                     "--runtime", "torch", "--outputs", "labels", "--out", str(tmp_path / precision)]) == 0
    bf16 = read_label(tmp_path / "bf16/labels/a.png")
    fp32 = read_label(tmp_path / "fp32/labels/a.png")
    assert fp32.max() >= 5 and aji(fp32, bf16) > 0.85


def test_export_fp16_halves_the_weights_and_segments_alike(trained_run, tmp_path):
    from nucseg.engine.checkpoints import load_checkpoint
    from nucseg.engine.infer import Predictor
    from nucseg.io.images import read_label
    from nucseg.metrics import aji

    assert main(["export", str(trained_run[0]), str(tmp_path / "fp32.pt")]) == 0
    assert main(["export", str(trained_run[0]), str(tmp_path / "fp16.pt"), "--fp16"]) == 0
    half = load_checkpoint(tmp_path / "fp16.pt")["model"]
    full = load_checkpoint(tmp_path / "fp32.pt")["model"]
    floats = [k for k, v in full.items() if v.is_floating_point()]
    assert floats and all(half[k].dtype == torch.float16 for k in floats)
    assert all(torch.equal(half[k], full[k].half()) for k in floats)
    assert (tmp_path / "fp16.pt").stat().st_size < 0.6 * (tmp_path / "fp32.pt").stat().st_size
    sample = _image(tmp_path)
    # the maps differ by the weights' rounding alone (loading casts back to fp32) ...
    fp32_maps = Predictor.from_checkpoint(tmp_path / "fp32.pt", runtime="torch").dense(sample.image)
    fp16_maps = Predictor.from_checkpoint(tmp_path / "fp16.pt", runtime="torch").dense(sample.image)
    for k in fp32_maps:
        assert not np.array_equal(fp16_maps[k], fp32_maps[k]) and np.abs(fp16_maps[k] - fp32_maps[k]).max() < 5e-3, k
    for name in ("fp32", "fp16"):
        assert main(["segment", str(tmp_path / "in"), "--model", str(tmp_path / f"{name}.pt"), "--runtime", "torch",
                     "--outputs", "labels", "--out", str(tmp_path / name)]) == 0
    fp32 = read_label(tmp_path / "fp32/labels/a.png")
    fp16 = read_label(tmp_path / "fp16/labels/a.png")
    # ... and the labels alike: the smoke model's markers sit near their threshold, so a 1e-3 change can split or
    # merge one of its ~10 nuclei (AJI 0.89 measured in fp32); the foreground is the stable part
    assert fp32.max() >= 5 and abs(int(fp32.max()) - int(fp16.max())) <= 1
    assert ((fp32 > 0) & (fp16 > 0)).sum() / ((fp32 > 0) | (fp16 > 0)).sum() > 0.99 and aji(fp32, fp16) > 0.8


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_train_resume_through_the_command_line(synthetic_set, tmp_path):
    """`nucseg train CONFIG` ended at step 4, then `nucseg train --resume RUN --set train.steps=8`: one train row per
    step, validation rows at 2, 4, 6, 8 and best.ckpt the best of all four (test_engine checks that a resumed run's
    losses equal an uninterrupted one's)."""
    from nucseg.engine.config import load_config

    smoke = "configs/unet/smoke.yaml"
    common = ["--set", f"data.sets=[{{path: '{synthetic_set}'}}]", "--set", "train.val_every=2", "--set",
              "train.log_every=1"]
    assert main(["train", smoke, "--out", str(tmp_path / "cut"), *common, "--set", "train.steps=4"]) == 0
    assert main(["train", "--resume", str(tmp_path / "cut"), "--set", "train.steps=8"]) == 0
    assert load_config(tmp_path / "cut/config.yaml").train.steps == 8
    cut = _rows(tmp_path / "cut/train.csv")
    assert [int(r["step"]) for r in cut] == list(range(1, 9))
    assert torch.load(tmp_path / "cut/last.ckpt", weights_only=True)["step"] == 8
    val = _rows(tmp_path / "cut/val.csv")
    assert [int(r["step"]) for r in val] == [2, 4, 6, 8]
    best = torch.load(tmp_path / "cut/best.ckpt", weights_only=True)
    scores = {int(r["step"]): float(r["aji"]) for r in val}
    best_step = max(scores, key=lambda s: (scores[s], -s))
    assert best["step"] == best_step and best["scores"]["aji"] == pytest.approx(scores[best_step], abs=1e-5)


def test_init_from_as_a_config_key(trained_run, synthetic_set, tmp_path, capsys):
    """`train.init_from: RUN` in a YAML file starts every matching tensor from that run's weights: with a zero
    learning rate one step later the parameters are still exactly the source's."""
    from pathlib import Path

    from nucseg.engine.checkpoints import load_checkpoint

    run = tmp_path / "src"
    shutil.copytree(trained_run[0], run)
    config = tmp_path / "from-run.yaml"
    config.write_text(f"base: {Path('configs/unet/smoke.yaml').resolve()}\n"
                      f"data:\n  sets: [{{path: '{synthetic_set}'}}]\n"
                      f"optim: {{lr: 0.0}}\ntrain: {{init_from: '{run}', steps: 1, val_every: 0}}\n")
    assert main(["train", str(config), "--out", str(tmp_path / "new")]) == 0
    printed = capsys.readouterr().out
    assert f"init_from {run}" in printed and "tensors loaded" in printed
    source = load_checkpoint(run)["model"]  # the run directory resolves to its tuned or best checkpoint
    new = load_checkpoint(tmp_path / "new/last.ckpt")["model"]
    params = [k for k in source if "running_" not in k and "num_batches" not in k]
    assert len(params) > 10 and all(torch.equal(new[k], source[k]) for k in params)
