"""Segment image files with a trained model and write every output; one unreadable image never stops the others."""

from __future__ import annotations

import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path

from nucseg.data.modality import detect_modality  # noqa: F401 (re-exported: slide.py and users import it here)
from nucseg.io.images import IMAGE_EXTENSIONS, InputError, read_image
from nucseg.structures import Instances

WEIGHTS = Path(__file__).resolve().parent.parent / "weights"
# models shipped in the package, by name: `nucseg segment --model NAME` (see nucseg/weights/MODEL_CARD.md)
SHIPPED = {"he": "default.pt", "fluo": "fluo.pt", "weaveseg": "weaveseg.pt", "fourier-guide": "fourier-guide.pt",
           "frgnet": "frgnet.pt", "gensegnet": "gensegnet.pt", "sam-eunet3p": "sam-eunet3p.pt",
           "cfr-sam": "cfr-sam.pt"}
DEFAULT_MODEL = WEIGHTS / SHIPPED["he"]
AUTO = "auto"  # one shipped model per modality, chosen per image (`detect_modality`), as StarDist ships two


def resolve_model(model: str | None, checkpoint: str | None = None) -> Path | str:
    """--model: omitted, 'default' or 'auto' -> AUTO (the shipped H&E or fluorescence model, per image); a shipped
    name (he, fluo, weaveseg, fourier-guide, frgnet, gensegnet, sam-eunet3p) -> its file; a run directory or checkpoint file -> that; a method name with
    `checkpoint` -> that checkpoint, checked to belong to the method."""
    if checkpoint is not None:
        from nucseg.engine.checkpoints import load_checkpoint

        found = load_checkpoint(checkpoint)["method"]
        if model not in (None, "", "default", AUTO) and model != found:
            raise ValueError(f"{checkpoint}: a '{found}' checkpoint, not '{model}'")
        return Path(checkpoint)
    if model in (None, "", "default", AUTO):
        return AUTO
    if model in SHIPPED:
        path = WEIGHTS / SHIPPED[model]
        if not path.is_file():
            raise FileNotFoundError(f"{path}: the shipped model '{model}' is missing from this installation")
        return path
    path = Path(model)
    if path.exists():
        return path
    from nucseg.methods import list_methods

    if model in list_methods():
        raise ValueError(f"model '{model}' needs trained weights: add --checkpoint CKPT, or pass a run directory or "
                         "checkpoint to --model")
    raise FileNotFoundError(f"{model}: no such model, run directory or checkpoint (shipped: {', '.join(SHIPPED)})")


def collect_inputs(inputs: list[str]) -> list[Path]:
    files: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            files += sorted(f for f in p.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS)
        else:
            files.append(p)  # a missing file is reported per image, not here
    return files


@dataclass
class SegmentReport:
    rows: list[dict] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    load_seconds: float = 0.0  # spent loading models (and building or reading their exported graph)


def segment_files(inputs: list[str], out_dir: str | Path, model: str | None = None, outputs=("labels", "overlay",
                  "geojson", "csv"), mpp: float | None = None, batch_size: int | None = None, threads: int = 0,
                  tta: bool = False, precision: str = "auto", progress: bool = True,
                  checkpoint: str | None = None, runtime: str | None = None,
                  postprocess_in: str = "thread") -> SegmentReport:
    """`nucseg segment`: each image through `Model.segment`'s steps and `Result.save`, the Python API's, so the
    two give the same outputs. Holds `out_dir`'s lock while it runs (`nucseg.io.lock`). `postprocess_in`: where
    post-processing and writing run while the next image is predicted, a `thread` (default) or a spawned `process`
    (1.11x slower on 2 cores, docs/design.md; like any spawned worker it needs the caller's script guarded by
    `if __name__ == "__main__":`). A worker process that dies fails its image; the rest go on a thread."""
    if postprocess_in not in ("thread", "process"):
        raise ValueError(f"postprocess_in must be thread or process, not '{postprocess_in}'")
    from nucseg.engine.model import Model
    from nucseg.io.lock import output_lock

    files = collect_inputs(inputs)
    if not files:
        raise ValueError("no input images (png/jpg/tif) found")
    loaded = Model(model, checkpoint, runtime, precision, threads, batch_size, tta)  # a bad name fails before
    with output_lock(out_dir):  # one job per output folder: a second is refused, naming the first
        return _segment(files, Path(out_dir), loaded, outputs, mpp, progress, postprocess_in)


def _finish(method, class_names: dict, out_dir: Path, outputs, mpp: float | None, path: Path, image,
            result: Instances | dict, label: str) -> int:
    """Post-process `result` when it is still dense maps, write the outputs, return the nucleus count; runs on the
    background worker (a module-level function, so a worker process can run it too)."""
    from nucseg.result import Result

    inst = result if isinstance(result, Instances) else method.postprocess(result)
    Result(inst, image, class_names, mpp, label).save(out_dir, path.stem, outputs)
    return len(inst)


def _segment(files: list[Path], out_dir: Path, loaded, outputs, mpp: float | None, progress: bool,
             postprocess_in: str = "thread") -> SegmentReport:
    report = SegmentReport()
    items = files
    if progress:
        from tqdm import tqdm

        items = tqdm(files, desc="segment", unit="image")

    def collect(job) -> None:
        path, future, row = job
        try:
            row["nuclei"] = future.result()
            report.rows.append(row)
        except Exception as exc:
            report.failed.append((str(path), f"post-processing or writing failed: {type(exc).__name__}: {exc}"))

    # The main thread reads and runs the forward pass; post-processing and writing run on a background thread while
    # the next image is predicted (PNG encoding, scipy, OpenCV, OpenVINO and torch release the GIL). One image in
    # flight at a time, so memory stays bounded. A spawned process (not forked: OpenVINO's and torch's threads are
    # running) gets the maps and the image pickled.
    pending = None
    if postprocess_in == "process":
        import multiprocessing

        writer = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"))
    else:
        writer = ThreadPoolExecutor(max_workers=1)
    try:
        for path in items:
            try:
                t0 = time.perf_counter()
                image = read_image(path)
                used, predictor = loaded.predictor(image)
                # whole images within one block need no stitching: their post-processing can move off this thread
                result = predictor.dense(image) if predictor.single_pass(image, mpp) else predictor.segment(image, mpp)
            except InputError as exc:
                report.failed.append((str(path), exc.problem))
                continue
            except Exception as exc:  # keep going: report which image failed and why
                report.failed.append((str(path), f"{type(exc).__name__}: {exc}"))
                continue
            if pending is not None:
                collect(pending)
            label = loaded.name_for(used)
            row = {"image": path.name, "size": f"{image.shape[1]}×{image.shape[0]}", "model": label,
                   "seconds": time.perf_counter() - t0}
            job = (_finish, predictor.method, dict(predictor.class_names), out_dir, outputs, mpp, path, image, result,
                   label)
            try:
                future = writer.submit(*job)
            except BrokenProcessPool:  # the worker died (memory, a crash) with the last image: a thread takes over
                writer.shutdown(wait=False)
                writer = ThreadPoolExecutor(max_workers=1)
                future = writer.submit(*job)
            pending = (path, future, row)
        if pending is not None:
            collect(pending)
    finally:
        writer.shutdown()
    report.load_seconds = loaded.load_seconds
    return report
