"""`nucseg data convert`: any registered format -> the canonical layout, one atomic file at a time.

dataset.json is written last, so a folder with a dataset.json holds a complete conversion.
"""

from __future__ import annotations

import json
from pathlib import Path

import nucseg
from nucseg.data.readers import read_samples
from nucseg.io.images import write_image, write_label, write_text
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
    src, dst = Path(src), Path(dst)
    samples = read_samples(fmt, src)
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
    }
    write_text(dst / "dataset.json", json.dumps(info, indent=2))
    return info
