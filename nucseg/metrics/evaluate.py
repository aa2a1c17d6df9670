"""`nucseg evaluate`: score a folder of predicted label maps against a folder of true ones, paired by file stem.

Output JSON: {"per_image": {stem: scores}, "mean": scores averaged over images, "pooled": scores over all images
at once (AJI/AJI+ from summed intersections and unions, PQ from summed TP/FP/FN/IoU, Dice from summed pixels)},
plus "bpq", "mpq", "mpq_plus", "f1_type" and "per_class" when type maps are given.
"""

from __future__ import annotations

import csv
import itertools
import json
import math
import os
from pathlib import Path

import numpy as np

from nucseg.io.images import InputError, read_label, write_text
from nucseg.labels import class_map_to_instance_classes
from nucseg.metrics.instance import instance_scores
from nucseg.metrics.typed import TypedAccumulator, nanmean

LABEL_SUFFIXES = (".png", ".tif", ".tiff", ".npy", ".mat")
MAIN_COLUMNS = ("aji", "aji_plus", "dice", "dq", "sq", "pq", "f1_det", "hausdorff")


def index_folder(folder: Path) -> dict[str, Path]:
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(folder, "folder not found")
    files = {}
    for p in sorted(folder.iterdir()):
        if p.is_file() and p.suffix.lower() in LABEL_SUFFIXES:
            if p.stem in files:
                raise InputError(p, f"two label files share the stem '{p.stem}' ({files[p.stem].name})")
            files[p.stem] = p
    if not files:
        raise InputError(folder, f"no label files ({', '.join(LABEL_SUFFIXES)})")
    return files


def read_tissues(path: Path) -> dict[str, str]:
    """Tissue per stem from a JSON object {stem: tissue} or a CSV with two columns (stem, tissue)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "tissue file not found")
    if path.suffix.lower() == ".json":
        return {str(k): str(v) for k, v in json.loads(path.read_text()).items()}
    with open(path, newline="") as f:
        rows = [r for r in csv.reader(f) if r]
    if rows and rows[0][0].lower() in ("stem", "image", "id", "name"):
        rows = rows[1:]
    return {r[0]: r[1] for r in rows if len(r) >= 2}


def evaluate_folders(true_dir, pred_dir, true_types=None, pred_types=None, tissue_file=None,
                     allow_missing: bool = False, radius: float = 12.0, progress: bool = True) -> dict:
    truth = index_folder(true_dir)
    preds = index_folder(pred_dir)
    missing = sorted(set(truth) - set(preds))
    if missing and not allow_missing:
        raise InputError(pred_dir, f"no prediction for {len(missing)} image(s): {', '.join(missing[:20])}"
                         + (" ..." if len(missing) > 20 else "") + " (use --allow-missing to score them as empty)")
    extra = sorted(set(preds) - set(truth))
    if extra:
        raise InputError(true_dir, f"no ground truth for {len(extra)} prediction(s): {', '.join(extra[:20])}")
    tissues = read_tissues(tissue_file) if tissue_file else {}
    if (true_types is None) != (pred_types is None):
        raise ValueError("give both --true-types and --pred-types, or neither")
    stems = sorted(truth)
    typed = None
    if true_types is not None:
        # every image reports every class of the set (absent from an image's truth -> NaN, as PanNuke)
        class_ids = sorted({int(c) for stem in stems for c in np.unique(read_label(_typed_path(true_types, stem)))} - {0})
        typed = TypedAccumulator(class_ids=class_ids, radius=radius)

    # Images are scored in parallel, in order (the typed accumulator and the report follow the stems), at most two
    # per worker ahead so memory stays bounded. Without type maps the workers are forked processes (the metrics hold
    # the GIL often enough that threads scaled poorly); with them, threads, since the maps are needed here again.
    import multiprocessing
    from collections import deque
    from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor

    workers = min(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1, 8)
    keep_maps = typed is not None
    jobs = [(truth[stem], preds.get(stem), radius, keep_maps) for stem in stems]
    if not keep_maps and workers > 1 and "fork" in multiprocessing.get_all_start_methods() and len(stems) > 2:
        pool = ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("fork"))
    else:
        pool = ThreadPoolExecutor(max_workers=workers)

    queue = iter(jobs)
    # the first jobs go in now, so that worker processes are forked before any other thread (tqdm's) exists
    pending: deque = deque(pool.submit(_score_pair, *job) for job in itertools.islice(queue, 2 * workers))

    def in_order():
        while pending:
            done = pending.popleft().result()
            job = next(queue, None)
            if job is not None:
                pending.append(pool.submit(_score_pair, *job))
            yield done

    results = in_order()
    if progress and len(stems) > 5:
        from tqdm import tqdm

        results = tqdm(results, total=len(stems), desc="evaluate", unit="image")
    per_image: dict[str, dict] = {}
    for stem, (t, p, row) in zip(stems, results):
        if typed is not None:
            tc = class_map_to_instance_classes(t, read_label(_typed_path(true_types, stem)))
            pc = class_map_to_instance_classes(p, read_label(_typed_path(pred_types, stem))) if stem in preds else {}
            row.update(typed.add(stem, t, tc, p, pc, tissues.get(stem, "all")))
        per_image[stem] = row
    pool.shutdown()
    result = summarize(per_image)
    if typed is not None:
        agg = typed.aggregate()
        result.update({k: agg[k] for k in ("bpq", "mpq", "mpq_plus", "acc_type")})
        result["f1_det_typed"] = agg["f1_det"]
        result["per_class"] = agg["per_class"]
        result["per_tissue"] = agg.get("per_tissue", {})
    return result


def _score_pair(true_path: Path, pred_path: Path | None, radius: float, keep_maps: bool):
    """(true map, pred map, scores) of one pair; the maps only when `keep_maps` (a worker process sends the scores
    alone). A missing prediction scores as an empty map."""
    t = read_label(true_path)
    p = read_label(pred_path) if pred_path is not None else np.zeros_like(t)
    if p.shape != t.shape:
        raise InputError(pred_path, f"prediction size {p.shape[1]}×{p.shape[0]} differs from ground truth "
                         f"size {t.shape[1]}×{t.shape[0]}")
    row = instance_scores(t, p, radius=radius)
    return (t, p, row) if keep_maps else (None, None, row)


def _typed_path(folder, stem: str) -> Path:
    for ext in LABEL_SUFFIXES:
        p = Path(folder) / f"{stem}{ext}"
        if p.is_file():
            return p
    raise InputError(Path(folder), f"no type map for '{stem}'")


def _public(row: dict) -> dict:
    return {k: v for k, v in row.items() if not k.startswith("_")}


def summarize(per_image: dict[str, dict]) -> dict:
    rows = list(per_image.values())
    keys = [k for k in rows[0] if not k.startswith("_")] if rows else []
    mean = {k: nanmean([r.get(k) for r in rows]) for k in keys}
    s = {k: sum(r[k] for r in rows) for k in rows[0] if k.startswith("_")} if rows else {}
    pooled = {}
    if rows:
        tp, fp, fn = s["_tp"], s["_fp"], s["_fn"]
        dq = tp / (tp + 0.5 * fp + 0.5 * fn) if tp + fp + fn else 1.0
        sq = s["_iou_sum"] / (tp + 1e-6) if tp else (1.0 if tp + fp + fn == 0 else 0.0)
        pooled = {
            "aji": s["_aji_inter"] / s["_aji_union"] if s["_aji_union"] else 1.0,
            "aji_plus": s["_aji_plus_inter"] / s["_aji_plus_union"] if s["_aji_plus_union"] else 1.0,
            "dice": 2 * s["_fg_inter"] / s["_fg_total"] if s["_fg_total"] else 1.0,
            "dq": dq, "sq": sq, "pq": dq * sq,
            "n_true": int(sum(r["n_true"] for r in rows)), "n_pred": int(sum(r["n_pred"] for r in rows)),
        }
    return {"per_image": {k: _public(v) for k, v in per_image.items()}, "mean": mean, "pooled": pooled}


def format_table(result: dict, columns=MAIN_COLUMNS) -> str:
    def fmt(v):
        return "   nan" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:6.4f}"

    width = max([len(s) for s in result["per_image"]] + [6])
    lines = [f"{'image':{width}s}  " + "  ".join(f"{c:>8s}" for c in columns)]
    for stem, row in result["per_image"].items():
        lines.append(f"{stem:{width}s}  " + "  ".join(f"{fmt(row.get(c)):>8s}" for c in columns))
    for name in ("mean", "pooled"):
        row = result.get(name) or {}
        lines.append(f"{name:{width}s}  " + "  ".join(f"{fmt(row.get(c)) if c in row else '':>8s}" for c in columns))
    return "\n".join(lines)


def write_results(result: dict, out_json: Path | None = None, out_csv: Path | None = None) -> None:
    def clean(o):
        if isinstance(o, float) and math.isnan(o):
            return None
        if isinstance(o, dict):
            return {str(k): clean(v) for k, v in o.items()}
        if isinstance(o, (np.floating, np.integer)):
            return clean(o.item())
        return o

    if out_json:
        write_text(out_json, json.dumps(clean(result), indent=2))
    if out_csv:
        import io

        rows = result["per_image"]
        cols = list(next(iter(rows.values())).keys()) if rows else []
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(["image", *cols])
        for stem, row in rows.items():
            w.writerow([stem, *[row.get(c) for c in cols]])
        w.writerow(["mean", *[result["mean"].get(c) for c in cols]])
        write_text(out_csv, buf.getvalue())
