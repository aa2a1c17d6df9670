"""Where the watershed post-processing's time goes on 1000×1000 H&E tiles, and whether a batched path beats it.

The shipped `he` model predicts the dense maps of `--tiles` MoNuSeg tiles once (not timed). Then, single-threaded
as the post-processing thread runs in `nucseg segment`:
- per tile: `method.postprocess(maps)` (the shipped path) and its parts (thresholds, seed labelling, seed
  filtering, watershed, orphan components, small-instance removal, instance scores);
- batched: the tiles' maps stacked into one N×H×W volume, labelled and flooded once with a structuring element
  that does not connect planes (so each plane is segmented alone), then split back into tiles.
Both paths must give the same labels (checked; the differing pixel share is printed). Median of `--repeats`.

    python benchmarks/postprocess.py [--tiles 6] [--repeats 3] [--model he]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi
from skimage.segmentation import relabel_sequential, watershed

from nucseg.labels import remove_small_instances
from nucseg.postprocess.watershed import instances_from_maps, watershed_inputs

ROOT = Path(__file__).resolve().parents[1]


def maps_of(model: str, tiles: list[Path]) -> tuple[list[dict], object]:
    import nucseg
    from nucseg.io.images import read_image

    loaded = nucseg.load_model(model, threads=2)
    out, predictor = [], None
    for path in tiles:
        image = read_image(path)
        _, predictor = loaded.predictor(image)
        out.append(predictor.dense(image))
    return out, predictor.method


def maps(dense: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The U-Net's (foreground, interior, distance) for `instances_from_maps`, as its `postprocess` passes them."""
    return dense["prob"][1] + dense["prob"][2], dense["prob"][1], dense["distance"][0]


def parts(dense: dict, opts) -> tuple[dict[str, float], np.ndarray]:
    """Seconds of each step of `instances_from_maps` (`marker_watershed`'s steps, timed one by one), and the labels,
    which `main` checks against `instances_from_maps` so the copy cannot drift from it unnoticed."""
    t = [time.perf_counter()]
    fg, markers, elevation = watershed_inputs(*maps(dense), opts)
    t.append(time.perf_counter())
    seeds, _ = ndi.label(markers & fg)
    t.append(time.perf_counter())
    seeds = remove_small_instances(seeds, opts.min_marker_area)
    t.append(time.perf_counter())
    labels = watershed(elevation, seeds, mask=fg)
    t.append(time.perf_counter())
    orphans, n = ndi.label(fg & (labels == 0))
    if n:
        labels = np.where(orphans > 0, orphans + labels.max(), labels)
    t.append(time.perf_counter())
    labels = remove_small_instances(labels.astype(np.int32), opts.min_area)
    t.append(time.perf_counter())
    names = ["thresholds", "seed labels", "seed filter", "watershed", "orphans", "small-instance removal"]
    return {name: b - a for name, a, b in zip(names, t, t[1:])}, labels


def batched(denses: list[dict], opts) -> list[np.ndarray]:
    """`instances_from_maps` over a stack of tiles in one call of each scipy/skimage function."""
    fg, markers, elevation = (np.stack(x) for x in zip(*(watershed_inputs(*maps(d), opts) for d in denses)))
    in_plane = np.zeros((3, 3, 3), bool)
    in_plane[1] = ndi.generate_binary_structure(2, 1)  # ndi.label's and watershed's 2-D default: 4-connected
    seeds, _ = ndi.label(markers & fg, structure=in_plane)
    seeds = remove_small_instances(seeds, opts.min_marker_area)
    labels = watershed(elevation, seeds, mask=fg, connectivity=in_plane)
    orphans, n = ndi.label(fg & (labels == 0), structure=in_plane)
    if n:
        labels = np.where(orphans > 0, orphans + labels.max(), labels)
    labels = remove_small_instances(labels.astype(np.int32), opts.min_area)
    return [relabel_sequential(plane)[0] for plane in labels]


def median_seconds(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="he")
    ap.add_argument("--tiles", type=int, default=6)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data"))
    args = ap.parse_args()

    tiles = sorted((Path(args.data) / "monuseg-train/images").glob("*.png"))[: args.tiles]
    denses, method = maps_of(args.model, tiles)
    opts = method.config
    n = len(denses)

    per_tile = median_seconds(lambda: [method.postprocess(d) for d in denses], args.repeats) / n
    watershed_only = median_seconds(lambda: [instances_from_maps(*maps(d), opts) for d in denses], args.repeats) / n
    stacked = median_seconds(lambda: batched(denses, opts), args.repeats) / n

    reference = [instances_from_maps(*maps(d), opts) for d in denses]
    timed = [parts(d, opts) for d in denses]
    assert all(np.array_equal(labels, r) for (_, labels), r in zip(timed, reference)), "parts() drifted"
    steps = [s for s, _ in timed]
    reference = [relabel_sequential(r)[0] for r in reference]
    differ = sum(int((a != b).sum()) for a, b in zip(reference, batched(denses, opts)))
    share = differ / sum(r.size for r in reference)
    print(f"{n} tiles of {denses[0]['prob'].shape[1]}x{denses[0]['prob'].shape[2]}, {args.model}, 1 thread, "
          f"median of {args.repeats}, seconds per tile:")
    print(f"  postprocess (watershed + instance scores + types): {per_tile:.3f}")
    print(f"  instances_from_maps alone (per tile):              {watershed_only:.3f}")
    print(f"  batched over the {n} tiles:                         {stacked:.3f} "
          f"({watershed_only / stacked:.2f}x the per-tile path; pixels differing: {share:.2e})")
    print("  parts of the per-tile path (median over tiles): " + ", ".join(
        f"{k} {statistics.median(s[k] for s in steps):.3f}" for k in steps[0]))


if __name__ == "__main__":
    main()
