"""Scores of a trained run on its own validation split (never a test set), per set and over all images:
AJI, AJI+, PQ, Dice, detection F1 (centroids within 12 px), Hausdorff; and inference seconds per image.

    python benchmarks/validation.py RUN_DIR|CKPT [--precision fp32|bf16] [--tta] [--max-images N]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from nucseg.data.dataset import validation_samples
from nucseg.engine.checkpoints import build_from_checkpoint
from nucseg.engine.device import configure_malloc
from nucseg.engine.infer import Predictor
from nucseg.metrics import instance_scores

COLUMNS = ("aji", "aji_plus", "pq", "dice", "f1_det", "hausdorff")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("run")
    ap.add_argument("--precision", default=None)
    ap.add_argument("--tta", action="store_true")
    ap.add_argument("--max-images", type=int, default=None, help="override data.val_max_images")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    configure_malloc()
    torch.set_num_threads(args.threads)
    method, model, cfg = build_from_checkpoint(args.run)
    model = model.to(memory_format=torch.channels_last)
    if args.max_images:
        cfg.data.val_max_images = args.max_images
    cfg.infer.tta = args.tta
    predictor = Predictor.for_run(method, model, cfg, torch.device("cpu"), args.precision)
    print(f"{args.run}: method {cfg.method}, precision {predictor.precision}, tta {args.tta}")
    print(f"{'set':24s} {'n':>3s} " + " ".join(f"{c:>9s}" for c in COLUMNS) + f" {'s/image':>8s}")
    rows_all = []
    for name, samples in validation_samples(cfg.data).items():
        rows, secs = [], []
        for s in samples:
            t0 = time.perf_counter()
            labels = predictor.segment(s.image).labels
            secs.append(time.perf_counter() - t0)
            rows.append(instance_scores(s.instances, labels))
        rows_all += rows
        print(f"{name:24s} {len(rows):3d} " + " ".join(f"{np.nanmean([r[c] for r in rows]):9.4f}" for c in COLUMNS)
              + f" {np.mean(secs):8.2f}")
    print(f"{'all images':24s} {len(rows_all):3d} "
          + " ".join(f"{np.nanmean([r[c] for r in rows_all]):9.4f}" for c in COLUMNS))


if __name__ == "__main__":
    main()
