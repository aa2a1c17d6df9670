"""The `nucseg` command line: data convert, train, segment, evaluate, models.

Heavy imports (torch) happen inside the subcommands that need them, so `evaluate` and `data convert` start fast.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _cmd_train(args: argparse.Namespace) -> int:
    from nucseg.engine.config import load_config
    from nucseg.engine.train import train

    if args.resume:
        run_dir = Path(args.resume)
        cfg_path = run_dir / "config.yaml"
        if not cfg_path.is_file():
            raise FileNotFoundError(f"{cfg_path}: no config.yaml to resume from")
        cfg = load_config(cfg_path, args.set)
        result = train(cfg, run_dir, resume=True)
    else:
        if args.config is None:
            raise ValueError("give a CONFIG.yaml (or --resume RUN_DIR)")
        cfg = load_config(args.config, args.set)
        out = Path(args.out) if args.out else Path("runs") / Path(args.config).stem
        result = train(cfg, out, resume=False)
    print({k: round(v, 4) if isinstance(v, float) else v for k, v in result.items() if "/" not in k})
    return 0


def _cmd_models(args: argparse.Namespace) -> int:
    from nucseg.models import describe, list_models

    for name in list_models():
        print(f"{name:16s} {describe(name)}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    import nucseg

    parser = argparse.ArgumentParser(prog="nucseg", description="Nuclei instance segmentation and classification.")
    parser.add_argument("--version", action="version", version=f"nucseg {nucseg.__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a method from a YAML config")
    p.add_argument("config", nargs="?", help="CONFIG.yaml")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config value")
    p.add_argument("--out", help="run directory (default runs/<config name>)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue a run from its last.ckpt")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("models", help="list the registered models")
    p.set_defaults(func=_cmd_models)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError) as exc:
        print(f"nucseg: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
