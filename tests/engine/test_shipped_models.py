"""The shipped models: one per modality chosen per image, and each loads by name with no checkpoint argument."""

import numpy as np
import pytest

from nucseg.data.synthetic import synthetic_sample
from nucseg.engine.segment import AUTO, SHIPPED, WEIGHTS, detect_modality, resolve_model, segment_files
from nucseg.io.images import write_image


def test_detect_modality_on_synthetic_images():
    assert detect_modality(synthetic_sample(96, 10, style="he", seed=1).image) == "he"
    fluo = synthetic_sample(96, 10, style="fluorescence", seed=1).image
    assert detect_modality(fluo) == "fluo"
    assert detect_modality(fluo[..., :1]) == "fluo"
    assert detect_modality(np.repeat(fluo[..., :1], 3, axis=-1)) == "fluo"
    assert detect_modality(fluo.astype(np.uint16) * 200) == "fluo"


def test_models_command_lists_every_shipped_model_and_its_file(capsys):
    from nucseg.cli import main

    assert main(["models"]) == 0
    out = capsys.readouterr().out
    for name, file in SHIPPED.items():
        assert f"{name} " in out and file in out
    assert "missing" not in out and AUTO in out


def test_detect_modality_on_real_images(shared_data):
    from nucseg.io.images import read_image

    for path in sorted((shared_data / "monuseg-train" / "images").glob("*.png"))[:3]:
        assert detect_modality(read_image(path)) == "he", path
    # DSB2018 is mostly greyscale fluorescence; its few stained-tissue images may go to the H&E model
    dsb = sorted((shared_data / "dsb2018-train" / "images").glob("*.png"))[:40]
    chosen = [detect_modality(read_image(p)) for p in dsb]
    assert chosen.count("fluo") >= 0.8 * len(chosen)


def test_names_resolve_to_shipped_files():
    assert resolve_model(None) == AUTO and resolve_model("default") == AUTO
    for name, file in SHIPPED.items():
        assert resolve_model(name) == WEIGHTS / file and (WEIGHTS / file).is_file()
    with pytest.raises(FileNotFoundError, match="shipped: he, fluo, weaveseg"):
        resolve_model("nonsense")


def test_auto_picks_a_model_per_image(tmp_path):
    write_image(tmp_path / "in" / "he.png", synthetic_sample(96, 10, style="he", seed=2).image)
    write_image(tmp_path / "in" / "fluo.png", synthetic_sample(96, 10, style="fluorescence", seed=2).image[..., 0])
    report = segment_files([str(tmp_path / "in")], tmp_path / "out", progress=False)
    assert not report.failed
    assert {r["image"]: r["model"] for r in report.rows} == {"he.png": "he", "fluo.png": "fluo"}


def test_auto_on_real_images_gives_each_models_labels(shared_data, tmp_path):
    """The default (auto) on a MoNuSeg crop and a DSB2018 image writes exactly what `--model he` and `--model fluo`
    write for them (their quality is test_model_quality's)."""
    from nucseg.io.images import read_image, read_label

    he = read_image(shared_data / "monuseg-train/images/TCGA-E2-A1B5-01Z-00-DX1.png")[:256, :256, :3]
    dsb = read_image(shared_data / "dsb2018-train/images/e23e11414ee645b51081fb202d38b793f0c8ef2940f8228ded384899d21b02c2.png")
    write_image(tmp_path / "in" / "he.png", he)
    write_image(tmp_path / "in" / "dsb.png", dsb)
    report = segment_files([str(tmp_path / "in")], tmp_path / "auto", outputs=("labels",), progress=False)
    assert {r["image"]: r["model"] for r in report.rows} == {"he.png": "he", "dsb.png": "fluo"}
    for stem, name in (("he", "he"), ("dsb", "fluo")):
        segment_files([str(tmp_path / "in" / f"{stem}.png")], tmp_path / name, model=name, outputs=("labels",),
                      progress=False)
        auto = read_label(tmp_path / "auto/labels" / f"{stem}.png")
        assert auto.max() > 10
        np.testing.assert_array_equal(auto, read_label(tmp_path / name / "labels" / f"{stem}.png"))


def test_weaveseg_by_name(tmp_path):
    write_image(tmp_path / "in" / "a.png", synthetic_sample(64, 6, seed=3).image)
    report = segment_files([str(tmp_path / "in")], tmp_path / "out", model="weaveseg", progress=False,
                           outputs=("labels",))
    assert not report.failed and report.rows[0]["model"] == "weaveseg"


def test_gensegnet_by_name_and_through_segment_slide(shared_data, tmp_path):
    """The shipped GeNSeg-Net segments a real fluorescence image by name, and a slide of it equals flat `segment`."""
    from nucseg.engine.infer import Predictor
    from nucseg.engine.slide import segment_slides
    from nucseg.io.images import read_image, read_label
    from nucseg.io.slides import write_pyramid_tiff
    from nucseg.metrics import aji

    name = sorted((shared_data / "dsb2018-train/images").glob("*.png"))[0].name
    image = read_image(shared_data / "dsb2018-train/images" / name)
    image = np.repeat(image[..., :1], 3, axis=-1) if image.shape[-1] < 3 else image[..., :3]
    truth = read_label(shared_data / "dsb2018-train/labels" / name)
    write_image(tmp_path / "in" / name, image)
    report = segment_files([str(tmp_path / "in")], tmp_path / "out", model="gensegnet", progress=False,
                           runtime="torch", outputs=("labels",))
    assert not report.failed and report.rows[0]["model"] == "gensegnet"
    # its quality is test_model_quality's; here: the file path gives what the predictor gives
    labels = read_label(tmp_path / "out/labels" / name)
    np.testing.assert_array_equal(labels, Predictor.from_checkpoint(resolve_model("gensegnet"),
                                                                    runtime="torch").segment(image).labels)
    assert aji(truth, labels) > 0.3

    import zarr

    path = write_pyramid_tiff(tmp_path / "slide.tif", image, mpp=None, min_size=10_000)
    segment_slides([str(path)], tmp_path / "slide", str(resolve_model("gensegnet")), tile=128, margin=32,
                   use_tissue=False, progress=False, post_workers=0, runtime="torch")
    labels = zarr.open_group(str(tmp_path / "slide/slide/labels.zarr"), mode="r")["0"][:]
    flat = Predictor.from_checkpoint(resolve_model("gensegnet"), runtime="torch").segment_tiles(image, 128, 32).labels
    assert flat.max() > 5
    np.testing.assert_array_equal(labels, flat)


def test_cfr_sam_segments_and_classifies_a_consep_patch_by_name(shared_data, tmp_path):
    """The shipped CFR-SAM finds CoNSeP nuclei and writes their classes: type map, GeoJSON names, CSV."""
    import csv
    import json

    from nucseg.io.images import read_image, read_label
    from nucseg.metrics import aji

    src = shared_data / "consep-patches-train"
    stem = sorted((src / "images").glob("*.jpg"))[0].stem
    write_image(tmp_path / "in" / f"{stem}.png", read_image(src / "images" / f"{stem}.jpg")[..., :3])
    report = segment_files([str(tmp_path / "in")], tmp_path / "out", model="cfr-sam", progress=False)
    assert not report.failed and report.rows[0]["model"] == "cfr-sam"
    labels = read_label(tmp_path / "out/labels" / f"{stem}.png")  # its quality and classes: test_model_quality
    assert aji(read_label(src / "labels" / f"{stem}.png"), labels) > 0.2 and labels.max() > 10
    types = read_label(tmp_path / "out/types" / f"{stem}.png")
    assert ((types > 0) == (labels > 0)).all() and set(np.unique(types)) <= {0, 1, 2, 3, 4}
    names = {"other", "inflammatory", "epithelial", "spindle-shaped"}
    features = json.load(open(tmp_path / "out/geojson" / f"{stem}.geojson"))["features"]
    assert features and {f["properties"]["classification"]["name"] for f in features} <= names
    rows = list(csv.DictReader(open(tmp_path / "out/csv" / f"{stem}.csv")))
    assert {r["class"] for r in rows} <= names and len(rows) == len(features)
