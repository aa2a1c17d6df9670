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
    assert agg["bpq"] == pytest.approx(1.0, abs=1e-5)
    assert agg["mpq_plus"] == pytest.approx(2 / 3, abs=1e-5)  # CoNIC pools: class 3 has no TP, so its PQ is 0, not NaN


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


# --- exact properties ------------------------------------------------------------------------------------------------


def test_bpq_and_conic_mpq_plus_exact_on_a_known_pair():
    t, tc = two_class_pair()
    acc = TypedAccumulator(class_ids=[1, 2, 3])
    acc.add("a", t, tc, t, tc)
    agg = acc.aggregate()
    assert agg["bpq"] == pytest.approx(1.0, abs=1e-5)
    # CoNIC pools: class 3 has no TP, so its PQ is 0 (not NaN): (1 + 1 + 0) / 3, up to the 1e-6 terms
    assert agg["mpq_plus"] == pytest.approx(2 / 3, abs=1e-5)
    assert agg["per_class"]["3"]["pq_plus"] == 0.0


def _discs(centres, shape=(40, 60), r=2):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    out = np.zeros(shape, np.int32)
    for k, (y, x) in enumerate(centres, start=1):
        out[(yy - y) ** 2 + (xx - x) ** 2 <= r * r] = k
    return out


def test_centroid_pairing_is_optimal_when_candidates_compete():
    """True nuclei at x = 20 and 31, predictions at x = 25 and 13, radius 12. Pairing each true nucleus with its
    nearest prediction first (20-25) leaves 31-13 (18 px) unpaired; the Hungarian assignment over all pairs
    (20-13: 7 px, 31-25: 6 px) pairs both, as HoVer-Net's pair_coordinates does."""
    true = _discs([(20, 20), (20, 31)])
    pred = _discs([(20, 25), (20, 13)])
    acc = TypedAccumulator(class_ids=[1, 2])
    acc.add("a", true, {1: 1, 2: 2}, pred, {1: 2, 2: 1})  # 31 -> 25 is class 2, 20 -> 13 is class 1
    agg = acc.aggregate()
    assert agg["f1_det"] == 1.0 and agg["acc_type"] == 1.0
    assert agg["per_class"]["1"]["f1_type"] == 1.0 and agg["per_class"]["2"]["f1_type"] == 1.0
    from nucseg.metrics.instance import detection_by_centroid

    assert detection_by_centroid(true, pred)["f1"] == 1.0


# --- parity with a per-instance reference on typed pairs --------------------------------------------------------------


def _perturbed(labels, classes, seed):
    """A plausible typed prediction of `labels`: shifted by (2, 1) px, 10 % of nuclei missed, a few spurious blobs,
    a quarter of the classes changed."""
    rng = np.random.default_rng(seed)
    ids = [i for i in np.unique(labels) if i]
    pred = np.roll(labels, (2, 1), axis=(0, 1)).astype(np.int32)
    for i in rng.choice(ids, max(1, len(ids) // 10), replace=False):
        pred[pred == i] = 0
    h, w = labels.shape
    next_id = int(labels.max()) + 1
    for _ in range(3):
        y, x = int(rng.integers(4, h - 4)), int(rng.integers(4, w - 4))
        blob = pred[y - 3 : y + 3, x - 3 : x + 3]
        blob[blob == 0] = next_id
        next_id += 1
    present = [int(i) for i in np.unique(pred) if i]
    class_ids = sorted(set(classes.values()))
    pc = {i: (classes.get(i) if i in classes and rng.random() > 0.25 else int(rng.choice(class_ids)))
          for i in present}
    return pred, pc


def _typed_pairs(source, shared):
    if source == "synthetic":
        from nucseg.data.synthetic import synthetic_sample

        samples = [synthetic_sample(96, 16, radius=(4, 8), seed=s) for s in range(4)]
        items = [(s.instances.astype(np.int32), {int(k): int(v) for k, v in s.classes.items()}) for s in samples]
    else:
        from nucseg.io.images import read_label
        from nucseg.labels import class_map_to_instance_classes

        src = shared / "consep-patches-train"
        items = []
        for stem in ("train_14_000", "train_14_005", "train_2_010", "train_20_003"):  # validation tiles, many types
            labels = read_label(src / "labels" / f"{stem}.png")
            items.append((labels, class_map_to_instance_classes(labels, read_label(src / "types" / f"{stem}.png"))))
    return [(t, tc, *_perturbed(t, tc, seed)) for seed, (t, tc) in enumerate(items)]


@pytest.mark.parametrize("source", ["synthetic", "consep"])
def test_typed_metrics_equal_the_reference(source, request):
    from reference_metrics import ref_bpq_mpq, ref_mpq_plus, ref_type_stats

    shared = request.getfixturevalue("shared_data") if source == "consep" else None
    pairs = _typed_pairs(source, shared)
    class_ids = sorted({c for _, tc, _, _ in pairs for c in tc.values()})
    assert len(class_ids) >= 2
    acc = TypedAccumulator(class_ids=class_ids)
    for k, (t, tc, p, pc) in enumerate(pairs):
        acc.add(str(k), t, tc, p, pc)
    agg = acc.aggregate()
    bpq, mpq = ref_bpq_mpq(pairs, class_ids)
    ref = ref_type_stats(pairs, class_ids)
    assert 0.2 < agg["mpq"] < 0.95  # a real comparison, not a trivial one
    assert agg["bpq"] == pytest.approx(bpq, abs=1e-6)
    assert agg["mpq"] == pytest.approx(mpq, abs=1e-6)
    assert agg["mpq_plus"] == pytest.approx(ref_mpq_plus(pairs, class_ids), abs=1e-6)
    assert agg["f1_det"] == pytest.approx(ref["f1_det"], abs=1e-12)
    assert agg["acc_type"] == pytest.approx(ref["acc_type"], abs=1e-12)
    for c in class_ids:
        assert agg["per_class"][str(c)]["f1_type"] == pytest.approx(ref[f"f1_type_{c}"], abs=1e-12)


# --- the command line with types, tissues and other label formats ------------------------------------------------------


def test_evaluate_cli_with_types_and_tissues(tmp_path, capsys):
    from nucseg.cli import main
    from nucseg.labels import instances_to_class_map

    pairs = _typed_pairs("synthetic", None)
    tissues = {}
    for k, (t, tc, p, pc) in enumerate(pairs):
        write_label(tmp_path / "true" / f"{k}.png", t)
        write_label(tmp_path / "pred" / f"{k}.png", p)
        write_image(tmp_path / "tt" / f"{k}.png", instances_to_class_map(t, tc).astype(np.uint8))
        write_image(tmp_path / "pt" / f"{k}.png", instances_to_class_map(p, pc).astype(np.uint8))
        tissues[str(k)] = "colon" if k < 2 else "breast"
    (tmp_path / "tissue.csv").write_text("stem,tissue\n" + "".join(f"{k},{v}\n" for k, v in tissues.items()))
    rc = main(["evaluate", "--true", str(tmp_path / "true"), "--pred", str(tmp_path / "pred"), "--true-types",
               str(tmp_path / "tt"), "--pred-types", str(tmp_path / "pt"), "--tissue", str(tmp_path / "tissue.csv"),
               "--out", str(tmp_path / "r.json")])
    assert rc == 0
    printed = capsys.readouterr().out
    data = json.loads((tmp_path / "r.json").read_text())
    class_ids = sorted({c for _, tc, _, _ in pairs for c in tc.values()})
    expected = TypedAccumulator(class_ids=class_ids)
    for k, (t, tc, p, pc) in enumerate(pairs):
        expected.add(str(k), t, tc, p, pc, tissues[str(k)])
    agg = expected.aggregate()
    assert set(data["per_tissue"]) == {"colon", "breast"}
    for tissue in ("colon", "breast"):
        assert data["per_tissue"][tissue]["mpq"] == pytest.approx(agg["per_tissue"][tissue]["mpq"], abs=1e-12)
    assert data["mpq"] == pytest.approx(agg["mpq"], abs=1e-12)  # the mean over the two tissues
    assert data["mpq"] == pytest.approx(np.mean([agg["per_tissue"][t]["mpq"] for t in ("colon", "breast")]), abs=1e-12)
    assert data["mpq_plus"] == pytest.approx(agg["mpq_plus"], abs=1e-12)
    assert f"mpq_plus: {agg['mpq_plus']:.4f}" in printed and f"bpq: {agg['bpq']:.4f}" in printed
    with pytest.raises(ValueError, match="both --true-types and --pred-types"):
        evaluate_folders(tmp_path / "true", tmp_path / "pred", tmp_path / "tt", None, progress=False)


def test_evaluate_reads_npy_and_mat_label_maps(tmp_path):
    """True maps as .npy and predictions as .mat (`inst_map`, as HoVer-Net writes them) score as the PNGs do."""
    from scipy.io import savemat

    pairs = _typed_pairs("synthetic", None)
    for k, (t, _, p, _) in enumerate(pairs):
        write_label(tmp_path / "true_png" / f"{k}.png", t)
        write_label(tmp_path / "pred_png" / f"{k}.png", p)
        (tmp_path / "true_npy").mkdir(exist_ok=True)
        np.save(tmp_path / "true_npy" / f"{k}.npy", t)
        (tmp_path / "pred_mat").mkdir(exist_ok=True)
        savemat(tmp_path / "pred_mat" / f"{k}.mat", {"inst_map": p})
    png = evaluate_folders(tmp_path / "true_png", tmp_path / "pred_png", progress=False)
    other = evaluate_folders(tmp_path / "true_npy", tmp_path / "pred_mat", progress=False)
    assert png["per_image"] == other["per_image"] and png["pooled"] == other["pooled"]
    assert 0.3 < png["mean"]["aji"] < 0.95
