"""A loaded model for inference: `nucseg.load_model(...)` returns one, `nucseg segment` runs on one.

A model is named as on the command line: a shipped name (he, fluo, ...), "auto" (the shipped H&E or fluorescence
model, chosen per image as StarDist ships two), a run directory or a checkpoint file. A checkpoint with an exported
bundle beside it (`nucseg export --graph`; the shipped models have one) runs on numpy and OpenVINO alone, torch
never imported (`load_predictor` says when); anything else imports torch when its predictor is first built.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

from nucseg.result import Result


class Model:
    """Segments images with one model (or, for "auto", with the shipped model of each image's modality).

    Build it with `nucseg.load_model`. Large images go through the same block tiling as `nucseg segment`; an image
    within one window is one forward pass.
    """

    def __init__(self, spec: str | os.PathLike | None = "auto", checkpoint: str | None = None,
                 runtime: str | None = None, precision: str = "auto", threads: int = 0,
                 batch_size: int | None = None, tta: bool = False, device=None):
        from nucseg.engine.segment import AUTO, resolve_model

        self.spec = str(spec) if spec not in (None, "", "default") else AUTO
        self.resolved = resolve_model(None if spec is None else str(spec), checkpoint)
        self.runtime, self.precision, self.threads = runtime, precision, threads
        self.batch_size, self.tta, self._device = batch_size, tta, device
        self._predictors: dict[str, object] = {}
        self.load_seconds = 0.0  # spent building predictors (and reading or making their exported graph)

    @property
    def is_auto(self) -> bool:
        from nucseg.engine.segment import AUTO

        return self.resolved == AUTO

    def __repr__(self) -> str:
        return f"nucseg.Model({self.spec!r})"

    def name_for(self, key: str) -> str:
        """How outputs name the model used: the shipped name, else the checkpoint's stem."""
        from nucseg.engine.segment import SHIPPED

        if self.is_auto or self.spec in SHIPPED:
            return key if self.is_auto else self.spec
        return Path(key).stem

    def predictor(self, image: np.ndarray | None = None):
        """(key, predictor) for `image`: with "auto" the shipped model of the image's modality (`image` needed),
        else the one model. Built on first use and kept (`load_predictor`)."""
        from nucseg.data.modality import detect_modality
        from nucseg.engine.segment import SHIPPED, WEIGHTS

        if self.is_auto and image is None:
            raise ValueError('model "auto" chooses per image: pass the image')
        key = detect_modality(image) if self.is_auto else str(self.resolved)
        if key not in self._predictors:
            t0 = time.perf_counter()
            path = WEIGHTS / SHIPPED[key] if self.is_auto else self.resolved
            self._predictors[key] = load_predictor(path, self._device, self.precision, self.runtime,
                                                   self.batch_size, self.tta, self.threads)
            self.load_seconds += time.perf_counter() - t0
        return key, self._predictors[key]

    def class_names(self, image: np.ndarray | None = None) -> dict[int, str]:
        """{class id: name} of the model's classes ({} when it does not classify)."""
        return dict(self.predictor(image)[1].class_names)

    def segment(self, image, mpp: float | None = None, progress=None) -> Result:
        """Segment one image: a numpy array (H×W or H×W×C; channel-first C×H×W is moved; uint8, uint16, float or
        bool, as `nucseg segment` reads files) or an image file's path.

        mpp: microns per pixel of the image, when known. The table's lengths and areas are then in µm, and the
        image is resampled to the model's resolution when the model records one (`infer.mpp`) more than 5 % away.
        progress: called as progress(done, total) after each tile of a large image.
        """
        from nucseg.io.images import as_image, read_image

        if isinstance(image, (str, os.PathLike)):
            array = read_image(image)
        else:
            try:
                array = as_image(image)
            except ValueError as exc:
                raise ValueError(f"image array: {exc}") from None
        key, predictor = self.predictor(array)
        inst = predictor.segment(array, mpp, progress)
        return Result(inst, array, dict(predictor.class_names), mpp, self.name_for(key))


def exported_bundle(path: str | os.PathLike, device=None, precision: str | None = "auto",
                    runtime: str | None = None) -> Path | None:
    """The exported bundle to run `path` with, or None for the torch Predictor: a bundle made from these exact bytes
    exists, OpenVINO is installed, and nothing asks for torch (a torch device, runtime torch, or "auto" on a
    machine with an NVIDIA GPU, where an installed torch would do better). bf16 (`--precision bf16`) runs on
    OpenVINO's bf16 kernels."""
    from nucseg.engine.device import gpu_present
    from nucseg.engine.exported import openvino_importable, usable_bundle

    if device is not None or runtime == "torch":
        return None
    if runtime in (None, "auto") and gpu_present() and _torch_importable():
        return None
    if not openvino_importable():
        return None
    return usable_bundle(path)


def load_predictor(path: str | os.PathLike, device=None, precision: str | None = "auto", runtime: str | None = None,
                   batch_size: int | None = None, tta: bool = False, threads: int = 0):
    """A predictor for a checkpoint file or run directory: the exported graph's (`ExportedPredictor`, no torch) when
    `exported_bundle` allows, else the torch Predictor (which itself runs OpenVINO from its export cache on CPUs)."""
    from nucseg.engine.device import configure_malloc

    configure_malloc()
    file = Path(path)
    if file.is_dir():
        from nucseg.engine.checkpoints import resolve_checkpoint_file

        file = resolve_checkpoint_file(file)
    bundle = exported_bundle(file, device, precision, runtime)
    if bundle is not None:
        from nucseg.engine.exported import ExportedPredictor

        return ExportedPredictor.from_bundle(bundle, batch_size, tta, threads or None, precision)
    if not _torch_importable():
        raise ValueError(f"{file}: this model has no exported graph beside it, so it needs torch: pip install "
                         "nucseg[train] (or export one: nucseg export CKPT --graph, where torch is installed)")
    from nucseg.engine.checkpoints import resolve_checkpoint_file
    from nucseg.engine.device import default_device, set_threads
    from nucseg.engine.infer import Predictor

    set_threads(threads)
    return Predictor.from_checkpoint(resolve_checkpoint_file(file), device or default_device(), precision, runtime,
                                     batch_size, tta)


def _torch_importable() -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec("torch") is not None
    except (ImportError, ValueError):
        return False


def load_model(model: str | os.PathLike | None = "auto", *, checkpoint: str | None = None,
               runtime: str | None = None, precision: str = "auto", threads: int = 0,
               batch_size: int | None = None, tta: bool = False, device=None) -> Model:
    """Load a model for inference.

    model: "auto" (default: the shipped H&E or fluorescence model, chosen per image), a shipped name (`nucseg
        models` lists them: he, fluo, weaveseg, frgnet, ...), a run directory (its tuned.ckpt or best.ckpt) or a
        checkpoint file; or a method name with `checkpoint`.
    runtime: "auto" (OpenVINO on the CPU when installed, else torch; the model's own setting), "torch" or "openvino".
    precision: "auto", "bf16" or "fp32". threads: CPU threads (0 = all). tta: average over flips.
    device: a torch device (default: CUDA when available, else the CPU).

    A named model is built at once, so a bad checkpoint fails here; "auto" builds each modality's model on first use.
    """
    loaded = Model(model, checkpoint, runtime, precision, threads, batch_size, tta, device)
    if not loaded.is_auto:
        loaded.predictor()
    return loaded
