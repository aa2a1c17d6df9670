"""DSB2018 stage-1 train by image kind, and the stratified validation split of configs/protocols/fluo-cpu.yaml.

The kinds (BBBC038's own: fluorescent nuclei small and large, greyscale and colour brightfield, stained tissue) from
three measured properties, no hand labels: colour (mean |channel - grey|), whether the background is darker than
the nuclei (fluorescence), the background's brightness (colour brightfield: cells on white; stained tissue: a
purple/pink field), and the median nucleus area (small vs large fluorescent nuclei, at 400 px).
A random split under-samples the rare kinds (16 greyscale brightfield images of 664); this one draws
max(4, 10 %) of each kind with a seeded shuffle. The protocol names the chosen ids, so it does not depend on this
script staying the same; rerun it to see the kinds and counts:

    python benchmarks/dsb2018_kinds.py [--root ../shared/data/dsb2018-train] [--yaml]
"""

from __future__ import annotations

import argparse
import collections
from pathlib import Path

import numpy as np

from nucseg.data.readers.canonical import dataset_info, list_ids, read_canonical_one

KINDS = ("fluorescent-small", "fluorescent-large", "brightfield-grey", "brightfield-colour", "stained-tissue")


def image_kind(image: np.ndarray, labels: np.ndarray, small_area: float = 400.0) -> str:
    rgb = image[..., :3].astype(np.float32) if image.ndim == 3 else image[..., None].astype(np.float32)
    if image.dtype != np.uint8:
        rgb *= 255.0 / max(float(rgb.max()), 1.0)
    colour = float(np.abs(rgb - rgb.mean(-1, keepdims=True)).mean()) if rgb.shape[-1] == 3 else 0.0
    grey = rgb.mean(-1)
    nuclei = labels > 0
    background = float(grey[~nuclei].mean()) if (~nuclei).any() else float(grey.mean())
    foreground = float(grey[nuclei].mean()) if nuclei.any() else background
    if colour > 2.0:
        return "brightfield-colour" if background >= 195 else "stained-tissue"
    if background > foreground:
        return "brightfield-grey"
    _, areas = np.unique(labels[nuclei], return_counts=True)
    return "fluorescent-small" if areas.size and np.median(areas) < small_area else "fluorescent-large"


def kinds(root: Path) -> dict[str, str]:
    info = dataset_info(root)
    out = {}
    for i in list_ids(root):
        s = read_canonical_one(root, i, info)
        out[i] = image_kind(s.image, s.instances)
    return out


def stratified_val(kind_of: dict[str, str], fraction: float = 0.1, minimum: int = 4, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    chosen = []
    for kind in KINDS:
        ids = sorted(i for i, k in kind_of.items() if k == kind)
        rng.shuffle(ids)
        chosen += sorted(ids[: min(len(ids), max(minimum, round(fraction * len(ids))))])
    return chosen


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--root", default="../shared/data/dsb2018-train")
    p.add_argument("--yaml", action="store_true", help="print the val_ids list for the protocol")
    args = p.parse_args()
    kind_of = kinds(Path(args.root))
    val = stratified_val(kind_of)
    counts = collections.Counter(kind_of.values())
    val_counts = collections.Counter(kind_of[i] for i in val)
    print("| kind | images | validation |\n|---|---:|---:|")
    for k in KINDS:
        print(f"| {k} | {counts[k]} | {val_counts[k]} |")
    if args.yaml:
        for k in KINDS:
            print(f"      # {k}")
            for i in val:
                if kind_of[i] == k:
                    print(f"      - {i}")


if __name__ == "__main__":
    main()
