"""`nucseg compare`: several models on the same labelled images, scored by `nucseg evaluate`'s code, side by side.

Each model segments the images exactly as `nucseg segment` does (`segment_files`, label maps and type maps written
under OUT/models/<model>/<set>/) and each set is scored as `nucseg evaluate` scores it (`evaluate_folders`), so the
numbers are those a user gets from the two commands by hand. There is no second scorer.

Two ways to give the images:
- folders: `--images DIR --labels DIR [--types DIR]`, one set;
- a protocol (`--protocol he-cpu`, or any config file with a `data:` block): its validation split, written once to
  OUT/data/<set>/{images,labels,types}/ (types only for the sets that have them), one set per data set, so per-set
  scores and typed metrics (on the typed sets) come out too. A model whose own checkpoint config trained on some of
  these validation images is flagged (checked by set and id against the split it recorded; an `init_from` chain
  cannot be followed from a checkpoint and is named instead).

Outputs (each written atomically): compare.md (one row per model: means over all images, seconds per megapixel,
parameters; then AJI and PQ per set), compare.csv (one row per image and model), compare.png (per-image AJI and PQ
per model, box plots with the images as points). A model that fails is reported in the table and the rest go on.
"""

from __future__ import annotations

import csv
import io
import math
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from nucseg.io.images import write_text

# the columns of compare.md, from `evaluate_folders`' per-image rows (and the typed aggregate for mPQ+)
TABLE_COLUMNS = (("aji", "AJI"), ("aji_plus", "AJI+"), ("pq", "PQ"), ("dq", "DQ"), ("sq", "SQ"), ("dice", "Dice"),
                 ("f1_det", "F1 (det.)"))
CSV_COLUMNS = ("aji", "aji_plus", "pq", "dq", "sq", "dice", "miou", "f1_det", "precision_det", "recall_det",
               "hausdorff", "n_true", "n_pred")


@dataclass
class ImageSet:
    """One folder triple to segment and score: images, true label maps, true type maps (optional)."""

    name: str
    images: Path
    labels: Path
    types: Path | None = None


@dataclass
class ModelResult:
    label: str
    model: str
    error: str | None = None
    per_image: dict[str, dict[str, dict]] = field(default_factory=dict)  # {set: {stem: scores}}
    typed: dict[str, dict] = field(default_factory=dict)  # {set: bPQ, mPQ, mPQ+ ...} on the sets with types
    seconds: float = 0.0  # segment wall time, model loading excluded
    megapixels: float = 0.0
    parameters: int | None = None
    note: str = ""  # e.g. "trained on 4 of these validation images"
    diagnostics: list[str] = field(default_factory=list)  # the method's own per-image measures (CFR-SAM's prompts)

    def rows(self) -> list[dict]:
        return [r for rows in self.per_image.values() for r in rows.values()]

    def mean(self, key: str) -> float:
        from nucseg.metrics.typed import nanmean

        return nanmean([r.get(key) for r in self.rows()])


def model_label(model: str) -> str:
    """A short, file-safe name: a shipped name as is, a run directory by its name, a checkpoint by its stem (with
    its run directory where the stem is generic)."""
    path = Path(model)
    if path.suffix in (".ckpt", ".pt") and path.stem in ("tuned", "best", "last", "model"):
        text = f"{path.parent.name}-{path.stem}"
    elif path.suffix in (".ckpt", ".pt"):
        text = path.stem
    else:
        text = path.name or model
    return re.sub(r"[^\w.+-]", "_", text) or "model"


def _unique_labels(models: list[str]) -> list[str]:
    labels, seen = [], {}
    for m in models:
        base = model_label(m)
        seen[base] = seen.get(base, 0) + 1
        labels.append(base if seen[base] == 1 else f"{base}-{seen[base]}")
    return labels


def find_protocol(protocol: str) -> Path:
    """A protocol by name (configs/protocols/NAME.yaml, from the working directory or beside the package) or a path
    to any config whose `data:` block gives the validation split."""
    path = Path(protocol)
    if path.suffix in (".yaml", ".yml") or path.is_file():
        if not path.is_file():
            raise FileNotFoundError(f"{path}: protocol config not found")
        return path
    roots = [Path.cwd() / "configs" / "protocols", Path(__file__).resolve().parents[2] / "configs" / "protocols"]
    for root in roots:
        if (root / f"{protocol}.yaml").is_file():
            return root / f"{protocol}.yaml"
    known = sorted({p.stem for root in roots if root.is_dir() for p in root.glob("*.yaml")})
    raise FileNotFoundError(f"protocol '{protocol}' not found in {roots[0]} (known: {', '.join(known) or 'none'}; "
                            "or give a config file's path)")


def protocol_sets(protocol: str, out_dir: Path) -> tuple[list[ImageSet], dict[str, set[str]], Path, str]:
    """Write a protocol's validation images (as decoded for training: uint8, the config's channels) and their
    label and type maps under OUT/data/<set>/; returns the sets, {set: validation ids}, the config's path and its
    data root."""
    from nucseg.data.dataset import LoadedSet
    from nucseg.engine.config import load_config
    from nucseg.io.images import write_image, write_label
    from nucseg.labels import instances_to_class_map

    config = find_protocol(protocol)
    data = load_config(config).data
    sets, val_ids = [], {}
    for set_cfg in data.sets:
        if set_cfg.annotation != "labels":
            continue  # mask-only sets hold no validation images
        loaded = LoadedSet(set_cfg, data.root, data, "val")
        if not loaded.samples:
            continue
        root = out_dir / "data" / loaded.name
        typed = all(s.classes for s in loaded.samples)
        for s in loaded.samples:
            stem = str(s.id)
            write_image(root / "images" / f"{stem}.png", s.image)
            write_label(root / "labels" / f"{stem}.png", s.instances)
            if typed:
                write_image(root / "types" / f"{stem}.png", instances_to_class_map(s.instances, s.classes))
        sets.append(ImageSet(loaded.name, root / "images", root / "labels", root / "types" if typed else None))
        val_ids[loaded.name] = {str(s.id) for s in loaded.samples}
    if not sets:
        raise ValueError(f"{config}: its data block has no validation images")
    return sets, val_ids, config, data.root


def _training_overlap(checkpoint_cfg, val_ids: dict[str, set[str]], data_root: str) -> str:
    """What a checkpoint's own training split shares with the validation ids, by set name and id."""
    from nucseg.data.dataset import split_set_ids

    seen, sets = 0, []
    for set_cfg in checkpoint_cfg.data.sets:
        name = Path(set_cfg.path).name
        if name not in val_ids or set_cfg.synthetic is not None:
            continue
        root = Path(data_root) / name
        try:
            train, _ = split_set_ids(set_cfg, root, checkpoint_cfg.data)
        except (OSError, ValueError):
            continue
        shared = val_ids[name] & set(train)
        if shared:
            seen += len(shared)
            sets.append(f"{name} {len(shared)}")
    notes = []
    if seen:
        notes.append(f"trained on {seen} of these validation images ({', '.join(sets)})")
    if checkpoint_cfg.train.init_from:
        notes.append(f"initialised from {checkpoint_cfg.train.init_from} (its training data not checked)")
    return "; ".join(notes)


def _parameters(model_file, ckpt: dict) -> int:
    from nucseg.engine.checkpoints import build_from_checkpoint

    _, net, _ = build_from_checkpoint(model_file, ckpt)
    return int(sum(p.numel() for p in net.parameters()))


def _megapixels(report) -> float:
    """Megapixels of the images a `segment_files` report covers, from its rows' W×H (no second decode)."""
    return sum(int(w) * int(h) for w, h in (r["size"].split("×") for r in report.rows)) / 1e6


def _add_diagnostics(result: ModelResult, model_file: Path, ckpt: dict, image_set: ImageSet) -> None:
    """The method's own per-image measures (`Method.image_diagnostics`) merged into the set's per-image rows: images
    as the model sees them (its channels and stain normalisation), at their own resolution."""
    from nucseg.data.prepare import stain_normalizer
    from nucseg.engine.checkpoints import build_from_checkpoint
    from nucseg.engine.device import default_device
    from nucseg.io.images import read_image, read_label
    from nucseg.metrics.evaluate import index_folder

    method, model, cfg = build_from_checkpoint(model_file, ckpt)
    device = default_device()
    model.to(device)
    normalizer = stain_normalizer(cfg.data)
    images, labels = index_folder(image_set.images), index_folder(image_set.labels)
    for stem, row in result.per_image[image_set.name].items():
        image = read_image(images[stem])
        if normalizer is not None:
            image = normalizer.transform(image)
        found = method.image_diagnostics(model, image, read_label(labels[stem]), device, cfg.data.input_scale)
        row.update(found)
        result.diagnostics += [k for k in found if k not in result.diagnostics]


def compare(models: list[str], sets: list[ImageSet], out_dir: str | Path, val_ids: dict[str, set[str]] | None = None,
            data_root: str = "../shared/data", mpp: float | None = None, tta: bool = False, precision: str = "auto",
            runtime: str | None = None, threads: int = 0, progress: bool = True) -> list[ModelResult]:
    from nucseg.engine.checkpoints import load_checkpoint, method_from_checkpoint, resolve_checkpoint_file
    from nucseg.engine.segment import AUTO, collect_inputs, resolve_model, segment_files
    from nucseg.metrics.evaluate import evaluate_folders

    """Segment every set with every model and score it; failures are kept in the result, never raised. Methods
    with their own per-image measures (`Method.image_diagnostics`) add them, unless `mpp` resamples the images."""
    out_dir = Path(out_dir)
    for s in sets:
        if not collect_inputs([str(s.images)]):
            raise ValueError(f"{s.images}: no images (png/jpg/tif)")
    results = []
    labels = _unique_labels(models)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(models) * len(sets), desc="compare", unit="set")
    for model, label in zip(models, labels):
        result = ModelResult(label, model)
        results.append(result)
        diagnose = False
        try:
            resolved = resolve_model(model)
            if resolved != AUTO:
                model_file = resolve_checkpoint_file(resolved)
                ckpt = load_checkpoint(model_file)
                result.parameters = _parameters(model_file, ckpt)
                ckpt_method, ckpt_cfg = method_from_checkpoint(model_file, ckpt)
                diagnose = ckpt_method.has_diagnostics and mpp is None
                if val_ids:
                    result.note = _training_overlap(ckpt_cfg, val_ids, data_root)
            else:
                result.note = "he or fluo per image"
            for s in sets:
                pred = out_dir / "models" / label / s.name
                t0 = time.perf_counter()
                report = segment_files([str(s.images)], pred, model, ("labels",), mpp=mpp, threads=threads,
                                       tta=tta, precision=precision, progress=False, runtime=runtime)
                result.seconds += time.perf_counter() - t0 - report.load_seconds
                if report.failed:
                    path, problem = report.failed[0]
                    raise RuntimeError(f"{path}: {problem}" + (f" (and {len(report.failed) - 1} more images)"
                                                               if len(report.failed) > 1 else ""))
                pred_types = pred / "types" if s.types is not None and (pred / "types").is_dir() else None
                scored = evaluate_folders(s.labels, pred / "labels", s.types if pred_types else None, pred_types,
                                          progress=False)
                result.per_image[s.name] = scored["per_image"]
                if diagnose:
                    _add_diagnostics(result, model_file, ckpt, s)
                if pred_types is not None:
                    result.typed[s.name] = {k: scored[k] for k in ("bpq", "mpq", "mpq_plus", "acc_type",
                                                                   "f1_det_typed", "per_class")}
                result.megapixels += _megapixels(report)
                if bar is not None:
                    bar.update(1)
        except Exception as exc:  # report it and go on with the next model
            result.error = f"{type(exc).__name__}: {exc}"
            if bar is not None:
                bar.update(len(sets) - len(result.per_image))
            result.per_image, result.typed = {}, {}
    if bar is not None:
        bar.close()
    return results


def _fmt(value, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.{digits}f}"


def _parameters_text(n: int | None) -> str:
    return "–" if n is None else f"{n / 1e6:.2f} M"


def markdown(results: list[ModelResult], sets: list[ImageSet], title: str) -> str:
    from nucseg.metrics.typed import nanmean

    n_images = {s.name: max((len(r.per_image.get(s.name, {})) for r in results), default=0) for s in sets}
    typed_sets = [s.name for s in sets if s.types is not None]
    lines = [f"# {title}", "",
             f"{sum(n_images.values())} images ({', '.join(f'{k} {v}' for k, v in n_images.items())}); "
             "scores are means over images (`nucseg evaluate`'s per-image scores); s/MP: `nucseg segment` wall time "
             "per megapixel, model loading excluded." + (" mPQ+ (CoNIC) on " + ", ".join(typed_sets) + ", for "
                                                         "models that classify." if typed_sets else ""), ""]
    head = ["model", *[h for _, h in TABLE_COLUMNS]] + (["mPQ+"] if typed_sets else []) + ["s/MP", "parameters",
                                                                                            "notes"]
    lines += ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 2) + "---|"]
    for r in results:
        if r.error:
            lines.append(f"| {r.label} | " + " | ".join("–" for _ in head[1:-1]) + f" | failed: {r.error} |")
            continue
        cells = [_fmt(r.mean(k)) for k, _ in TABLE_COLUMNS]
        if typed_sets:
            vals = [r.typed[s]["mpq_plus"] for s in typed_sets if s in r.typed]
            cells.append(_fmt(float(np.mean(vals))) if vals else "–")
        cells += [_fmt(r.seconds / r.megapixels if r.megapixels else float("nan"), 2), _parameters_text(r.parameters)]
        lines.append(f"| {r.label} | " + " | ".join(cells) + f" | {r.note} |")
    if len(sets) > 1:
        lines += ["", "AJI / PQ per set:", "", "| model | " + " | ".join(s.name for s in sets) + " |",
                  "|---|" + "---:|" * len(sets)]
        for r in results:
            if r.error:
                continue
            cells = []
            for s in sets:
                rows = list(r.per_image.get(s.name, {}).values())
                cells.append(f"{_fmt(float(np.nanmean([x['aji'] for x in rows])))} / "
                             f"{_fmt(float(np.nanmean([x['pq'] for x in rows])))}" if rows else "–")
            lines.append(f"| {r.label} | " + " | ".join(cells) + " |")
    diagnosed = [r for r in results if not r.error and r.diagnostics]
    for keys in dict.fromkeys(tuple(r.diagnostics) for r in diagnosed):  # one table per kind of method
        group = [r for r in diagnosed if tuple(r.diagnostics) == keys]
        per_set = sets if len(sets) > 1 else []  # the first measure per set too
        lines += ["", "The methods' own measures (means over images; `Method.image_diagnostics`):", "",
                  "| model | " + " | ".join([*keys, *(f"{keys[0]} ({s.name})" for s in per_set)]) + " |",
                  "|---|" + "---:|" * (len(keys) + len(per_set))]
        for r in group:
            cells = [_fmt(r.mean(k)) for k in keys]
            for s in per_set:
                cells.append(_fmt(nanmean([x.get(keys[0]) for x in r.per_image.get(s.name, {}).values()])))
            lines.append(f"| {r.label} | " + " | ".join(cells) + " |")
    for set_name in typed_sets:
        typed = [(r, r.typed[set_name]) for r in results if not r.error and set_name in r.typed]
        if not typed:
            continue
        classes = sorted({c for _, t in typed for c in t["per_class"]}, key=lambda c: int(c))
        lines += ["", f"Nucleus types on {set_name} (bPQ; mPQ: PanNuke's; mPQ+: CoNIC's; type accuracy and F1 per "
                  "class of the matched nuclei):", "",
                  "| model | bPQ | mPQ | mPQ+ | accuracy | " + " | ".join(f"F1 class {c}" for c in classes) + " |",
                  "|---|" + "---:|" * (4 + len(classes))]
        for r, t in typed:
            cells = [_fmt(t[k]) for k in ("bpq", "mpq", "mpq_plus", "acc_type")]
            cells += [_fmt(t["per_class"].get(c, {}).get("f1")) for c in classes]
            lines.append(f"| {r.label} | " + " | ".join(cells) + " |")
    lines += ["", "Models: " + "; ".join(f"{r.label} = `{r.model}`" for r in results), ""]
    return "\n".join(lines)


def per_image_csv(results: list[ModelResult]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf)
    extra = list(dict.fromkeys(k for r in results for k in r.diagnostics))
    writer.writerow(["model", "set", "image", *CSV_COLUMNS, *extra])
    for r in results:
        for set_name, rows in r.per_image.items():
            for stem, row in rows.items():
                writer.writerow([r.label, set_name, stem, *[row.get(c) for c in (*CSV_COLUMNS, *extra)]])
    return buf.getvalue()


def plot(results: list[ModelResult], path: Path, title: str) -> None:
    """Per-image AJI and PQ per model: a box per model with every image as a point (jittered), medians marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in results if not r.error and r.rows()]
    fig, axes = plt.subplots(1, 2, figsize=(max(6.0, 1.3 * len(ok) + 3), 4.2), sharey=True)
    rng = np.random.default_rng(0)
    for ax, (key, name) in zip(axes, (("aji", "AJI"), ("pq", "PQ"))):
        data = [[x[key] for x in r.rows() if x.get(key) is not None and not math.isnan(x[key])] for r in ok]
        if ok:
            ax.boxplot(data, showfliers=False, widths=0.55, medianprops={"color": "black"})
            for i, values in enumerate(data, start=1):
                ax.scatter(i + rng.uniform(-0.18, 0.18, len(values)), values, s=9, alpha=0.55, zorder=3)
            ax.set_xticks(range(1, len(ok) + 1), [r.label for r in ok], rotation=30, ha="right")
        ax.set_title(f"{name} per image")
        ax.set_ylim(0, 1)
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_ylabel("score (one point per image)")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    plt.close(fig)
    from nucseg.io.images import atomic_path

    with atomic_path(path) as tmp:
        Path(tmp).write_bytes(buf.getvalue())


def write_report(results: list[ModelResult], sets: list[ImageSet], out_dir: str | Path, title: str) -> list[Path]:
    out_dir = Path(out_dir)
    paths = [out_dir / "compare.md", out_dir / "compare.csv", out_dir / "compare.png"]
    write_text(paths[0], markdown(results, sets, title))
    write_text(paths[1], per_image_csv(results))
    plot(results, paths[2], title)
    return paths
