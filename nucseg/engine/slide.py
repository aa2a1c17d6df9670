"""Whole slides through any method: tiles stream read -> predict -> post-process -> record, then the outputs are
assembled as streams. Memory is set by the tile size and batch, not by the slide; a killed job resumes.

The unit of work is a tile: a core of `tile - 2·margin` pixels (at the model's resolution) read with `margin` pixels
of context on each side, predicted in one forward pass and post-processed on its own. A nucleus belongs to the tile
whose core holds its centroid (`nucseg.postprocess.tiles`, which `Predictor.segment` uses for large images too, so a
slide's labels equal `segment` on the same pixels), and a method added later gets slides by implementing
`postprocess` as it already must.

Finished tiles go to a ledger (`<out>/<stem>/.job.sqlite`, one committed row per tile) as they complete, in any
order; the outputs are assembled from it in tile order once every tile is in. A job killed at any moment and started
again with the same command skips the recorded tiles and ends with the same files as an uninterrupted run.

Post-processing runs on worker processes fed by the predictor (`post_workers`), so an accelerator need not wait for
the CPU; with `workers` or `scheduler`, whole tiles run on a Dask cluster instead (each worker loads the model once).
"""

from __future__ import annotations

import io
import json
import math
import os
import sqlite3
import time
from collections import deque
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np

from nucseg.io.images import InputError
from nucseg.io.slides import Slide, TissueMask, open_slide, tissue_mask
from nucseg.labels import instance_outlines, instance_properties
from nucseg.postprocess.tiles import Tile, default_tile, owned, pad_to_tile, plan_tiles

LEDGER = ".job.sqlite"


@dataclass
class SlidePlan:
    """Where a slide is read and how it is cut. Work pixels are at the model's resolution."""

    level: int
    scale: float  # work pixels per pixel of `level`
    work_size: tuple[int, int]  # width, height in work pixels
    to_level0: float  # level-0 pixels per work pixel
    mpp: float | None  # µm per work pixel
    tile: int
    margin: int
    grid: tuple[int, int]  # tile columns, rows
    tiles: list[Tile] = field(default_factory=list)  # those with tissue
    # the method's per-image side input, decided once from the slide's thumbnail (Method.image_planes), or None
    image_planes: tuple[float, ...] | None = None

    def settings(self) -> dict:
        d = asdict(self)
        d.pop("tiles")
        d.pop("image_planes")  # derived from the slide and the model, which the settings already pin
        d["tile_indices"] = [t.index for t in self.tiles]
        return d


def plan_slide(slide: Slide, model_mpp: float | None, tile: int | None, margin: int, tissue: TissueMask | None,
               min_tissue: float = 0.01, default_window: int = 1024) -> SlidePlan:
    """Read the level nearest the model's resolution and resample it to that resolution (to the level itself when
    the two are within 5 %, as `segment` does); cut it into tiles, keeping those whose core holds tissue."""
    level = slide.best_level(model_mpp)
    d = slide.level_downsamples[level]
    scale = 1.0
    if model_mpp and slide.mpp:
        scale = slide.mpp * d / model_mpp
        if abs(scale - 1.0) <= 0.05:
            scale = 1.0
    lw, lh = slide.level_dimensions[level]
    work = (max(round(lw * scale), 1), max(round(lh * scale), 1))
    to_level0 = d / scale
    mpp = slide.mpp * d / scale if slide.mpp else None

    def has_tissue(box) -> bool:
        return tissue is None or tissue.fraction(*(v * to_level0 for v in box)) >= min_tissue

    tile = tile or default_tile(default_window, margin, *work)  # the size `segment` picks for this picture
    grid, tiles = plan_tiles(work[0], work[1], tile, margin, has_tissue)
    return SlidePlan(level, scale, work, to_level0, mpp, tile, margin, grid, tiles)


def read_work_region(slide: Slide, plan: SlidePlan, box: tuple[int, int, int, int]) -> np.ndarray:
    """RGB uint8 of work-pixel box (x0, y0, x1, y1): the level's pixels, resampled when the plan's scale is not 1."""
    x0, y0, x1, y1 = box
    if plan.scale == 1.0:
        return slide.read_region(plan.level, x0, y0, x1 - x0, y1 - y0)
    import cv2

    s = plan.scale
    lx0, ly0 = math.floor(x0 / s) - 1, math.floor(y0 / s) - 1
    lx1, ly1 = math.ceil(x1 / s) + 2, math.ceil(y1 / s) + 2
    src = slide.read_region(plan.level, lx0, ly0, lx1 - lx0, ly1 - ly0)
    # work pixel u has its centre at (u + 0.5) / s in level corner coordinates: an exact inverse map per tile, so
    # neighbouring tiles sample the level on one grid
    affine = np.array([[1 / s, 0, (x0 + 0.5) / s - 0.5 - lx0], [0, 1 / s, (y0 + 0.5) / s - 0.5 - ly0]], np.float64)
    return cv2.warpAffine(src, affine, (x1 - x0, y1 - y0), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                          borderMode=cv2.BORDER_REFLECT)


def read_tile(slide: Slide, plan: SlidePlan, tile: Tile) -> np.ndarray:
    """The tile's region, padded to tile × tile as `Predictor.segment_tiles` pads: one shape for every pass."""
    return pad_to_tile(read_work_region(slide, plan, tile.region), plan.tile)


def finish_tile(method, dense: dict[str, np.ndarray], image: np.ndarray, tile: Tile, plan: SlidePlan) -> bytes:
    """Post-process one tile and keep the nuclei whose centroid lies in its core; return them packed (npz bytes):
    their labels over the region, outlines as WKB in level-0 pixel coordinates, measurements and classes.
    Runs on post-processing worker processes."""
    import shapely

    x0, y0, x1, y1 = tile.region
    h, w = y1 - y0, x1 - x0
    inst = method.postprocess({k: v[:, :h, :w] for k, v in dense.items()})
    local, old = owned(inst, tile)
    outlines = instance_outlines(local)
    props = instance_properties(local, image[:h, :w], plan.mpp, outlines)
    f = plan.to_level0
    # centroids in level-0 pixels (pixel centres: work pixel u is level-0 (u + 0.5)·f - 0.5); the properties hold
    # them in µm when the resolution is known
    unit = plan.mpp or 1.0
    props["centroid_x"] = (props["centroid_x"] / unit + x0 + 0.5) * f - 0.5
    props["centroid_y"] = (props["centroid_y"] / unit + y0 + 0.5) * f - 0.5
    geoms = [outlines[k] for k in range(1, old.size + 1)]
    shift = np.array([x0, y0], np.float64)
    wkb = [shapely.to_wkb(shapely.transform(g, lambda xy: (xy + shift) * f)) for g in geoms]
    packed = {f"prop_{k}": np.asarray(v, np.float64) for k, v in props.items() if k != "id"}
    packed["labels"] = local.astype(np.uint16 if old.size < 65536 else np.int32)
    packed["origin"] = np.array([y0, x0])
    packed["classes"] = np.array([inst.classes.get(int(i), 0) for i in old], np.int64)
    packed["scores"] = np.array([inst.scores.get(int(i), np.nan) for i in old], np.float64)
    packed["wkb"] = np.frombuffer(b"".join(wkb), np.uint8)
    packed["wkb_ends"] = np.cumsum([len(b) for b in wkb]).astype(np.int64)
    buf = io.BytesIO()
    np.savez_compressed(buf, **packed)
    return buf.getvalue()


def unpack_tile(payload: bytes) -> dict:
    with np.load(io.BytesIO(payload), allow_pickle=False) as z:
        ends = z["wkb_ends"]
        blob = z["wkb"].tobytes()
        starts = np.concatenate([[0], ends[:-1]]).astype(int)
        return {"labels": z["labels"], "origin": z["origin"], "classes": z["classes"], "scores": z["scores"],
                "props": {k[5:]: z[k] for k in z.files if k.startswith("prop_")},
                "wkb": [blob[a:b] for a, b in zip(starts, ends.astype(int))]}


class Ledger:
    """Finished tiles of one slide job, one committed row each (SQLite: a kill loses at most the tile in flight).
    The job's settings are stored with it: resuming with other settings is refused rather than mixed."""

    def __init__(self, path: Path, settings: dict):
        self.path = path
        self.db = sqlite3.connect(path)
        self.db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT)")
        self.db.execute("CREATE TABLE IF NOT EXISTS tiles (idx INTEGER PRIMARY KEY, payload BLOB, error TEXT)")
        stored = self.db.execute("SELECT value FROM meta WHERE key = 'settings'").fetchone()
        text = json.dumps(settings, sort_keys=True)
        if stored is None:
            self.db.execute("INSERT INTO meta VALUES ('settings', ?)", (text,))
            self.db.commit()
        elif stored[0] != text:
            old, new = json.loads(stored[0]), settings
            diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
            self.db.close()
            raise ValueError(f"{path}: this folder holds a job started with other settings ({', '.join(diff)}); "
                             "use another --out, or --restart to discard it")

    def done(self) -> set[int]:
        return {r[0] for r in self.db.execute("SELECT idx FROM tiles WHERE error IS NULL")}

    def record(self, index: int, payload: bytes | None, error: str | None = None) -> None:
        self.db.execute("INSERT OR REPLACE INTO tiles VALUES (?, ?, ?)", (index, payload, error))
        self.db.commit()

    def errors(self) -> list[tuple[int, str]]:
        return list(self.db.execute("SELECT idx, error FROM tiles WHERE error IS NOT NULL ORDER BY idx"))

    def payloads(self):
        for (payload,) in self.db.execute("SELECT payload FROM tiles WHERE error IS NULL ORDER BY idx"):
            yield payload

    def close(self) -> None:
        self.db.close()


@dataclass
class SlideReport:
    slide: str
    out: str = ""
    tiles: int = 0
    tissue_tiles: int = 0
    resumed_tiles: int = 0
    failed_tiles: list[str] = field(default_factory=list)
    nuclei: int = 0
    seconds: float = 0.0
    assemble_seconds: float = 0.0  # of `seconds`: writing the final files from the recorded tiles
    message: str = ""


@lru_cache(maxsize=4)
def _worker_predictor(model_file: str, runtime: str | None, threads: int):
    """One predictor per worker process and model (Dask workers keep it between tasks)."""
    from nucseg.engine.model import load_predictor

    return load_predictor(model_file, runtime=runtime, threads=threads)


@lru_cache(maxsize=8)
def _worker_slide(path: str, mpp: float | None) -> Slide:
    return open_slide(path, mpp)


def run_tiles(slide_path: str, mpp: float | None, model_file: str, runtime: str | None, threads: int,
              plan: SlidePlan, tiles: list[Tile]) -> list[tuple[int, bytes | None, str | None]]:
    """Read, predict and post-process `tiles` in one worker: the Dask task. Returns (index, payload, error)."""
    predictor = _worker_predictor(model_file, runtime, threads)
    predicted, failed = predict_tiles(predictor, read_tiles(_worker_slide(slide_path, mpp), plan, tiles),
                                      plan.image_planes)
    out = [(t.index, None, error) for t, error in failed]
    for t, image, maps in predicted:  # the task's tiles are one forward batch (--batch-size)
        try:
            out.append((t.index, finish_tile(predictor.method, maps, image, t, plan), None))
        except Exception as exc:
            out.append((t.index, None, tile_error(t, exc)))
    return out


def read_tiles(slide: Slide, plan: SlidePlan, tiles: list[Tile]) -> list[tuple[Tile, np.ndarray | None, str | None]]:
    """(tile, image, None), or (tile, None, error) for a tile that cannot be read."""
    out = []
    for t in tiles:
        try:
            out.append((t, read_tile(slide, plan, t), None))
        except Exception as exc:
            out.append((t, None, tile_error(t, exc)))
    return out


def predict_tiles(predictor, items, planes=None) -> tuple[list[tuple[Tile, np.ndarray, dict]], list[tuple[Tile, str]]]:
    """The readable tiles of `read_tiles` through one forward batch: ((tile, image, maps)...), ((tile, error)...).
    `planes`: the slide's side input for a method that takes one (`SlidePlan.image_planes`)."""
    failed = [(t, error) for t, _, error in items if error is not None]
    good = [(t, image) for t, image, error in items if error is None]
    if not good:
        return [], failed
    try:
        planes = None if planes is None else np.asarray(planes, np.float32)
        dense = predictor.dense_batch([image for _, image in good], planes)
    except Exception as exc:
        return [], failed + [(t, tile_error(t, exc)) for t, _ in good]
    return [(t, image, maps) for (t, image), maps in zip(good, dense)], failed


def tile_error(tile: Tile, exc: Exception) -> str:
    x0, y0, x1, y1 = tile.core
    what = exc.problem if isinstance(exc, InputError) else f"{type(exc).__name__}: {exc}"
    return f"tile {tile.index} (work pixels x {x0}-{x1}, y {y0}-{y1}): {what}"


def segment_slides(slides: list[str], out_dir: str | Path, model: str | None = None, mpp: float | None = None,
                   tile: int | None = None, margin: int | None = None, batch_size: int = 1,
                   post_workers: int | None = None, workers: int = 0, scheduler: str | None = None,
                   use_tissue: bool = True, runtime: str | None = None, threads: int = 0, restart: bool = False,
                   progress: bool = True, on_tile=None) -> list[SlideReport]:
    """Segment each slide into `out_dir/<stem>/`. `on_tile(index)` is called after each recorded tile (tests use
    it to interrupt a job). Returns one report per slide: a slide that cannot be read, or whose folder holds a job
    with other settings, is reported (`message`, no `out`) and the others go on. The job holds `out_dir`'s lock
    (`nucseg.io.lock`): while it runs, another job into the same folder raises FolderLocked."""
    from nucseg.engine.device import configure_malloc, set_threads
    from nucseg.engine.segment import resolve_model
    from nucseg.io.lock import output_lock

    configure_malloc()
    set_threads(threads)
    resolved = resolve_model(model)
    with output_lock(out_dir):  # a second job into this folder is refused here, naming the first
        job = _Job(resolved, Path(out_dir), mpp, tile, margin, batch_size, post_workers, use_tissue, runtime,
                   restart, progress, on_tile, threads)
        job.client = _dask_client(workers, scheduler) if (workers or scheduler) else None
        reports = []
        try:
            for path in slides:
                report = SlideReport(str(path))
                reports.append(report)
                t0 = time.perf_counter()
                try:
                    with open_slide(path, mpp) as slide:
                        job.run(path, slide, report)
                except (InputError, ValueError, OSError) as exc:
                    report.message = exc.problem if isinstance(exc, InputError) else str(exc)
                report.seconds = time.perf_counter() - t0
        finally:
            if job.client is not None:
                job.client.close()
    return reports


@dataclass
class _Job:
    """The settings shared by every slide of one `segment_slides` call, and the models it has loaded."""

    resolved: object
    out_dir: Path
    mpp: float | None
    tile: int | None
    margin: int | None
    batch_size: int
    post_workers: int | None
    use_tissue: bool
    runtime: str | None
    restart: bool
    progress: bool
    on_tile: object
    threads: int = 0  # CPU threads of the forward pass (0: all)
    client: object = None
    predictors: dict = field(default_factory=dict)

    def model_file(self, thumb: np.ndarray) -> str:
        from nucseg.engine.checkpoints import resolve_checkpoint_file
        from nucseg.engine.segment import AUTO, SHIPPED, WEIGHTS, detect_modality

        if self.resolved == AUTO:
            return str(resolve_checkpoint_file(WEIGHTS / SHIPPED[detect_modality(thumb)]))
        return str(resolve_checkpoint_file(self.resolved))

    def _image_planes(self, model_file: str, thumb: np.ndarray):
        """The slide's side input, from its thumbnail (None for the methods without one). With Dask the model
        lives in the workers: a predictor is built here only for a method that takes planes."""
        predictor = self.predictors.get(model_file)
        if predictor is None:
            from nucseg.engine.checkpoints import load_checkpoint, method_from_checkpoint
            from nucseg.engine.model import load_predictor

            if not method_from_checkpoint(model_file, load_checkpoint(model_file))[0].image_plane_count:
                return None
            predictor = self.predictors[model_file] = load_predictor(model_file, runtime=self.runtime,
                                                                     threads=self.threads)
        return predictor.image_planes_of(thumb)

    def run(self, path, slide: Slide, report: SlideReport) -> None:
        from nucseg.engine.model import load_predictor

        thumb, thumb_down = slide.thumbnail()
        model_file = self.model_file(thumb)
        if self.client is None and model_file not in self.predictors:
            self.predictors[model_file] = load_predictor(model_file, runtime=self.runtime, threads=self.threads)
        cfg = _checkpoint_infer(model_file, self.predictors.get(model_file))
        tissue = tissue_mask(thumb, thumb_down) if self.use_tissue else None
        border = cfg["block_margin"] if self.margin is None else self.margin
        plan = plan_slide(slide, cfg["mpp"], self.tile, border, tissue, default_window=cfg["window"])
        planes = self._image_planes(model_file, thumb)
        plan.image_planes = None if planes is None else tuple(float(v) for v in planes)
        stem = Path(path).name.split(".")[0]
        job_dir = self.out_dir / stem
        job_dir.mkdir(parents=True, exist_ok=True)
        if self.restart:
            (job_dir / LEDGER).unlink(missing_ok=True)
        settings = {"slide": str(Path(path).resolve()), "size": slide.dimensions, "mpp": slide.mpp,
                    "model": _file_digest(model_file), **plan.settings()}
        ledger = Ledger(job_dir / LEDGER, settings)
        try:
            done = ledger.done()
            todo = [t for t in plan.tiles if t.index not in done]
            report.tiles, report.tissue_tiles = plan.grid[0] * plan.grid[1], len(plan.tiles)
            report.resumed_tiles = len(plan.tiles) - len(todo)
            bar = _progress(len(plan.tiles), report.resumed_tiles, Path(path).name, self.progress)

            def record(index, payload, error):
                ledger.record(index, payload, error)
                bar.update(1)
                if self.on_tile is not None:
                    self.on_tile(index)

            if self.client is not None:
                _run_on_dask(self.client, str(path), self.mpp, model_file, self.runtime, plan, todo,
                             self.batch_size, record)
            else:
                _run_local(slide, self.predictors[model_file], plan, todo, self.batch_size, self.post_workers,
                           record)
            bar.close()
            report.failed_tiles = [e for _, e in ledger.errors()]
            t1 = time.perf_counter()
            report.nuclei, _ = _assemble(ledger, plan, job_dir, stem, thumb, thumb_down, tissue, settings,
                                         cfg["class_names"])
            report.assemble_seconds = time.perf_counter() - t1
            report.out = str(job_dir)
            if not plan.tiles:
                report.message = "no tissue found (outputs are empty; --no-tissue-mask reads every tile)"
        finally:
            ledger.close()


def _checkpoint_infer(model_file: str, predictor) -> dict:
    """The model's infer settings (window, mpp, margin) and class names, from its predictor or, for Dask, from the
    file."""
    if predictor is not None:
        c, names = predictor.cfg, predictor.class_names
    else:
        from nucseg.engine.checkpoints import load_checkpoint, method_from_checkpoint

        run = method_from_checkpoint(model_file, load_checkpoint(model_file))[1]
        c, names = run.infer, dict(run.data.class_names)
    return {"window": c.window, "mpp": c.mpp, "block_margin": c.block_margin, "class_names": names}


def _file_digest(path: str) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:24]


def _progress(total: int, initial: int, name: str, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc=name, unit="tile", disable=not enabled, smoothing=0.1)


def _run_local(slide: Slide, predictor, plan: SlidePlan, todo: list[Tile], batch_size: int,
               post_workers: int | None, record) -> None:
    """Reading on a thread (one batch ahead), the forward pass here, post-processing on worker processes; at most a
    few tiles in flight so memory stays flat."""
    import multiprocessing as mp

    cores = os.cpu_count() or 2
    # on two cores a process would only add start-up and copies: one thread overlaps post-processing with the
    # forward pass as `segment` does (scipy, GDAL, GEOS and zlib release the GIL); with more, processes scale
    threaded = post_workers is None and cores <= 2
    if post_workers is None:
        post_workers = max(cores - 1, 1)
    batches = [todo[i : i + max(batch_size, 1)] for i in range(0, len(todo), max(batch_size, 1))]
    if not batches:
        return

    if threaded:
        pool = ThreadPoolExecutor(1)
    else:
        pool = ProcessPoolExecutor(post_workers, mp_context=mp.get_context("spawn")) if post_workers > 0 else None
    pending: deque = deque()
    limit = 2 * max(post_workers, 1)

    def drain(keep: int) -> None:
        while len(pending) > keep:
            t, fut = pending.popleft()
            try:
                record(t.index, fut.result() if pool else fut, None)
            except Exception as exc:
                record(t.index, None, tile_error(t, exc))

    try:
        with ThreadPoolExecutor(1) as reader:
            ahead = reader.submit(read_tiles, slide, plan, batches[0])
            for k in range(len(batches)):
                items = ahead.result()
                if k + 1 < len(batches):
                    ahead = reader.submit(read_tiles, slide, plan, batches[k + 1])
                predicted, failed = predict_tiles(predictor, items, plan.image_planes)
                for t, error in failed:
                    record(t.index, None, error)
                for t, im, d in predicted:
                    if pool is None:
                        try:
                            pending.append((t, finish_tile(predictor.method, d, im, t, plan)))
                        except Exception as exc:
                            record(t.index, None, tile_error(t, exc))
                    else:
                        pending.append((t, pool.submit(finish_tile, predictor.method, d, im, t, plan)))
                drain(limit)
            drain(0)
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)


def _dask_client(workers: int, scheduler: str | None):
    try:
        from dask.distributed import Client, LocalCluster
    except ImportError as exc:
        raise RuntimeError("--workers / --scheduler need Dask: pip install 'dask[distributed]'") from exc
    if scheduler:
        return Client(scheduler)
    cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None)
    return Client(cluster)


def _run_on_dask(client, slide_path: str, mpp, model_file: str, runtime, plan: SlidePlan, todo: list[Tile],
                 batch_size: int, record) -> None:
    """Tiles in batches as Dask tasks, a bounded number in flight; results are recorded here as they arrive."""
    from dask.distributed import as_completed

    n_workers = max(len(client.scheduler_info()["workers"]), 1)
    threads = max((os.cpu_count() or 2) // n_workers, 1)
    batches = [todo[i : i + max(batch_size, 1)] for i in range(0, len(todo), max(batch_size, 1))]
    queue = deque(batches)
    running = as_completed()
    for _ in range(min(2 * n_workers, len(queue))):
        running.add(client.submit(run_tiles, slide_path, mpp, model_file, runtime, threads, plan, queue.popleft(),
                                  pure=False))
    for fut in running:
        for index, payload, error in fut.result():
            record(index, payload, error)
        if queue:
            running.add(client.submit(run_tiles, slide_path, mpp, model_file, runtime, threads, plan,
                                      queue.popleft(), pure=False))


def _assemble(ledger: Ledger, plan: SlidePlan, job_dir: Path, stem: str, thumb: np.ndarray, thumb_down: float,
              tissue: TissueMask | None, settings: dict, class_names: dict[int, str] | None = None
              ) -> tuple[int, dict]:
    """Every recorded tile, in tile order, into the final files (written under temporary names, then renamed)."""
    from nucseg.io.slide_outputs import SlideWriter

    columns = None
    writer = None
    try:
        for payload in ledger.payloads():
            tile = unpack_tile(payload)
            if writer is None:
                columns = list(tile["props"])
                writer = SlideWriter(job_dir, stem, plan.work_size, plan.mpp, plan.to_level0, columns, class_names)
            writer.add_tile(tile)
        if writer is None:  # no tissue, or every tile failed: empty outputs with the usual columns
            writer = SlideWriter(job_dir, stem, plan.work_size, plan.mpp, plan.to_level0, _EMPTY_COLUMNS,
                                 class_names)
        writer.overview(thumb, thumb_down, None if tissue is None else tissue.mask)
        files = writer.commit({"settings": settings, "nuclei": writer.count})
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    return writer.count, files


_EMPTY_COLUMNS = ["centroid_x", "centroid_y", "area", "perimeter", "eccentricity", "solidity", "major_axis_length",
                  "minor_axis_length", "orientation"]
