"""Scores of a trained run on its own validation split (never a test set), per set and over all images:
AJI, AJI+, DQ, SQ, PQ, Dice, mIoU (background and nucleus), detection F1 (centroids within 12 px), Hausdorff; and inference seconds per image.
For a model that classifies nuclei, on sets with types maps: bPQ, mPQ (PanNuke), mPQ+ (CoNIC), type accuracy and
per-class F1 (plain and HoVer-Net's type F1), `nucseg.metrics.typed`.

    python benchmarks/validation.py RUN_DIR|CKPT [RUN_DIR|CKPT ...] [--precision fp32|bf16] [--tta] [--max-images N]
        [--data-from CONFIG]

With several runs it ends with a Markdown table (one row per run, all validation images), as in docs/weaveseg.md.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from nucseg.data.dataset import validation_samples
from nucseg.engine.checkpoints import build_from_checkpoint
from nucseg.engine.config import load_config
from nucseg.engine.device import configure_malloc
from nucseg.engine.infer import Predictor
from nucseg.metrics import instance_scores
from nucseg.metrics.typed import TypedAccumulator

COLUMNS = ("aji", "aji_plus", "dq", "sq", "pq", "dice", "miou", "f1_det", "hausdorff")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--precision", default=None)
    ap.add_argument("--tta", action="store_true")
    ap.add_argument("--max-images", type=int, default=None, help="override data.val_max_images")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--data-from", default=None,
                    help="a config YAML whose validation split to use (e.g. compare a model with runs on other sets)")
    args = ap.parse_args()
    configure_malloc()
    torch.set_num_threads(args.threads)
    table = [evaluate_run(run, args) for run in args.runs]
    if len(table) > 1:
        print("\n| run | images | " + " | ".join(COLUMNS) + " | s/image |")
        print("|---|---:|" + "---:|" * (len(COLUMNS) + 1))
        for run, n, means, secs in table:
            print(f"| {run} | {n} | " + " | ".join(f"{means[c]:.3f}" for c in COLUMNS) + f" | {secs:.2f} |")


def evaluate_run(run: str, args) -> tuple[str, int, dict, float]:
    """Print per-set scores of one run; returns (run, images, mean scores over all images, seconds per image)."""
    method, model, cfg = build_from_checkpoint(run)
    model = model.to(memory_format=torch.channels_last)
    if args.data_from:
        cfg.data = load_config(args.data_from).data
    if args.max_images:
        cfg.data.val_max_images = args.max_images
    cfg.infer.tta = args.tta
    predictor = Predictor.for_run(method, model, cfg, torch.device("cpu"), args.precision)
    print(f"{run}: method {cfg.method}, precision {predictor.precision}, tta {args.tta}")
    print(f"{'set':24s} {'n':>3s} " + " ".join(f"{c:>9s}" for c in COLUMNS) + f" {'s/image':>8s}")
    rows_all, secs_all, typed = [], [], {}
    for name, samples in validation_samples(cfg.data).items():
        rows, secs = [], []
        for s in samples:
            t0 = time.perf_counter()
            inst = predictor.segment(s.image)
            secs.append(time.perf_counter() - t0)
            rows.append(instance_scores(s.instances, inst.labels))
            if s.classes and inst.classes:  # a typed set and a classifying model: the classification metrics too
                class_ids = sorted(cfg.data.class_names) or sorted(set(s.classes.values()) - {0})
                typed.setdefault(name, TypedAccumulator(class_ids)).add(s.id, s.instances, s.classes, inst.labels,
                                                                        inst.classes)
        rows_all += rows
        secs_all += secs
        print(f"{name:24s} {len(rows):3d} " + " ".join(f"{np.nanmean([r[c] for r in rows]):9.4f}" for c in COLUMNS)
              + f" {np.mean(secs):8.2f}")
    for name, acc in typed.items():
        agg = acc.aggregate()
        names = {str(k): v for k, v in dict(cfg.data.class_names).items()}
        print(f"{name}: bPQ {agg['bpq']:.4f}  mPQ {agg['mpq']:.4f}  mPQ+ {agg['mpq_plus']:.4f}  detection F1 "
              f"{agg['f1_det']:.4f}  type accuracy {agg['acc_type']:.4f}")
        for c, v in agg["per_class"].items():
            print(f"    class {c} {names.get(c, ''):14s} F1 {v['f1']:.4f}  type-F1 (HoVer-Net) {v['f1_type']:.4f}  "
                  f"PQ+ {v['pq_plus']:.4f}")
    means = {c: float(np.nanmean([r[c] for r in rows_all])) for c in COLUMNS}
    print(f"{'all images':24s} {len(rows_all):3d} " + " ".join(f"{means[c]:9.4f}" for c in COLUMNS)
          + f" {np.mean(secs_all):8.2f}")
    return run, len(rows_all), means, float(np.mean(secs_all))


if __name__ == "__main__":
    main()
