"""Scores of trained runs on a validation split (never a test set): a thin caller of `nucseg compare --protocol`,
kept so the commands in the docs still run. The split is `--data-from CONFIG`'s, else the first run's own.

    python benchmarks/validation.py RUN_DIR|CKPT [RUN_DIR|CKPT ...] [--data-from CONFIG] [--out DIR]
        [--precision fp32|bf16] [--tta] [--threads N] [--runtime torch|openvino]

Same as `nucseg compare RUN... --protocol CONFIG --out DIR`: compare.md (means over images, per set, nucleus types
on typed sets), compare.csv (per image), compare.png.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from nucseg.cli import main as nucseg_main


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--data-from", help="a config whose validation split to use (default: the first run's)")
    ap.add_argument("--out", help="where compare writes (default: a temporary folder)")
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--tta", action="store_true")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runtime", default=None)
    args = ap.parse_args()
    protocol = args.data_from
    if protocol is None:
        first = Path(args.runs[0])
        protocol = str(first / "config.yaml" if first.is_dir() else first.parent / "config.yaml")
    out = args.out or tempfile.mkdtemp(prefix="nucseg-validation-")
    argv = ["compare", *args.runs, "--protocol", protocol, "--out", out, "--precision", args.precision,
            "--threads", str(args.threads)] + (["--tta"] if args.tta else []) + (
            ["--runtime", args.runtime] if args.runtime else [])
    return nucseg_main(argv)


if __name__ == "__main__":
    sys.exit(main())
