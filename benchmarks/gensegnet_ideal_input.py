"""How much of a GeNSeg-Net run's error is the generator's: on the run's validation split, the scores of the whole
pipeline (grey -> generator -> U-Net -> watershed) beside those of its U-Net fed the ideal-nucleus image drawn from
the ground truth (what a perfect generator would give), and the generator's L1 distance to that image.

    python benchmarks/gensegnet_ideal_input.py RUN_DIR|CKPT [...] [--data-from CONFIG] [--threads N]

For a U-Net trained on ideal images (`segmenter_input: ideal`, the paper) the gap between the two rows is the price
of the generator's mistakes; docs/gensegnet.md uses it to choose `segmenter_input`.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
import torch.nn.functional as F

from nucseg.data.dataset import validation_samples
from nucseg.engine.checkpoints import build_from_checkpoint
from nucseg.engine.config import load_config
from nucseg.engine.device import configure_malloc
from nucseg.engine.infer import Predictor, normalize
from nucseg.metrics import instance_scores
from nucseg.targets.ideal import ideal_nucleus_image

COLUMNS = ("aji", "aji_plus", "dq", "sq", "pq", "dice")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--data-from", default=None, help="a config YAML whose validation split to use")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    configure_malloc()
    torch.set_num_threads(args.threads)
    print("| run | U-Net input | images | generator L1 | " + " | ".join(COLUMNS) + " |")
    print("|---|---|---:|---:|" + "---:|" * len(COLUMNS))
    for run in args.runs:
        evaluate(run, args.data_from)


@torch.no_grad()
def evaluate(run: str, data_from: str | None) -> None:
    method, model, cfg = build_from_checkpoint(run)
    if cfg.method != "gensegnet" or not method.enhances:
        raise SystemExit(f"{run}: not a GeNSeg-Net run with a generator (method {cfg.method})")
    if data_from:
        cfg.data = load_config(data_from).data
    c = method.config
    predictor = Predictor.for_run(method, model, cfg, torch.device("cpu"), "fp32")
    pipeline, ideal_input, l1 = [], [], []
    samples = [s for group in validation_samples(cfg.data).values() for s in group]
    for s in samples:
        pipeline.append(instance_scores(s.instances, predictor.segment(s.image).labels))
        h, w = s.instances.shape
        pad = ((0, -h % 32), (0, -w % 32))  # the U-Net's stride
        ideal = ideal_nucleus_image(np.pad(s.instances, pad), c.edge_width, c.centre_level, c.rim_level, c.edge_level)
        ideal = torch.from_numpy(ideal.astype(np.float32) * 2 - 1)[None, None]  # the generator's tanh range
        prob = model(ideal, mode="segment_enhanced")["logits"].softmax(1)[0, :, :h, :w].numpy()
        ideal_input.append(instance_scores(s.instances, method.postprocess({"prob": prob}).labels))
        image = np.repeat(s.image[..., :1], 3, -1) if s.image.shape[-1] == 1 else s.image[..., :3]
        x = torch.from_numpy(np.pad(image, (*pad, (0, 0)), mode="reflect")).permute(2, 0, 1)[None]
        enhanced = model.enhance(normalize(x))
        l1.append(float(F.l1_loss(enhanced[..., :h, :w], ideal[..., :h, :w])))
    for name, rows, loss in (("generator output (pipeline)", pipeline, f"{np.mean(l1):.3f}"),
                             ("ideal image from the truth", ideal_input, "—")):
        means = [np.nanmean([r[k] for r in rows]) for k in COLUMNS]
        print(f"| {run} | {name} | {len(rows)} | {loss} | " + " | ".join(f"{m:.3f}" for m in means) + " |")


if __name__ == "__main__":
    main()
