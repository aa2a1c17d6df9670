"""Nucleus classes end to end: the per-pixel type map, GeoJSON classifications and CSV classes agree, class names
come from the training sets' dataset.json (config names winning), and a classifying model's outputs carry them."""

import csv
import json

import numpy as np
import pytest
from PIL import Image

from nucseg.data.dataset import DataConfig, SetConfig, resolve_class_names
from nucseg.data.synthetic import synthetic_sample
from nucseg.io.writers import write_outputs
from nucseg.structures import Instances
from nucseg.viz import class_colour

NAMES = {1: "other", 2: "inflammatory", 3: "epithelial"}


def test_type_map_geojson_and_csv_name_the_same_class_for_every_nucleus(tmp_path):
    sample = synthetic_sample(128, 12, n_classes=3, seed=1)
    inst = Instances(sample.instances, sample.classes, {i: 0.5 for i in sample.classes})
    written = write_outputs(tmp_path, "img", sample.image, inst, class_names=NAMES)
    types = np.asarray(Image.open(written["types"]))
    assert types.dtype == np.uint8 and types.shape == inst.labels.shape
    per_pixel = {int(i): int(types[inst.labels == i].max()) for i in inst.ids}
    assert per_pixel == inst.classes and (types[inst.labels == 0] == 0).all()
    features = json.loads(written["geojson"].read_text())["features"]
    from_geojson = {int(f["properties"]["name"].split()[-1]): f["properties"]["classification"] for f in features}
    assert {i: c["name"] for i, c in from_geojson.items()} == {i: NAMES[c] for i, c in inst.classes.items()}
    assert all(c["color"] == list(class_colour(inst.classes[i])) for i, c in from_geojson.items())
    rows = list(csv.DictReader(open(written["csv"])))
    assert {int(r["id"]): r["class"] for r in rows} == {i: NAMES[c] for i, c in inst.classes.items()}
    # overlays are drawn in the class colours
    overlay = np.asarray(Image.open(written["overlay"]))
    assert any((overlay == class_colour(c)).all(-1).any() for c in set(inst.classes.values()))


def test_no_type_map_for_a_model_without_classes(tmp_path):
    sample = synthetic_sample(64, 4, seed=2)
    written = write_outputs(tmp_path, "img", sample.image, Instances(sample.instances))
    assert "types" not in written and not (tmp_path / "types").exists()


def test_class_names_come_from_dataset_json_with_config_names_winning(tmp_path):
    for name, classes in (("a", {"1": "tumour", "2": "immune"}), ("b", {"2": "immune", "3": "stroma"})):
        (tmp_path / name).mkdir()
        (tmp_path / name / "dataset.json").write_text(json.dumps({"name": name, "classes": classes}))
    cfg = DataConfig(sets=[SetConfig(path="a"), SetConfig(path="b")], root=str(tmp_path), class_names={1: "neoplastic"})
    assert resolve_class_names(cfg) == {1: "neoplastic", 2: "immune", 3: "stroma"}
    (tmp_path / "b" / "dataset.json").write_text(json.dumps({"classes": {"2": "lymphocyte"}}))
    with pytest.raises(ValueError, match=r"class 2 is 'immune' in .*a/dataset.json and 'lymphocyte' in .*b/dataset"):
        resolve_class_names(cfg)
