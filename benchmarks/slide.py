"""`nucseg segment-slide` on pyramidal TIFF mosaics of real H&E tiles: time, nuclei per second and peak memory by
slide size, one process against Dask workers, and throughput against `nucseg segment` on the same tiles.

The mosaics are 2k², 4k² and 8k² pyramidal OME-TIFFs at 0.25 µm/px built from the MoNuSeg training tiles
(../shared/data, repeated and flipped to fill the area). Each run is a fresh process; its figure is wall seconds
for the whole command and the peak RSS of the process tree (the command and its worker processes). Goals
(issue #10): time linear in area, peak RSS flat (8k² within 1.3× of 2k²), and megapixels per second no lower than
`nucseg segment` on single 1000² tiles.

    python benchmarks/slide.py [--sizes 2000 4000 8000] [--workers 2] [--model he] [--work /tmp/nucseg-slide-bench]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def build_mosaic(data: Path, size: int, path: Path) -> Path:
    from nucseg.io.images import read_image
    from nucseg.io.slides import write_pyramid_tiff

    if path.is_file():
        return path
    tiles = [read_image(f)[:1000, :1000, :3] for f in sorted((data / "monuseg-train/images").glob("*.png"))]
    n = -(-size // 1000)
    rows = []
    for r in range(n):
        row = []
        for c in range(n):
            t = tiles[(r * n + c) % len(tiles)]
            row.append(t[::-1] if (r + c) % 2 else t[:, ::-1])  # flipped copies: no two neighbours identical
        rows.append(np.concatenate(row, 1))
    mosaic = np.concatenate(rows, 0)[:size, :size]
    return write_pyramid_tiff(path, mosaic, mpp=0.25)


def tree_rss_mib(pid: int) -> float:
    import psutil

    try:
        proc = psutil.Process(pid)
        procs = [proc, *proc.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0.0
    total = 0
    for p in procs:
        try:
            total += p.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total / 2**20


def timed(cmd: list[str]) -> tuple[float, float, str]:
    """(wall seconds, peak RSS of the process tree in MiB, stdout), sampling memory every 50 ms."""
    peak = [0.0]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def watch():
        while proc.poll() is None:
            peak[0] = max(peak[0], tree_rss_mib(proc.pid))
            time.sleep(0.05)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    out, err = proc.communicate()
    seconds = time.perf_counter() - t0
    watcher.join()
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{err[-2000:]}")
    return seconds, peak[0], out


def nuclei_count(out_dir: Path) -> int:
    import sqlite3

    db = next(out_dir.glob("*/nuclei.sqlite"))
    return sqlite3.connect(db).execute("SELECT count(*) FROM nuclei").fetchone()[0]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=[2000, 4000, 8000])
    ap.add_argument("--workers", type=int, default=2, help="Dask workers for the comparison row (0: skip it)")
    ap.add_argument("--model", default="he")
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data"))
    ap.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "nucseg-slide-bench"))
    args = ap.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    nucseg = [sys.executable, "-m", "nucseg.cli"]

    # reference: `nucseg segment` on single 1000² tiles (the first 8 MoNuSeg tiles), whole command
    tiles = sorted((Path(args.data) / "monuseg-train/images").glob("*.png"))[:8]
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([*nucseg, "segment", str(tiles[0]), "--out", f"{tmp}/warm", "--model", args.model],
                       check=True, capture_output=True)  # fills the OpenVINO export cache, as any first run would
        seconds, peak, _ = timed([*nucseg, "segment", *map(str, tiles), "--out", f"{tmp}/seg", "--model", args.model])
    seg_mpx = len(tiles) * 1.0 / seconds
    print(f"nucseg segment, {len(tiles)} tiles of 1000²: {seconds:.1f} s, {seg_mpx:.3f} MPx/s, peak {peak:.0f} MiB")

    print(f"{'slide':>8s} {'workers':>8s} {'seconds':>8s} {'MPx/s':>7s} {'nuclei':>8s} {'nuclei/s':>9s} "
          f"{'peak MiB':>9s}")
    rows = []
    for size in args.sizes:
        slide = build_mosaic(Path(args.data), size, work / f"mosaic-{size}.ome.tif")
        for workers in [0] + ([args.workers] if args.workers else []):
            out = work / f"out-{size}-{workers}"
            cmd = [*nucseg, "segment-slide", str(slide), "--out", str(out), "--model", args.model, "--restart"]
            if workers:
                cmd += ["--workers", str(workers)]
            seconds, peak, _ = timed(cmd)
            n = nuclei_count(out)
            mpx = size * size / 1e6 / seconds
            rows.append((size, workers, seconds, peak))
            print(f"{size:>7d}² {workers or 'local':>8} {seconds:8.1f} {mpx:7.3f} {n:8d} {n / seconds:9.0f} "
                  f"{peak:9.0f}", flush=True)
    local = [r for r in rows if r[1] == 0]
    if len(local) >= 2:
        (s0, _, t0, p0), (s1, _, t1, p1) = local[0], local[-1]
        print(f"time ratio {s1}² / {s0}²: {t1 / t0:.2f} for {(s1 / s0) ** 2:.0f}× the area; "
              f"peak RSS ratio {p1 / p0:.2f} (goal ≤ 1.3)")
        print(f"throughput {s1 * s1 / 1e6 / t1:.3f} MPx/s against segment's {seg_mpx:.3f} on single tiles "
              f"({s1 * s1 / 1e6 / t1 / seg_mpx:.2f}×)")


if __name__ == "__main__":
    main()
