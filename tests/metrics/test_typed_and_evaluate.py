import json

import numpy as np
import pytest

from nucseg.io.images import write_image, write_label
from nucseg.metrics import TypedAccumulator
from nucseg.metrics.evaluate import evaluate_folders


def two_class_pair():
    t = np.zeros((20, 20), np.int32)
    t[0:5, 0:5], t[10:15, 10:15] = 1, 2
    return t, {1: 1, 2: 2}


def test_absent_class_is_nan_and_ignored_by_mpq():
    t, tc = two_class_pair()
    acc = TypedAccumulator(class_ids=[1, 2, 3])
    row = acc.add("a", t, tc, t, tc)
    assert np.isnan(row["pq_class3"]) and row["mpq"] == pytest.approx(1.0, abs=1e-5)
    agg = acc.aggregate()
    assert agg["mpq"] == pytest.approx(1.0, abs=1e-5)
    assert agg["mpq_plus"] < 0.7  # CoNIC pools: class 3 has no TP, so its PQ is 0, not NaN


def test_wrong_class_lowers_type_f1_not_detection():
    t, tc = two_class_pair()
    acc = TypedAccumulator(class_ids=[1, 2])
    acc.add("a", t, tc, t, {1: 1, 2: 1})
    agg = acc.aggregate()
    assert agg["f1_det"] == 1.0
    assert agg["per_class"]["2"]["f1_type"] == 0.0
    # class 1: tp_dt=1, fp_dt=1 -> 2/(2 + 2*1) = 0.5
    assert agg["per_class"]["1"]["f1_type"] == pytest.approx(0.5)


def test_pannuke_tissue_averaging():
    t, tc = two_class_pair()
    acc = TypedAccumulator(class_ids=[1, 2])
    acc.add("a", t, tc, t, tc, tissue="x")
    acc.add("b", t, tc, np.zeros_like(t), {}, tissue="y")
    agg = acc.aggregate()
    assert agg["per_tissue"]["x"]["mpq"] == pytest.approx(1.0, abs=1e-5)
    assert agg["per_tissue"]["y"]["mpq"] == 0.0
    assert agg["mpq"] == pytest.approx(0.5, abs=1e-5)


def make_folders(tmp_path, stems):
    t, _ = two_class_pair()
    for s in stems:
        write_label(tmp_path / "true" / f"{s}.png", t)
        write_label(tmp_path / "pred" / f"{s}.png", t * 3)
        write_image(tmp_path / "ttypes" / f"{s}.png", np.where(t == 1, 1, np.where(t == 2, 2, 0)).astype(np.uint8))
    return t


def test_evaluate_folders_and_missing(tmp_path):
    make_folders(tmp_path, ["a", "b"])
    res = evaluate_folders(tmp_path / "true", tmp_path / "pred", tmp_path / "ttypes", tmp_path / "ttypes",
                           progress=False)
    assert res["mean"]["aji"] == 1.0 and res["pooled"]["pq"] == pytest.approx(1.0, abs=1e-5)
    assert res["mpq"] == pytest.approx(1.0, abs=1e-5) and "per_class" in res
    (tmp_path / "pred" / "b.png").unlink()
    with pytest.raises(ValueError, match="no prediction for 1 image.*b"):
        evaluate_folders(tmp_path / "true", tmp_path / "pred", progress=False)
    res = evaluate_folders(tmp_path / "true", tmp_path / "pred", allow_missing=True, progress=False)
    assert res["per_image"]["b"]["aji"] == 0.0


def test_evaluate_cli_writes_json(tmp_path, capsys):
    from nucseg.cli import main

    make_folders(tmp_path, ["a"])
    rc = main(["evaluate", "--true", str(tmp_path / "true"), "--pred", str(tmp_path / "pred"),
               "--out", str(tmp_path / "r.json"), "--csv", str(tmp_path / "r.csv")])
    assert rc == 0
    data = json.loads((tmp_path / "r.json").read_text())
    assert set(data) >= {"per_image", "mean", "pooled"}
    assert {"aji", "aji_plus", "dice", "dq", "sq", "pq", "f1_det", "hausdorff"} <= set(data["per_image"]["a"])
    assert "mean" in capsys.readouterr().out


def test_evaluate_size_mismatch_names_file(tmp_path):
    make_folders(tmp_path, ["a"])
    write_label(tmp_path / "pred" / "a.png", np.zeros((5, 5), np.int32))
    with pytest.raises(ValueError, match="a.png.*differs"):
        evaluate_folders(tmp_path / "true", tmp_path / "pred", progress=False)


def test_bad_pair_in_a_worker_process_names_the_file(tmp_path):
    from nucseg.io.images import InputError, write_label
    from nucseg.metrics.evaluate import evaluate_folders

    for i in range(4):  # enough images for the process pool
        write_label(tmp_path / "t" / f"{i}.png", np.ones((20, 20), np.int32))
        write_label(tmp_path / "p" / f"{i}.png", np.ones((20, 21 if i == 2 else 20), np.int32))
    with pytest.raises(InputError, match=r"2\.png: prediction size 21×20 differs"):
        evaluate_folders(tmp_path / "t", tmp_path / "p", progress=False)
