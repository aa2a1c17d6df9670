"""The Python API (`nucseg.load_model(...).segment`, `nucseg.segment`, `nucseg.segment_slide`): the README's
example runs as written, and its outputs equal `nucseg segment`'s for the same image and model."""

import csv
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import nucseg
from nucseg.cli import main
from nucseg.io.images import read_image, read_label
from nucseg.samples import SAMPLES, sample_path

README = Path(__file__).resolve().parents[1] / "README.md"


@pytest.fixture(scope="module")
def auto_model():
    return nucseg.load_model("auto", threads=1)


@pytest.fixture(scope="module")
def cli_outputs(tmp_path_factory):
    """`nucseg segment` over the sample images with the default model (auto)."""
    out = tmp_path_factory.mktemp("cli")
    paths = [str(sample_path(name)) for name in ("he", "fluo")]
    assert main(["segment", *paths, "--out", str(out), "--threads", "1", "--mpp", "0.25"]) == 0
    return out


def test_readme_python_example_runs_as_written(tmp_path, monkeypatch):
    """The README's "From Python" block, executed in an empty folder: every name it uses exists and every output it
    writes lands where it says."""
    text = README.read_text()
    section = text[text.index("## From Python"):text.index("## In napari")]
    (code,) = re.findall(r"```python\n(.*?)```", section, re.S)
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(code, str(README), "exec"), scope)
    result = scope["result"]
    assert len(result) > 5 and result.labels.dtype == np.int32 and result.labels.shape == scope["image"].shape[:2]
    assert scope["classes"] is None  # the H&E U-Net does not classify
    assert len(scope["table"]) == len(result) and scope["overlay"].shape == (*result.labels.shape, 3)
    assert (tmp_path / "nuclei.geojson").is_file()
    for kind, name in (("labels", "tile.png"), ("overlays", "tile.png"), ("geojson", "tile.geojson"),
                       ("csv", "tile.csv")):
        assert (tmp_path / "outputs" / kind / name).is_file()
    np.testing.assert_array_equal(scope["one_call"].labels, result.labels)


@pytest.mark.parametrize("name", ["he", "fluo"])
def test_api_outputs_equal_the_cli_outputs(auto_model, cli_outputs, tmp_path, name):
    """Same image, same model (auto picks he or fluo per image): the label map equals the CLI's label PNG, the table
    the CLI's CSV (columns and values), and the GeoJSON, CSV and overlay written from the result the CLI's bytes."""
    path = sample_path(name)
    result = auto_model.segment(read_image(path), mpp=0.25)
    assert result.model == name and len(result) > 3
    np.testing.assert_array_equal(result.labels, read_label(cli_outputs / "labels" / f"{path.stem}.png"))

    with open(cli_outputs / "csv" / f"{path.stem}.csv", newline="") as f:
        rows = list(csv.reader(f))
    table = result.table()
    assert list(table.columns) == rows[0] and len(table) == len(rows) - 1 == len(result)
    for col_index, column in enumerate(rows[0]):
        written = [r[col_index] for r in rows[1:]]
        if column == "class":
            assert list(table[column]) == written
        else:  # the CSV holds 4 decimals
            values = np.array([float(v) if v else np.nan for v in written])
            np.testing.assert_allclose(table[column].to_numpy(float), values, atol=6e-5, err_msg=column)

    geojson = result.to_geojson(tmp_path / f"{path.stem}.geojson")
    assert geojson.read_bytes() == (cli_outputs / "geojson" / f"{path.stem}.geojson").read_bytes()
    assert result.to_csv(tmp_path / "x.csv").read_bytes() == (cli_outputs / "csv" / f"{path.stem}.csv").read_bytes()
    np.testing.assert_array_equal(result.overlay(), read_image(cli_outputs / "overlays" / f"{path.stem}.png"))


def test_arrays_of_every_layout_and_dtype_give_the_files_result(auto_model):
    """A grey image as H×W, H×W×1 and 1×H×W segments as its file does; a float image is stretched from its min and
    max to uint8 first (as a float TIFF is read); a bad array is a ValueError that says what is wrong with it."""
    path = sample_path("fluo")
    grey = read_image(path)[..., 0]
    expected = auto_model.segment(path).labels
    for variant in (grey, grey[..., None], grey[None]):
        np.testing.assert_array_equal(auto_model.segment(variant).labels, expected)
    lo, hi = float(grey.min()), float(grey.max())
    stretched = ((grey - lo) / (hi - lo) * 255).round().astype(np.uint8)
    assert not np.array_equal(stretched, grey)  # so the float path's stretch is seen
    np.testing.assert_array_equal(auto_model.segment(grey.astype(np.float32) / 1000).labels,
                                  auto_model.segment(stretched).labels)
    bad = grey.astype(np.float32)
    bad[3, 3] = np.nan
    with pytest.raises(ValueError, match="image array: .*NaN"):
        auto_model.segment(bad)
    with pytest.raises(ValueError, match=r"image array: not a 2-D image \(array shape \(2, 3, 4, 5\)\)"):
        auto_model.segment(np.zeros((2, 3, 4, 5), np.uint8))
    with pytest.raises(FileNotFoundError, match="no such model"):
        nucseg.load_model("no-such-model")


def test_progress_is_reported_per_tile(tmp_path):
    """An image larger than the model's window goes tile by tile, and `progress` hears every tile."""
    model = nucseg.load_model("fluo", threads=1)
    image = np.tile(read_image(sample_path("fluo")), (5, 5, 1))  # 1280², over the 1024 window
    calls = []
    result = model.segment(image, progress=lambda done, total: calls.append((done, total)))
    total = calls[-1][1]
    assert total > 1 and calls[-1] == (total, total) and [d for d, _ in calls] == sorted(d for d, _ in calls)
    assert len(result) > 25 * 3


def test_segment_slide_runs_the_slide_job(tmp_path):
    report = nucseg.segment_slide(sample_path("he"), tmp_path / "slides", model="he", threads=1, progress=False)
    out = Path(report.out)
    assert report.nuclei > 3 and (out / "labels.zarr").is_dir() and (out / "nuclei.csv").is_file()
    with pytest.raises(ValueError, match="missing.svs"):
        nucseg.segment_slide(tmp_path / "missing.svs", tmp_path / "slides", progress=False)


def test_public_names_are_listed_and_documented():
    assert set(nucseg.__all__) >= {"load_model", "segment", "segment_slide", "Model", "Result", "Instances"}
    for name in nucseg.__all__:
        obj = getattr(nucseg, name)
        if callable(obj):
            assert obj.__doc__ and obj.__doc__.strip(), name
    assert set(SAMPLES) == {"he", "he-2", "fluo", "fluo-2"}


def test_import_nucseg_does_not_import_torch():
    """`import nucseg` and reaching the API's names stay free of torch (it loads when a model is built)."""
    code = ("import sys, nucseg; nucseg.load_model; nucseg.Result; nucseg.segment_slide; "
            "bad = [m for m in ('torch', 'timm', 'openvino', 'cv2') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)
