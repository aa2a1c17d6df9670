"""Trainable vs total parameters of a method's network, per top-level part (frozen SAM encoders, GAN discriminators).

    python benchmarks/parameters.py CONFIG.yaml|RUN_DIR|CKPT [--set key=value ...]

"Trainable" is what the method hands its optimisers (`Method.optimizer_groups`), so a frozen encoder counts as frozen
even before the engine sets requires_grad.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("source", help="a config YAML, a run directory or a checkpoint")
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    args = ap.parse_args()
    source = Path(args.source)
    if source.suffix in (".yaml", ".yml"):
        from nucseg.engine.config import load_config
        from nucseg.methods import get_method

        cfg = load_config(source, args.overrides)
        method = get_method(cfg.method)(cfg.model)
        model = method.build_model()
    else:
        from nucseg.engine.checkpoints import build_from_checkpoint

        method, model, cfg = build_from_checkpoint(source)
    trainable = {id(p) for params in method.optimizer_groups(model).values() for p in params}
    print(f"{source}: method {cfg.method}")
    print(f"{'part':24s} {'total':>12s} {'trainable':>12s}")
    total = train = 0
    for name, child in model.named_children():
        params = list(child.parameters())
        n = sum(p.numel() for p in params)
        t = sum(p.numel() for p in params if id(p) in trainable)
        total, train = total + n, train + t
        if n:
            print(f"{name:24s} {n:12,d} {t:12,d}")
    print(f"{'all':24s} {total:12,d} {train:12,d}")


if __name__ == "__main__":
    main()
