"""Where a FrGNet's instances come from and go: predicted / annotated counts, detection precision and recall, AJI and
PQ on a protocol's validation images, at the model's post-processing values and with each of the score threshold,
NMS threshold and guide filter moved alone. Diagnostics for over-proposal (#25); never run it on a test set.

    python benchmarks/frgnet_postprocess.py MODEL [--protocol he-cpu] [--sets monuseg-train ...]

MODEL: a shipped name (frgnet), a run directory or a checkpoint. The dense maps of each image are computed once;
each row post-processes them again. Counts are summed over a set's images; precision and recall are PQ's matches
(IoU > 0.5); unmatched predictions are split by where they lie (false_positive_kinds); AJI and PQ are means over
images.
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import numpy as np

from nucseg.data.dataset import LoadedSet
from nucseg.engine.checkpoints import build_from_checkpoint
from nucseg.engine.compare import find_protocol
from nucseg.engine.config import load_config
from nucseg.engine.device import configure_malloc
from nucseg.engine.infer import Predictor
from nucseg.engine.segment import resolve_model
from nucseg.metrics import aji, compute_overlap, pq

SWEEPS = {
    "score_threshold": [0.5, 0.6, 0.7, 0.8, 0.9, 0.95],
    "nms_threshold": [0.1, 0.2, 0.3, 0.4, 0.5],
    "guide_threshold": [0.0, 0.3, 0.5, 0.7, 0.9],
    "nms_before_refine": [True, False],
}


def false_positive_kinds(ov) -> tuple[int, int, int, int]:
    """Predicted nuclei matched to none (IoU ≤ 0.5), by where they lie: on background (< 10 % of their area on
    annotated nuclei), inside nuclei (≥ 50 %), of those the pieces (under half the area of the nucleus they overlap
    most: one nucleus cut into several small contours), and straddling (a misplaced outline)."""
    iou = ov.iou()
    best_iou = np.zeros(ov.n_pred)
    best_true = np.zeros(ov.n_pred, int)
    covered = np.zeros(ov.n_pred)
    order = np.argsort(iou, kind="stable")  # ascending: the last write per prediction is its best pair
    best_iou[ov.pair_pred[order]] = iou[order]
    best_true[ov.pair_pred[order]] = ov.pair_true[order]
    np.add.at(covered, ov.pair_pred, ov.inter)
    share = covered / np.maximum(ov.pred_area, 1)
    unmatched = best_iou <= 0.5
    inside = unmatched & (share >= 0.5)
    piece = inside & (ov.pred_area < 0.5 * ov.true_area[best_true]) if ov.n_true else inside & False
    return (int((unmatched & (share < 0.1)).sum()), int(inside.sum()), int(piece.sum()),
            int((unmatched & (share >= 0.1) & (share < 0.5)).sum()))


def score_rows(method, cached) -> dict[str, float]:
    n_true = n_pred = tp = fp = fn = 0
    kinds = np.zeros(4, int)
    ajis, pqs = [], []
    for truth, dense in cached:
        labels = method.postprocess(dense).labels
        ov = compute_overlap(truth, labels)
        q = pq(ov)
        n_true += len(np.unique(truth)) - 1
        n_pred += len(np.unique(labels)) - 1
        tp, fp, fn = tp + q["tp"], fp + q["fp"], fn + q["fn"]
        kinds += false_positive_kinds(ov)
        ajis.append(aji(ov))
        pqs.append(q["pq"])
    return {"pred/true": n_pred / max(n_true, 1), "n_pred": n_pred, "n_true": n_true,
            "precision": tp / max(tp + fp, 1), "recall": tp / max(tp + fn, 1),
            "fp_background": kinds[0], "fp_inside": kinds[1], "fp_pieces": kinds[2], "fp_straddling": kinds[3],
            "aji": float(np.mean(ajis)), "pq": float(np.mean(pqs))}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("--protocol", default="he-cpu")
    ap.add_argument("--sets", nargs="*", help="set names (default: every set of the protocol with validation images)")
    args = ap.parse_args()
    configure_malloc()
    method, model, cfg = build_from_checkpoint(resolve_model(args.model))
    if method.name != "frgnet":
        raise SystemExit(f"{args.model}: a '{method.name}' model; this script reads FrGNet's post-processing")
    predictor = Predictor.for_run(method, model, cfg)
    data = load_config(find_protocol(args.protocol)).data
    base = dataclasses.replace(method.config)
    print(f"model {args.model}: " + ", ".join(f"{k}={getattr(base, k)}" for k in method.tunable))
    for set_cfg in data.sets:
        if set_cfg.annotation != "labels":
            continue
        loaded = LoadedSet(set_cfg, data.root, data, "val")
        if not loaded.samples or (args.sets and loaded.name not in args.sets):
            continue
        t0 = time.perf_counter()
        cached = [(s.instances, predictor.dense(s.image)) for s in loaded.samples]
        print(f"\n## {loaded.name}: {len(cached)} images, {sum(s.instances.size for s in loaded.samples) / 1e6:.1f} MP "
              f"({time.perf_counter() - t0:.0f} s for the dense maps)")
        print("| setting | pred/true | predicted | annotated | precision | recall | unmatched: background / inside "
              "(pieces) / straddling | AJI | PQ | post-process s/image |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")

        def row(name, cached=cached):
            t0 = time.perf_counter()
            r = score_rows(method, cached)  # scoring included: the same for every row
            seconds = (time.perf_counter() - t0) / len(cached)
            print(f"| {name} | {r['pred/true']:.2f} | {r['n_pred']} | {r['n_true']} | {r['precision']:.3f} | "
                  f"{r['recall']:.3f} | {r['fp_background']} / {r['fp_inside']} ({r['fp_pieces']}) / "
                  f"{r['fp_straddling']} | "
                  f"{r['aji']:.3f} | {r['pq']:.3f} | {seconds:.2f} |")

        method.config = dataclasses.replace(base)
        row("as shipped / tuned")
        for key, values in SWEEPS.items():
            for v in values:
                if v == getattr(base, key, None) or ("guide" not in cached[0][1] and key == "guide_threshold"):
                    continue
                method.config = dataclasses.replace(base, **{key: v})
                row(f"{key}={v}")
        method.config = dataclasses.replace(base)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
