"""The napari plugin in a real viewer (napari's `make_napari_viewer` fixture, pytest-qt, Xvfb from pytest-xvfb):
the manifest's contributions, the dock widget segmenting a sample on a worker thread, the class layer, the reader
and the sample data. Set NUCSEG_SCREENSHOT=PATH to keep the widget's screenshot (the README's is one)."""

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

napari = pytest.importorskip("napari", reason="the napari extra is not installed (pip install nucseg[napari])")
if not os.environ.get("DISPLAY") and os.environ.get("QT_QPA_PLATFORM") != "offscreen":
    pytest.skip("no X server: install xvfb (`make` does, as root) so pytest-xvfb can start one",
                allow_module_level=True)

from nucseg.samples import sample_image, sample_path  # noqa: E402


@pytest.fixture
def viewer(make_napari_viewer):
    return make_napari_viewer()


def test_manifest_contributes_the_widget_reader_and_samples():
    from npe2 import PluginManager

    manager = PluginManager.instance()
    manager.discover()
    manifest = manager.get_manifest("nucseg")
    assert [w.display_name for w in manifest.contributions.widgets] == ["Segment nuclei"]
    assert {s.key for s in manifest.contributions.sample_data} == {"he", "fluo"}
    assert manifest.contributions.readers


def test_widget_segments_the_layer_without_blocking_and_adds_labels(viewer, qtbot, tmp_path):
    """The widget's Labels layer equals `nucseg.load_model("he").segment` of the same array, with the table as
    features; the segmentation ran on a worker thread (the GUI thread kept processing events meanwhile)."""
    import nucseg
    from nucseg.napari_plugin.widget import SegmentWidget

    image = sample_image("he")
    layer = viewer.add_image(image, name="tile", rgb=True)
    widget = SegmentWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Segment nuclei")
    assert widget.image.value is layer
    widget.model.value, widget.threads.value = "he", 1
    ticks = []
    timer = qtbot_timer(qtbot, lambda: ticks.append(1))
    worker = widget.run()
    with qtbot.waitSignal(worker.finished, timeout=180_000):
        pass
    timer.stop()
    assert len(ticks) > 0  # the event loop ran while the worker segmented
    (labels,) = [lay for lay in viewer.layers if isinstance(lay, napari.layers.Labels)]
    assert labels.name == "tile nuclei"
    expected = nucseg.load_model("he", threads=1).segment(image)
    np.testing.assert_array_equal(labels.data, expected.labels)
    features = labels.features
    assert len(features) == len(expected) and list(features["index"]) == list(expected.table()["id"])
    assert {"area", "centroid_x", "class", "probability"} <= set(features.columns)
    assert widget.status.value.startswith(f"{len(expected)} nuclei") and widget.run_button.enabled
    assert not [lay for lay in viewer.layers if isinstance(lay, napari.layers.Points)]  # no classes, no points

    viewer.window._qt_window.resize(1300, 760)  # room for the canvas beside the docks
    viewer.reset_view()
    qtbot.wait(200)
    shot = viewer.window.screenshot(path=str(tmp_path / "widget.png"), canvas_only=False, flash=False)
    assert shot.ndim == 3 and shot[..., :3].std() > 5  # a rendered window, not a blank one
    if os.environ.get("NUCSEG_SCREENSHOT"):
        shutil.copy(tmp_path / "widget.png", os.environ["NUCSEG_SCREENSHOT"])


def qtbot_timer(qtbot, callback, interval_ms: int = 20):
    from qtpy.QtCore import QTimer

    timer = QTimer()
    timer.timeout.connect(callback)
    timer.start(interval_ms)
    return timer


def test_a_model_with_classes_gets_a_points_layer_coloured_by_class(viewer):
    """`result_layers` for a classifying model: Points at the centroids (in pixels even when the table is in µm),
    class names in the features, each point in its class colour."""
    from nucseg.data.synthetic import synthetic_sample
    from nucseg.napari_plugin.widget import result_layers
    from nucseg.result import Result
    from nucseg.structures import Instances
    from nucseg.viz import class_colour

    sample = synthetic_sample(96, 10, seed=3)
    inst = Instances(sample.instances, dict(sample.classes))
    result = Result(inst, sample.image, {1: "tumour", 2: "immune", 3: "stroma"}, mpp=0.5)
    for data, meta, kind in result_layers(result, "synth"):
        getattr(viewer, f"add_{kind}")(data, **meta)
    points = viewer.layers["synth classes"]
    table = result.table()
    assert len(points.data) == len(table) == len(inst)
    np.testing.assert_allclose(points.data[:, 1], table["centroid_x"] / 0.5)
    assert list(points.features["class"]) == list(table["class"]) and "tumour" in set(table["class"])
    first = int(table["id"][0])
    np.testing.assert_allclose(points.face_color[0, :3], np.array(class_colour(inst.classes[first])) / 255, atol=1e-6)


def test_reader_opens_segment_and_slide_label_outputs(viewer, tmp_path):
    """`viewer.open` with the plugin: segment's labels/<stem>.png and segment-slide's labels.zarr become Labels
    layers with the written ids (the slide's at its µm scale); an ordinary PNG is not claimed."""
    import nucseg
    from nucseg.io.images import read_label
    from nucseg.napari_plugin.reader import get_reader

    result = nucseg.segment(sample_image("he"), model="he", threads=1)
    written = result.save(tmp_path / "out", "tile", outputs=("labels",))
    (layer,) = viewer.open(str(written["labels"]), plugin="nucseg")
    assert isinstance(layer, napari.layers.Labels) and layer.name == "tile nuclei"
    np.testing.assert_array_equal(np.asarray(layer.data), read_label(written["labels"]))
    assert get_reader(str(sample_path("he"))) is None

    report = nucseg.segment_slide(sample_path("he"), tmp_path / "slides", model="he", mpp=0.25, threads=1,
                                  progress=False)
    zarr_path = Path(report.out) / "labels.zarr"
    (slide_layer,) = viewer.open(str(zarr_path), plugin="nucseg")
    data = np.asarray(slide_layer.data[0] if slide_layer.multiscale else slide_layer.data)
    assert len(np.unique(data)) - 1 == report.nuclei
    np.testing.assert_allclose(slide_layer.scale, [0.25, 0.25])


def test_sample_data_opens(viewer):
    (layer,) = viewer.open_sample("nucseg", "he")
    assert layer.rgb and layer.data.shape == sample_image("he").shape
    (grey,) = viewer.open_sample("nucseg", "fluo")
    assert grey.data.ndim == 2
