"""nucseg against the StarDist peer, side by side in one run on the same 1000×1000 H&E tiles (MoNuSeg training tiles).

- StarDist: `../shared/peers/stardist_time.py` in its own venv (it needs TensorFlow, which nucseg must not depend
  on; created on first use with `pip install tensorflow-cpu stardist`). Its figure is seconds per tile from the
  decoded array (normalisation, CNN, NMS, rasterisation), excluding reading and writing, after a warm-up.
- nucseg: the whole `nucseg segment` process as a user runs it (start-up, model loading, reading, prediction,
  post-processing and all four outputs written), wall seconds divided by the tile count: a stricter figure.

Then the levers, each A/B in the same run: the forward runtime (OpenVINO vs torch) and, on CPUs with AMX, bf16
(opt-in: `--precision bf16`). Peak memory is each process's
maximum RSS. Only the ratio holds: timings on these machines move by 2x between days.

    python benchmarks/peers.py [--model he] [--tiles 13] [--threads 2] [--stardist-venv .venv-stardist] [--rounds 2]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from nucseg.engine.device import cpu_has_amx

ROOT = Path(__file__).resolve().parents[1]
PEERS = ROOT.parent / "shared" / "peers"


def stardist_python(venv: Path) -> Path:
    python = venv / "bin" / "python"
    if not python.is_file():
        print(f"creating the StarDist venv in {venv} (tensorflow-cpu, stardist) ...", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", "tensorflow-cpu", "stardist"], check=True)
    return python


def run_stardist(python: Path, tiles: list[Path], threads: int) -> dict:
    out = subprocess.run([str(python), str(PEERS / "stardist_time.py"), *map(str, tiles), "--threads", str(threads)],
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def run_nucseg(tiles: list[Path], threads: int, runtime: str, model: str = "he", precision: str = "auto") -> dict:
    """The whole `nucseg segment` command in a fresh process: wall seconds per tile and the child's peak RSS."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "in"
        folder.mkdir()
        for t in tiles:
            (folder / t.name).symlink_to(t)
        # `nucseg segment` exactly as the console script runs it, reporting its own peak RSS on the way out
        cmd = [sys.executable, "-c", _CLI_WITH_PEAK, "segment", str(folder), "--out", f"{tmp}/out", "--threads",
               str(threads), "--model", model, "--runtime", runtime, "--precision", precision]
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        t0 = time.perf_counter()
        out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout
        seconds = time.perf_counter() - t0
    peak = float(out.strip().splitlines()[-1].split()[-1]) / 1024
    return {"seconds_per_tile": seconds / len(tiles), "peak_rss_mib": peak}


_CLI_WITH_PEAK = ("import resource, sys; from nucseg.cli import main; rc = main(sys.argv[1:]); "
                  "print('peak_rss_kib', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss); sys.exit(rc)")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="he", help="shipped name, run directory or checkpoint (default: he)")
    ap.add_argument("--tiles", type=int, default=13)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=2, help="alternating rounds; the median of each is reported")
    ap.add_argument("--stardist-venv", default=str(ROOT / ".venv-stardist"))
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data"))
    args = ap.parse_args()
    tiles = sorted((Path(args.data) / "monuseg-train" / "images").glob("*.png"))[: args.tiles]
    python = stardist_python(Path(args.stardist_venv))
    run_nucseg(tiles[:1], args.threads, "openvino", args.model)  # fills the OpenVINO export cache, as any first run would
    # (label, runtime, precision); bf16 (opt-in, OpenVINO's bf16 kernels) only where the CPU has AMX
    variants = [("openvino", "openvino", "fp32"), ("torch", "torch", "fp32")]
    if cpu_has_amx():
        variants.append(("openvino bf16", "openvino", "bf16"))
    rows: dict[str, list] = {"stardist": [], **{label: [] for label, _, _ in variants}}
    peaks: dict[str, float] = {}
    for _ in range(args.rounds):  # alternate, so that a slow spell of the machine hits all of them alike
        sd = run_stardist(python, tiles, args.threads)
        rows["stardist"].append(sd["mean_s"])
        peaks["stardist"] = sd["peak_rss_mib"]
        for label, runtime, precision in variants:
            r = run_nucseg(tiles, args.threads, runtime, args.model, precision)
            rows[label].append(r["seconds_per_tile"])
            peaks[label] = max(peaks.get(label, 0), r["peak_rss_mib"])
    med = {k: sorted(v)[len(v) // 2] for k, v in rows.items()}
    print(f"model {args.model}; {len(tiles)} MoNuSeg tiles of 1000x1000, {args.threads} threads, "
          f"{args.rounds} alternating rounds:")
    print(f"  StarDist (from the decoded array, no writing)      {med['stardist']:.2f} s per tile   "
          f"peak {peaks.get('stardist', 0):.0f} MiB   rounds {', '.join(f'{x:.2f}' for x in rows['stardist'])}")
    for label, _, _ in variants:
        print(f"  nucseg segment, whole process, {label:13s} {med[label]:.2f} s per tile   "
              f"peak {peaks.get(label, 0):.0f} MiB   rounds {', '.join(f'{x:.2f}' for x in rows[label])}   "
              f"{med['stardist'] / med[label]:.2f}x StarDist's speed")
    print(f"  lever: OpenVINO vs torch forward, whole command {med['torch'] / med['openvino']:.2f}x")
    if "openvino bf16" in med:
        print(f"  lever: bf16 vs fp32 on OpenVINO, whole command {med['openvino'] / med['openvino bf16']:.2f}x")

if __name__ == "__main__":
    main()
