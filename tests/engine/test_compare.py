"""`nucseg compare`: its scores are `nucseg segment` + `nucseg evaluate` run by hand, a failing model is reported
while the others are scored, and `--protocol` scores a config's validation split, flagging a model that trained on it."""

import csv
import math

from nucseg.cli import main


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _close(a: str, b: str) -> bool:
    if a in ("", "None", "nan") or b in ("", "None", "nan"):
        return a in ("", "None", "nan") and b in ("", "None", "nan")
    return math.isclose(float(a), float(b), rel_tol=0, abs_tol=1e-12)


def test_compare_equals_segment_then_evaluate_and_reports_a_failing_model(trained_run, synthetic_set, tmp_path, capsys):
    run, _ = trained_run
    out = tmp_path / "cmp"
    code = main(["compare", str(run), "no-such-model", str(run / "last.ckpt"), "--images", str(synthetic_set / "images"),
                 "--labels", str(synthetic_set / "labels"), "--types", str(synthetic_set / "types"), "--out", str(out),
                 "--runtime", "torch"])
    assert code == 1  # one model failed
    printed = capsys.readouterr()
    assert "no-such-model" in printed.err
    for name in ("compare.md", "compare.csv", "compare.png"):
        assert (out / name).stat().st_size > 0
    assert (out / "compare.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = (out / "compare.md").read_text()
    rows = {line.split("|")[1].strip(): line for line in table.splitlines() if line.startswith("| ")}
    assert "failed: FileNotFoundError: no-such-model" in rows["no-such-model"]
    assert rows[run.name].count("–") <= 2  # scored: only mPQ+ (the model does not classify) may be empty
    per_image = _rows(out / "compare.csv")
    stems = sorted(p.stem for p in (synthetic_set / "images").iterdir())
    assert sorted(r["image"] for r in per_image if r["model"] == run.name) == stems
    assert not [r for r in per_image if r["model"] == "no-such-model"]

    # by hand: segment, then evaluate
    assert main(["segment", str(synthetic_set / "images"), "--model", str(run), "--outputs", "labels",
                 "--out", str(tmp_path / "seg"), "--runtime", "torch"]) == 0
    assert main(["evaluate", "--true", str(synthetic_set / "labels"), "--pred", str(tmp_path / "seg" / "labels"),
                 "--csv", str(tmp_path / "eval.csv")]) == 0
    by_hand = {r["image"]: r for r in _rows(tmp_path / "eval.csv") if r["image"] != "mean"}
    assert sorted(by_hand) == stems
    for r in per_image:
        if r["model"] != run.name:
            continue
        for column in ("aji", "aji_plus", "pq", "dq", "sq", "dice", "f1_det", "hausdorff", "n_true", "n_pred"):
            assert _close(r[column], by_hand[r["image"]][column]), (r["image"], column)
    # the table's AJI is the mean over images of those per-image scores
    mean_aji = sum(float(by_hand[s]["aji"]) for s in stems) / len(stems)
    assert f"| {run.name} | {mean_aji:.3f} |" in table


def test_compare_on_a_protocol_split_flags_training_images(trained_run, synthetic_set, tmp_path):
    run, _ = trained_run  # trained on the synthetic set's own split: 4 of its 6 images
    ids = sorted(p.stem for p in (synthetic_set / "images").iterdir())
    protocol = tmp_path / "tiny-protocol.yaml"
    protocol.write_text(f"data:\n  root: {synthetic_set.parent}\n  val_max_images: 10\n"
                        f"  sets:\n    - path: {synthetic_set.name}\n      val_ids: [{', '.join(ids[:3])}]\n")
    out = tmp_path / "cmp"
    assert main(["compare", str(run), "--protocol", str(protocol), "--out", str(out), "--runtime", "torch"]) == 0
    written = sorted(p.stem for p in (out / "data" / synthetic_set.name / "images").iterdir())
    assert written == ids[:3]
    assert (out / "data" / synthetic_set.name / "types").is_dir()  # the set carries classes
    from nucseg.data.dataset import split_set_ids
    from nucseg.engine.config import load_config

    trained_on = set(split_set_ids(load_config(run / "config.yaml").data.sets[0], synthetic_set,
                                   load_config(run / "config.yaml").data)[0]) & set(ids[:3])
    assert trained_on  # the fixture's split puts some of these three in training
    table = (out / "compare.md").read_text()
    assert f"trained on {len(trained_on)} of these validation images ({synthetic_set.name} {len(trained_on)})" in table
    assert main(["compare", "he", "--protocol", "no-such-protocol", "--out", str(out)]) == 2
