"""End-to-end speed and memory of `nucseg segment` on 1000×1000 H&E tiles, and training seconds per step.

Each measurement runs in a fresh process (so peak memory is that process's own) on `--threads` threads:
read the PNG, predict, post-process, write labels + overlay + GeoJSON + CSV. Reports the median over tiles after
one warm-up tile. Then the same tiles through `nucseg segment` as a user runs it (outputs written on a background
thread while the next tile is predicted): wall seconds per tile, model loading included.

    python benchmarks/segment.py [--model default|RUN_DIR|CKPT] [--threads 2] [--tiles 4] [--pipeline-tiles 12]
                                 [--train-steps 5] [--crop 512]

`--crop N` uses the top-left N×N of each tile (GeNSeg-Net's paper times 512² images).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _tiles(args, n: int, tmp: str) -> list[Path]:
    """The first `n` MoNuSeg tiles, or their top-left `--crop`² written to `tmp`."""
    tiles = sorted((Path(args.data) / "monuseg-train/images").glob("*.png"))[:n]
    if not args.crop:
        return tiles
    from nucseg.io.images import read_image, write_image

    crops = []
    for path in tiles:
        crops.append(Path(tmp) / "crops" / path.name)
        write_image(crops[-1], read_image(path)[: args.crop, : args.crop])
    return crops


def worker(args) -> None:
    import time

    import torch

    from nucseg.engine.checkpoints import build_from_checkpoint
    from nucseg.engine.device import configure_malloc
    from nucseg.engine.infer import Predictor
    from nucseg.io.images import read_image
    from nucseg.io.writers import write_outputs

    configure_malloc()
    torch.set_num_threads(args.threads)
    method, model, cfg = build_from_checkpoint(_model_path(args.model))
    model = model.to(memory_format=torch.channels_last)
    predictor = Predictor.for_run(method, model, cfg, torch.device("cpu"), args.precision)
    times, stages = [], []
    with tempfile.TemporaryDirectory() as out:
        for path in _tiles(args, args.tiles + 1, out):
            t0 = time.perf_counter()
            image = read_image(path)
            t1 = time.perf_counter()
            dense = predictor.dense(image)
            t2 = time.perf_counter()
            inst = method.postprocess(dense)
            t3 = time.perf_counter()
            write_outputs(Path(out), path.stem, image, inst)
            t4 = time.perf_counter()
            times.append(t4 - t0)
            stages.append((t1 - t0, t2 - t1, t3 - t2, t4 - t3))
    times, stages = times[1:], stages[1:]  # drop the warm-up tile
    mid = sorted(range(len(times)), key=lambda i: times[i])[len(times) // 2]
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"seconds": times[mid], "stages": stages[mid], "peak_mb": peak_mb, "n": len(times)}))


def pipeline_worker(args) -> None:
    import time

    from nucseg.engine.segment import segment_files

    with tempfile.TemporaryDirectory() as out:
        tiles = _tiles(args, args.pipeline_tiles, out)
        t0 = time.perf_counter()
        report = segment_files([str(t) for t in tiles], str(Path(out) / "out"), args.model, threads=args.threads,
                               precision=args.precision, progress=False)
        seconds = time.perf_counter() - t0
    assert not report.failed, report.failed
    print(json.dumps({"seconds_per_tile": seconds / len(tiles), "n": len(tiles)}))


def train_worker(args) -> None:
    import time

    import torch

    from nucseg.engine.checkpoints import load_checkpoint
    from nucseg.engine.config import config_from_yaml
    from nucseg.engine.device import configure_malloc
    from nucseg.methods import get_method

    configure_malloc()
    torch.set_num_threads(args.threads)
    cfg = config_from_yaml(load_checkpoint(_model_path(args.model))["config"])
    model_cfg = dict(cfg.model)
    model_cfg.pop("encoder_weights", None)
    method = get_method(cfg.method)(model_cfg)
    model = method.build_model().to(memory_format=torch.channels_last)
    optimizers = {k: torch.optim.AdamW(v, 1e-3) for k, v in method.optimizer_groups(model).items()}
    import numpy as np

    from nucseg.data.synthetic import synthetic_sample
    from nucseg.engine.train import enter_stage

    samples = [synthetic_sample(256, 40, seed=i) for i in range(cfg.train.batch_size)]
    targets = [method.targets(s.instances) for s in samples]
    batch = {k: torch.from_numpy(np.stack([t[k] for t in targets])) for k in targets[0]}
    from nucseg.engine.infer import normalize

    x = normalize(torch.from_numpy(np.stack([s.image.transpose(2, 0, 1) for s in samples])))
    x = x.contiguous(memory_format=torch.channels_last)
    per_stage = {}
    for stage in method.stages():  # as the engine steps them (a GAN: generator, then discriminator)
        enter_stage(model, optimizers, stage)
        times = []
        for _ in range(args.train_steps + 1):
            t0 = time.perf_counter()
            for name, losses in method.training_step(model, x, batch, stage.name):
                optimizers[name].zero_grad()
                losses["total"].backward()
                optimizers[name].step()
            times.append(time.perf_counter() - t0)
        per_stage[stage.name] = sorted(times[1:])[len(times[1:]) // 2]
    print(json.dumps({"step_seconds": per_stage, "batch": cfg.train.batch_size}))


def run(mode: str, args) -> dict:
    cmd = [sys.executable, __file__, mode, "--model", args.model, "--threads", str(args.threads),
           "--tiles", str(args.tiles), "--pipeline-tiles", str(args.pipeline_tiles), "--data", args.data,
           "--train-steps", str(args.train_steps), "--precision", args.precision, "--crop", str(args.crop)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def _model_path(model):
    from nucseg.engine.segment import AUTO, DEFAULT_MODEL, resolve_model

    path = resolve_model(model)
    return DEFAULT_MODEL if path == AUTO else path  # H&E tiles: the H&E model


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", nargs="?", default="all", choices=["all", "segment-worker", "pipeline-worker", "train-worker"])
    ap.add_argument("--model", default="default")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tiles", type=int, default=4)
    ap.add_argument("--pipeline-tiles", type=int, default=12)
    ap.add_argument("--train-steps", type=int, default=5)
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data"))
    ap.add_argument("--crop", type=int, default=0)
    args = ap.parse_args()
    if args.mode == "segment-worker":
        return worker(args)
    if args.mode == "train-worker":
        return train_worker(args)
    if args.mode == "pipeline-worker":
        return pipeline_worker(args)
    seg = run("segment-worker", args)
    read, predict, post, write = seg["stages"]
    size = f"{args.crop}x{args.crop}" if args.crop else "1000x1000"
    print(f"model {args.model}, {args.threads} threads, {size} H&E tiles (MoNuSeg), median of {seg['n']}:")
    print(f"  end to end {seg['seconds']:.2f} s per tile (read {read:.2f}, predict {predict:.2f}, "
          f"post-process {post:.2f}, write labels+overlay+geojson+csv {write:.2f}); peak memory {seg['peak_mb']:.0f} MB")
    pipe = run("pipeline-worker", args)
    print(f"  nucseg segment on {pipe['n']} tiles (writes overlapped with the next prediction, model load included): "
          f"{pipe['seconds_per_tile']:.2f} s per tile")
    if args.train_steps:
        tr = run("train-worker", args)
        for stage, seconds in tr["step_seconds"].items():
            print(f"  training ({stage}): {seconds:.2f} s per step of {tr['batch']}x256x256 (forward, backward, AdamW)")


if __name__ == "__main__":
    main()
