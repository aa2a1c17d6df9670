"""The U-Net's optional type head (HoVer-Net's type branch): targets, majority vote, and training on typed synthetic
nuclei through `nucseg train` and `nucseg segment` (types/ maps, GeoJSON classes)."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from nucseg.methods.unet.method import majority_types, type_targets

SMOKE = Path(__file__).resolve().parents[2] / "configs" / "unet" / "smoke.yaml"


def test_type_targets_mark_unknown_nuclei_for_the_loss_to_skip():
    labels = np.array([[0, 1, 1], [2, 2, 0], [3, 0, 0]])
    t = type_targets(labels, {1: 2, 2: 1, 3: 9}, num_classes=3)  # class 9 is out of range: unknown
    assert t.tolist() == [[0, 2, 2], [1, 1, 0], [-1, 0, 0]]
    assert (type_targets(labels, None, 3)[labels > 0] == -1).all()


def test_each_instance_takes_the_type_most_of_its_pixels_vote_for():
    labels = np.zeros((4, 6), np.int32)
    labels[:, :3], labels[:, 3:] = 4, 9
    prob = np.zeros((3, 4, 6), np.float32)
    prob[0] = 0.9  # background is most likely everywhere: left out of the vote
    prob[1, :, :2], prob[2, :, 2:] = 0.08, 0.08
    assert majority_types(labels, prob) == {4: 1, 9: 2}
    assert majority_types(np.zeros((3, 3), np.int32), prob[:, :3, :3]) == {}


def test_type_head_trains_and_segment_writes_the_classes(tmp_path, monkeypatch):
    from nucseg.cli import main
    from nucseg.data.synthetic import synthetic_sample
    from nucseg.io.images import write_image

    monkeypatch.chdir(tmp_path)
    assert main(["train", str(SMOKE), "--out", "run", "--set", "model.num_classes=3", "--set", "train.steps=40",
                 "--set", "data.class_names={1: small, 2: medium, 3: large}", "--set", "train.val_every=20",
                 "--set", "train.select_metric=aji_mpq"]) == 0
    rows = list(csv.DictReader(open("run/train.csv")))
    assert float(rows[-1]["types"]) < 0.8 * float(rows[0]["types"])
    val = list(csv.DictReader(open("run/val.csv")))
    assert len(val) == 2 and all(0 <= float(r["mpq"]) <= 1 for r in val)  # typed validation: checkpoint by AJI + mPQ
    assert float(val[-1]["aji_mpq"]) == pytest.approx((float(val[-1]["aji"]) + float(val[-1]["mpq"])) / 2, abs=1e-4)
    image = synthetic_sample(96, 10, n_classes=3, seed=5).image
    write_image(tmp_path / "in.png", image)
    assert main(["segment", "in.png", "--out", "out", "--model", "run"]) == 0
    types = np.asarray(__import__("PIL.Image", fromlist=["Image"]).open("out/types/in.png"))
    labels = np.asarray(__import__("PIL.Image", fromlist=["Image"]).open("out/labels/in.png"))
    assert types.shape == labels.shape and ((types > 0) == (labels > 0)).all()
    names = {f["properties"]["classification"]["name"] for f in json.load(open("out/geojson/in.geojson"))["features"]}
    assert names and names <= {"small", "medium", "large"}


def test_selecting_checkpoints_by_types_needs_a_model_that_predicts_them(tmp_path, capsys):
    from nucseg.cli import main

    assert main(["train", str(SMOKE), "--out", str(tmp_path / "run"), "--set", "train.select_metric=mpq",
                 "--set", "data.class_names={1: small}"]) != 0
    assert "select_metric=mpq" in capsys.readouterr().err and not (tmp_path / "run" / "last.ckpt").exists()
    assert main(["train", str(SMOKE), "--out", str(tmp_path / "run"), "--set", "train.select_metric=f1"]) != 0
    assert "choose one of aji, pq, dice, mpq, aji_mpq" in capsys.readouterr().err
