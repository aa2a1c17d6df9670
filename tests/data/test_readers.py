"""Readers on the real files in ../shared/data, and on fixtures built in the exact published layouts."""

import json
import os
import shutil

import numpy as np
import pytest

from nucseg.data.readers import read_samples
from nucseg.io.images import InputError, read_label, write_image
from nucseg.labels import class_map_to_instance_classes, relabel_sequential


def same_instances(a, b):
    return a.shape == b.shape and np.array_equal(relabel_sequential(a)[0], relabel_sequential(b)[0])


def link(src, dst):
    dst.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(os.path.abspath(src), dst)


def test_monuseg_test_layout_matches_official_labels(shared_data):
    xml = shared_data / "monuseg-train/raw/TCGA-21-5784-01Z-00-DX1.xml"
    (s,) = list(read_samples("monuseg", xml))
    assert s.meta["mpp"] == pytest.approx(0.2527)
    assert same_instances(s.instances, read_label(shared_data / f"monuseg-train/labels/{s.id}.png"))


def test_monuseg_training_layout(shared_data, tmp_path):
    stem = "TCGA-21-5786-01Z-00-DX1"
    link(shared_data / f"monuseg-train/raw/{stem}.tif", tmp_path / "Tissue Images" / f"{stem}.tif")
    link(shared_data / f"monuseg-train/raw/{stem}.xml", tmp_path / "Annotations" / f"{stem}.xml")
    (s,) = list(read_samples("monuseg", tmp_path))
    assert s.image.shape == (1000, 1000, 3)
    assert same_instances(s.instances, read_label(shared_data / f"monuseg-train/labels/{stem}.png"))


def test_monuseg_missing_image_names_xml(shared_data, tmp_path):
    link(shared_data / "monuseg-train/raw/TCGA-50-5931-01Z-00-DX1.xml", tmp_path / "TCGA-50-5931-01Z-00-DX1.xml")
    with pytest.raises(InputError, match="TCGA-50-5931-01Z-00-DX1.xml: no image"):
        list(read_samples("monuseg", tmp_path))


def test_gbm_matches_labels(shared_data, tmp_path):
    for f in ("02.tif", "02_data.xml"):
        link(shared_data / "gbm40/raw" / f, tmp_path / f)
    (s,) = list(read_samples("gbm", tmp_path))
    assert same_instances(s.instances, read_label(shared_data / "gbm40/labels/02.png"))


def test_cpm_matches_labels(shared_data, tmp_path):
    for f in ("image02.png", "image02_mask.txt"):
        link(shared_data / "cpm15-train/raw" / f, tmp_path / f)
    (s,) = list(read_samples("cpm", tmp_path))
    assert same_instances(s.instances, read_label(shared_data / "cpm15-train/labels/image02.png"))


def test_consep_npy_with_inst_type(shared_data, tmp_path):
    stem = "train_10_002"
    for ext in (".npy", ".mat"):
        link(shared_data / f"consep-patches-train/raw/{stem}{ext}", tmp_path / "Labels" / f"{stem}{ext}")
    link(shared_data / f"consep-patches-train/images/{stem}.jpg", tmp_path / "Images" / f"{stem}.jpg")
    (s,) = list(read_samples("consep", tmp_path))
    ref = read_label(shared_data / f"consep-patches-train/labels/{stem}.png")
    assert same_instances(s.instances, ref)
    ref_cls = class_map_to_instance_classes(ref, read_label(shared_data / f"consep-patches-train/types/{stem}.png"))
    (_, old_a), (_, old_b) = relabel_sequential(s.instances), relabel_sequential(ref)
    assert [s.classes[int(i)] for i in old_a] == [ref_cls[int(i)] for i in old_b]


def test_consep_mat_type_map(shared_data):
    samples = list(read_samples("consep", shared_data / "cellseg-patches"))
    assert [len(np.unique(s.instances)) - 1 for s in samples] == [20, 47, 58]
    assert all(set(s.classes.values()) <= {1, 2, 3, 4, 5} for s in samples)


def test_dsb2018_folders_and_csv(shared_data, tmp_path):
    from nucseg.data.readers.instance_lists import rle_encode

    raw = shared_data / "dsb2018-train/raw"
    samples = list(read_samples("dsb2018", raw))
    assert len(samples) == 8
    for s in samples:
        assert same_instances(s.instances, read_label(shared_data / f"dsb2018-train/labels/{s.id}.png"))
    s = samples[0]
    link(raw / s.id / "images" / f"{s.id}.png", tmp_path / s.id / "images" / f"{s.id}.png")
    rows = ["ImageId,EncodedPixels,Height,Width"]
    rows += [f"{s.id},{rle_encode(s.instances == i)},{s.instances.shape[0]},{s.instances.shape[1]}"
             for i in np.unique(s.instances)[1:]]
    (tmp_path / "stage1_solution.csv").write_text("\n".join(rows))
    (c,) = list(read_samples("dsb2018", tmp_path))
    assert same_instances(c.instances, s.instances)


def test_rle_is_column_major_one_based():
    from nucseg.data.readers.instance_lists import rle_decode

    m = rle_decode("2 2", (3, 2))  # pixels 2, 3 in column-major order: (1,0), (2,0)
    assert m.tolist() == [[False, False], [True, False], [True, False]]


def test_imagej_cryonuseg(shared_data):
    counts = sorted(len(np.unique(s.instances)) - 1 for s in read_samples("imagej", shared_data / "cryonuseg-examples"))
    assert counts[0] >= 55 and counts[1] >= 110  # 59 and 117 ROIs; tiny overlapping ROIs may be hidden


def test_deepliif(shared_data):
    samples = list(read_samples("deepliif", shared_data / "deepliif-ihc/train"))
    assert len(samples) == 2 and all(s.image.shape == (512, 512, 3) for s in samples)
    assert all(set(s.classes.values()) == {1, 2} for s in samples)
    assert 150 < sum(len(s.classes) for s in samples) < 350


def test_pannuke_fixture(tmp_path):
    from nucseg.data.synthetic import synthetic_sample

    samples = [synthetic_sample(64, 8, seed=i) for i in range(2)]
    images = np.stack([s.image for s in samples]).astype(np.float64)
    masks = np.zeros((2, 64, 64, 6))
    for n, s in enumerate(samples):
        for i, c in s.classes.items():
            masks[n, ..., c - 1][s.instances == i] = i
        masks[n, ..., 5] = s.instances == 0
    fold = tmp_path / "Fold 1"
    (fold / "images" / "fold1").mkdir(parents=True)
    (fold / "masks" / "fold1").mkdir(parents=True)
    np.save(fold / "images/fold1/images.npy", images)
    np.save(fold / "images/fold1/types.npy", np.array(["Breast", "Colon"]))
    np.save(fold / "masks/fold1/masks.npy", masks)
    out = list(read_samples("pannuke", tmp_path))
    assert [o.meta["tissue"] for o in out] == ["Breast", "Colon"]
    from nucseg.labels import instances_to_class_map
    from nucseg.metrics import aji

    for o, s in zip(out, samples):
        assert aji(o.instances, s.instances) == 1.0  # same nuclei (numbered channel by channel)
        assert np.array_equal(instances_to_class_map(o.instances, o.classes),
                              instances_to_class_map(s.instances, s.classes))


def test_coco_and_geojson_round_trip(tmp_path):
    from nucseg.data.synthetic import synthetic_sample
    from nucseg.io.writers import write_coco, write_geojson
    from nucseg.metrics import aji
    from nucseg.structures import Instances

    s = synthetic_sample(96, 12, seed=3)
    inst = Instances(s.instances, s.classes)
    write_image(tmp_path / "img.png", s.image)
    write_coco(tmp_path / "ann.json", [("img.png", inst)])
    (c,) = list(read_samples("coco", tmp_path / "ann.json"))
    assert same_instances(c.instances, s.instances)  # RLE is lossless
    geo = tmp_path / "geo"
    write_image(geo / "images" / "img.png", s.image)
    write_geojson(geo / "geojson" / "img.geojson", inst, {1: "tumour", 2: "immune", 3: "stroma"})
    (g,) = list(read_samples("geojson", geo))
    assert aji(s.instances, g.instances) > 0.85  # polygons through boundary-pixel centres lose a half-pixel rim
    feat = json.loads((geo / "geojson" / "img.geojson").read_text())["features"][0]
    assert feat["properties"]["objectType"] == "detection" and "classification" in feat["properties"]


def test_coco_polygon(tmp_path):
    write_image(tmp_path / "a.png", np.zeros((10, 10, 3), np.uint8))
    data = {"images": [{"id": 1, "file_name": "a.png", "height": 10, "width": 10}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 2, "segmentation": [[2, 2, 6, 2, 6, 6, 2, 6]]}]}
    (tmp_path / "c.json").write_text(json.dumps(data))
    (s,) = list(read_samples("coco", tmp_path / "c.json"))
    assert (s.instances > 0).sum() == 16 and s.classes == {1: 2}  # pixel corners (2..6) cover 4×4 pixels


def test_folder_reader_and_size_mismatch(tmp_path):
    from nucseg.io.images import write_label

    write_image(tmp_path / "images" / "a.png", np.zeros((8, 8, 3), np.uint8))
    write_label(tmp_path / "masks" / "a_mask.png", np.eye(8, dtype=np.int32))
    (s,) = list(read_samples("folder", tmp_path))
    assert s.id == "a" and s.instances.sum() == 8
    write_label(tmp_path / "masks" / "a_mask.png", np.ones((4, 8), np.int32))
    with pytest.raises(InputError, match=r"a_mask.png: mask size 8×4 differs from image size 8×8"):
        list(read_samples("folder", tmp_path))


def test_bad_inputs(tmp_path):
    with pytest.raises(ValueError, match="unknown format 'nope'"):
        read_samples("nope", tmp_path)
    with pytest.raises(InputError, match="source not found"):
        read_samples("monuseg", tmp_path / "missing")
    (tmp_path / "x.xml").write_text("<Annotations><Annotation/></Annotations>")
    write_image(tmp_path / "x.png", np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(InputError, match="x.xml: annotation file has no polygons"):
        list(read_samples("monuseg", tmp_path))
    (tmp_path / "x.xml").write_text("<Annotations><Reg")
    with pytest.raises(InputError, match="x.xml: malformed XML"):
        list(read_samples("monuseg", tmp_path))
    (tmp_path / "bad.png").write_bytes(b"not a png")
    with pytest.raises(InputError, match="bad.png: cannot read image"):
        from nucseg.io.images import read_image

        read_image(tmp_path / "bad.png")
    m = tmp_path / "m"
    m.mkdir()
    (m / "i_mask.txt").write_text("4 4\n1 2 3\n")
    write_image(m / "i.png", np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(InputError, match="i_mask.txt: expected 4×4 = 16 labels, found 3"):
        list(read_samples("cpm", m))


def test_convert_writes_canonical_layout_atomically(shared_data, tmp_path):
    from nucseg.cli import main

    dst = tmp_path / "out"
    assert main(["data", "convert", "--format", "consep", str(shared_data / "cellseg-patches"), str(dst)]) == 0
    info = json.loads((dst / "dataset.json").read_text())
    assert info["images"] == 3 and info["classes"]
    assert sorted(p.name for p in (dst / "labels").iterdir()) == ["patch1.png", "patch2.png", "patch3.png"]
    assert read_label(dst / "labels/patch1.png").max() == 20  # consecutive ids
    assert not list(dst.rglob("*.part"))
    # a bad source file is skipped (exit 1, listed in dataset.json); what was written stays, no partial file
    bad = tmp_path / "bad"
    shutil.copytree(shared_data / "cellseg-patches", bad)
    (bad / "masks" / "patch3.mat").write_bytes(b"garbage")
    before = sorted(p.name for p in (dst / "labels").iterdir())
    assert main(["data", "convert", "--format", "consep", str(bad), str(dst)]) == 1
    info = json.loads((dst / "dataset.json").read_text())
    assert info["images"] == 2 and [s["file"].endswith("patch3.mat") for s in info["skipped"]] == [True]
    assert sorted(p.name for p in (dst / "labels").iterdir()) == before
    assert not list(dst.rglob("*.part"))


def test_large_ids_written_as_tiff(tmp_path):
    from nucseg.io.images import write_label

    labels = np.zeros((4, 4), np.int32)
    labels[0, 0] = 70000
    path = write_label(tmp_path / "l.png", labels)
    assert path.suffix == ".tif" and read_label(path)[0, 0] == 70000
