"""`nucseg data convert`: any registered format -> the canonical layout, one atomic file at a time.

A source file that cannot be read is reported (file and problem) and skipped; every other file still converts.
dataset.json is written last and lists what was skipped and why, and what readers warned of, so a folder with a
dataset.json holds a finished conversion and says how complete it is. One job per destination folder (a lock).
"""

from __future__ import annotations

import json
from pathlib import Path

import nucseg
from nucseg.data.readers import read_samples
from nucseg.data.readers.base import Skipped, SourceWarning
from nucseg.io.images import write_image, write_label, write_text
from nucseg.io.lock import output_lock
from nucseg.labels import instances_to_class_map, relabel_sequential
from nucseg.structures import Sample


def write_sample(dst: Path, s: Sample) -> dict[int, int] | None:
    """Write one Sample into the canonical layout (ids made consecutive). Returns its classes by new id."""
    labels, old = relabel_sequential(s.instances)
    write_image(Path(dst) / "images" / f"{s.id}.png", s.image)
    write_label(Path(dst) / "labels" / f"{s.id}.png", labels)
    if s.classes is None:
        return None
    remapped = {k: s.classes.get(int(i), 0) for k, i in enumerate(old, start=1)}
    write_image(Path(dst) / "types" / f"{s.id}.png", instances_to_class_map(labels, remapped))
    return remapped


def convert(fmt: str, src: str | Path, dst: str | Path, progress: bool = False) -> dict:
    """Convert `src` (format `fmt`) into `dst`. Returns dataset.json's content: `images` converted, and `skipped`
    ([{file, problem}]) and `warnings` ([{file, warning}]) for the rest."""
    src, dst = Path(src), Path(dst)
    with output_lock(dst, f"nucseg data convert --format {fmt} {src}"):
        return _convert(fmt, src, dst, progress)


def _convert(fmt: str, src: Path, dst: Path, progress: bool) -> dict:
    skipped: list[Skipped] = []
    notes: list[SourceWarning] = []
    samples = read_samples(fmt, src, skipped, notes)
    if progress:
        from tqdm import tqdm

        samples = tqdm(samples, desc=f"convert {fmt}", unit="image")
    ids, classes_seen, class_names, mpps, modalities = [], set(), {}, set(), set()
    for s in samples:
        remapped = write_sample(dst, s)
        if remapped is not None:
            classes_seen.update(v for v in remapped.values() if v)
            class_names.update({int(k): v for k, v in (s.meta.get("class_names") or {}).items()})
        if s.meta.get("mpp"):
            mpps.add(float(s.meta["mpp"]))
        modalities.add(s.meta.get("modality"))
        ids.append(s.id)
    info = {
        "name": dst.name,
        "format": fmt,
        "images": len(ids),
        "classes": {str(c): class_names.get(c, f"class{c}") for c in sorted(classes_seen)},
        "modality": modalities.pop() if len(modalities) == 1 else "mixed",
        "mpp": mpps.pop() if len(mpps) == 1 else None,
        "provenance": {"source": str(src.resolve()), "converter": f"nucseg {nucseg.__version__}"},
        "skipped": [{"file": k.path, "problem": k.problem} for k in skipped],
        "warnings": [{"file": n.path, "warning": n.message} for n in notes],
    }
    write_text(dst / "dataset.json", json.dumps(info, indent=2))
    return info
