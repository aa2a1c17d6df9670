"""nucseg's Python API: the calls `nucseg segment` and `nucseg segment-slide` are made of.

    import nucseg
    model = nucseg.load_model("he")            # shipped name | "auto" | run dir | checkpoint path
    result = model.segment(image, mpp=0.25)    # numpy H×W or H×W×C (or a file's path); mpp optional
    result.labels, result.classes, result.table(), result.to_geojson("x.geojson"), result.overlay()

    nucseg.segment(image, model="auto")        # the one-call form
    nucseg.segment_slide("slide.svs", "out/")  # a whole slide, tile by tile, resumable

Nothing here imports torch until a model is built.
"""

from __future__ import annotations

import os
from pathlib import Path

from nucseg.engine.model import Model, load_model
from nucseg.result import Result

__all__ = ["Model", "Result", "load_model", "segment", "segment_slide"]


def segment(image, model: str | os.PathLike | Model = "auto", mpp: float | None = None, **load_options) -> Result:
    """Segment one image (an array or a file's path) with `model`: a `Model`, or anything `load_model` takes
    (`load_options` go to it: runtime, threads, precision, tta, ...). Loading is the slow part: to segment many
    images, `load_model` once and call `Model.segment`."""
    if not isinstance(model, Model):
        model = load_model(model, **load_options)
    elif load_options:
        raise ValueError(f"options {sorted(load_options)} apply when loading: pass them to load_model")
    return model.segment(image, mpp)


def segment_slide(path: str | os.PathLike, out_dir: str | os.PathLike, model: str | os.PathLike | Model = "auto",
                  *, mpp: float | None = None, tile: int | None = None, margin: int | None = None,
                  batch_size: int = 1, post_workers: int | None = None, workers: int = 0,
                  scheduler: str | None = None, tissue_mask: bool = True, runtime: str | None = None,
                  threads: int = 0, restart: bool = False, progress: bool = True):
    """Segment a whole slide (svs/ndpi/mrxs/scn, OME-TIFF, OME-Zarr or a large image file) into out_dir/<stem>/:
    nuclei.geojson, nuclei.csv, nuclei.sqlite, labels.zarr and overview.png, as `nucseg segment-slide` does.
    Resumable: a job interrupted and run again continues from its recorded tiles (`restart=True` discards them).

    Returns the job's `SlideReport` (out, tiles, tissue_tiles, nuclei, seconds, failed_tiles); raises ValueError
    naming the slide when it cannot be segmented (unreadable, or its folder holds a job with other settings)."""
    from nucseg.engine.slide import segment_slides

    if isinstance(model, Model):
        if model.tta or model.precision not in (None, "auto", "fp32") or model._device is not None:
            raise ValueError("segment_slide runs with the slide engine's settings: pass the model's name or path, "
                             "not a Model loaded with tta, precision or a device")
        runtime = runtime if runtime is not None else model.runtime
        threads = threads or model.threads
        model = model.spec if model.is_auto else str(model.resolved)  # a checkpoint given with a method name
    (report,) = segment_slides([str(path)], Path(out_dir), str(model), mpp, tile, margin, batch_size, post_workers,
                               workers, scheduler, tissue_mask, runtime, threads, restart, progress)
    if not report.out:
        raise ValueError(f"{path}: {report.message}")
    return report
