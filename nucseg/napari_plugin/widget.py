"""The "Segment nuclei" dock widget: an image layer through `nucseg.load_model(...).segment` on a worker thread,
the result added as a Labels layer (the per-nucleus table as its features) and, for a model with classes, a Points
layer at the nuclei's centroids coloured by class."""

from __future__ import annotations

import os

import numpy as np
from magicgui import widgets
from qtpy.QtCore import QObject, Signal

from nucseg.engine.segment import AUTO, SHIPPED

MODEL_CHOICES = (AUTO, *SHIPPED)


def result_layers(result, name: str, scale=None, translate=None) -> list[tuple]:
    """napari layer-data tuples for a `nucseg.Result`: Labels "<name> nuclei" with the table as features (its
    `index` column maps label values to rows) and, when the model classifies, Points "<name> classes" at the
    centroids with class names in the features and class colours as face colours."""
    from nucseg.viz import class_colour

    table = result.table()
    table.insert(0, "index", table["id"])
    placement = {k: v for k, v in (("scale", scale), ("translate", translate)) if v is not None}
    layers = [(result.labels, {"name": f"{name} nuclei", "features": table, **placement}, "labels")]
    if result.classes is not None and len(table):
        unit = result.mpp or 1.0  # the table's centroids are in µm when mpp is known: points sit on pixels
        points = np.stack([table["centroid_y"] / unit, table["centroid_x"] / unit], axis=1)
        class_ids = [result.instances.classes.get(int(i), 0) for i in table["id"]]
        colours = np.array([[*class_colour(c), 255] for c in class_ids], np.float32) / 255
        layers.append((points, {"name": f"{name} classes", "features": table[["index", "id", "class", "probability"]],
                                "face_color": colours, "border_width": 0, "size": 6, **placement}, "points"))
    return layers


class _Progress(QObject):
    """Carries (done, total) from the worker thread to the widget: a queued Qt signal, so the bar is only ever
    touched on the GUI thread."""

    step = Signal(int, int)


class SegmentWidget(widgets.Container):
    """Image layer, model (or a checkpoint / run directory), µm per pixel, threads; "Segment" runs on a worker
    thread with a progress bar, so the viewer stays responsive."""

    def __init__(self, napari_viewer):
        self.viewer = napari_viewer
        self.image = widgets.ComboBox(label="image", choices=self._image_layers)
        self.model = widgets.ComboBox(label="model", choices=MODEL_CHOICES, value="auto")
        self.checkpoint = widgets.FileEdit(label="or checkpoint", mode="r", value="",
                                   tooltip="a checkpoint file (or run directory) instead of a shipped model")
        self.mpp = widgets.FloatSpinBox(label="µm per pixel", value=0.0, min=0.0, max=100.0, step=0.01,
                                tooltip="0 = unknown: measurements in pixels and no resampling")
        self.threads = widgets.SpinBox(label="threads", value=0, min=0, max=os.cpu_count() or 1, tooltip="0 = all cores")
        self.run_button = widgets.PushButton(text="Segment")
        self.progress = widgets.ProgressBar(value=0, min=0, max=1, visible=False)
        self.status = widgets.Label(value="")
        super().__init__(widgets=[self.image, self.model, self.checkpoint, self.mpp, self.threads, self.run_button,
                                  self.progress, self.status])
        self._models: dict[tuple, object] = {}  # loaded models, kept between runs
        self._signals = _Progress()
        self._signals.step.connect(self._on_progress)
        self.worker = None
        self.run_button.changed.connect(self.run)
        for event in (napari_viewer.layers.events.inserted, napari_viewer.layers.events.removed):
            event.connect(lambda _=None: self.image.reset_choices())

    def _image_layers(self, _widget=None) -> list:
        from napari.layers import Image

        return [layer for layer in self.viewer.layers if isinstance(layer, Image)]

    def _model_spec(self) -> str:
        path = str(self.checkpoint.value or "")
        return path if path not in ("", ".") and os.path.exists(path) else self.model.value

    def run(self, _=None):
        """Start segmenting the chosen layer; returns the worker (tests wait on it)."""
        from napari.qt.threading import create_worker

        layer = self.image.value
        if layer is None:
            self.status.value = "add an image layer first"
            return None
        data = layer.data[0] if layer.multiscale else layer.data
        image, spec, mpp, threads = np.asarray(data), self._model_spec(), self.mpp.value or None, self.threads.value
        self.run_button.enabled = False
        self.progress.visible, self.progress.value = True, 0
        self.status.value = f"segmenting {layer.name} with {spec}..."
        self.worker = create_worker(self._segment, image, spec, mpp, threads, _start_thread=False)
        self.worker.returned.connect(lambda result: self._add_result(result, layer))
        self.worker.errored.connect(self._on_error)
        self.worker.finished.connect(self._on_finished)
        self.worker.start()
        return self.worker

    def _segment(self, image: np.ndarray, spec: str, mpp: float | None, threads: int):
        import nucseg

        key = (spec, threads)
        if key not in self._models:
            self._models[key] = nucseg.load_model(spec, threads=threads)
        return self._models[key].segment(image, mpp, progress=self._signals.step.emit)

    def _on_progress(self, done: int, total: int) -> None:
        self.progress.max, self.progress.value = max(total, 1), done

    def _add_result(self, result, layer) -> None:
        scale, translate = tuple(layer.scale[-2:]), tuple(layer.translate[-2:])
        for data, meta, kind in result_layers(result, layer.name, scale, translate):
            getattr(self.viewer, f"add_{kind}")(data, **meta)
        self.status.value = f"{len(result)} nuclei ({result.model})"

    def _on_error(self, exc: Exception) -> None:
        self.status.value = f"error: {exc}"

    def _on_finished(self) -> None:
        self.run_button.enabled = True
        self.progress.visible = False
