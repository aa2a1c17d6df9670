"""Outlines are right by construction: one valid geometry per id, area = pixel count, rasterising gives the map back."""

import json

import numpy as np
import pytest
import shapely

from nucseg import labels as L
from nucseg.data.synthetic import synthetic_sample
from nucseg.io.writers import write_geojson, write_outputs
from nucseg.structures import Instances


def tricky_map() -> np.ndarray:
    """Thin, one-pixel, touching, holed, split and diagonal-only nuclei in one map."""
    m = np.zeros((40, 40), np.int32)
    m[2, 2] = 1  # one pixel
    m[5:25, 5] = 2  # one pixel wide line
    m[5:12, 8:15] = 3  # a square touching...
    m[5:12, 15:20] = 4  # ...another square
    m[15:25, 10:20] = 5  # a ring with a hole
    m[18:22, 13:17] = 0
    m[19:21, 14:16] = 6  # a nucleus inside the hole
    m[30:33, 2:5] = 7  # one nucleus in two pieces
    m[30:33, 20:23] = 7
    m[35, 30] = m[36, 31] = m[37, 32] = 8  # pixels that touch only at corners
    m[30:34, 30:34] = 9
    m[31:33, 31:33] = 0  # hole...
    m[31, 31] = 0
    m[33, 30] = 0  # ...and a notch touching a corner of it
    return m


def random_map(rng: np.random.Generator, size: int = 48) -> np.ndarray:
    """Random blobs and speckle: pieces of one id scattered, diagonal contacts, holes, single pixels."""
    coarse = rng.integers(0, 6, size=(size // 4, size // 4))
    m = np.kron(coarse, np.ones((4, 4), np.int64))
    noise = rng.random((size, size)) < 0.15
    m[noise] = rng.integers(0, 9, size=noise.sum())
    return m.astype(np.int32)


def check_outlines(m: np.ndarray) -> None:
    outlines = L.instance_outlines(m)
    ids = L.instance_ids(m)
    assert sorted(outlines) == ids.tolist()  # one geometry per id, none lost
    areas = L.areas(m)
    for i, g in outlines.items():
        assert shapely.is_valid(g), (i, shapely.is_valid_reason(g))
        assert g.area == pytest.approx(areas[i])
    assert np.array_equal(L.rasterize_outlines(outlines, m.shape), m)


def test_tricky_shapes():
    m = tricky_map()
    check_outlines(m)
    outlines = L.instance_outlines(m)
    assert outlines[7].geom_type == "MultiPolygon" and len(outlines[7].geoms) == 2
    assert outlines[8].geom_type == "MultiPolygon" and len(outlines[8].geoms) == 3  # 4-connected pieces
    assert len(outlines[5].interiors) == 1
    assert outlines[1].area == 1 and outlines[2].area == 20


@pytest.mark.parametrize("seed", range(12))
def test_random_maps(seed):
    check_outlines(random_map(np.random.default_rng(seed)))


def test_synthetic_and_large_ids():
    m = synthetic_sample(128, 25, seed=3).instances
    check_outlines(m)
    big = np.where(m > 0, m + 70_000, 0)  # ids beyond 16 bits
    check_outlines(big)


def test_real_label_maps(shared_data):
    from nucseg.io.images import read_label

    paths = sorted((shared_data / "monuseg-train" / "labels").glob("*.png"))[:2]
    paths += sorted((shared_data / "consep-patches-train" / "labels").glob("*.png"))[:5]
    paths += sorted((shared_data / "dsb2018-train" / "labels").glob("*.png"))[:5]
    for p in paths:
        check_outlines(read_label(p))


def test_disc_perimeter_close_to_circumference():
    yy, xx = np.mgrid[:41, :41]
    disc = ((yy - 20) ** 2 + (xx - 20) ** 2 <= 100).astype(np.int32)
    props = L.instance_properties(disc)
    assert props["perimeter"][0] == pytest.approx(2 * np.pi * 10, rel=0.05)
    assert 0.9 < props["solidity"][0] <= 1.0


def test_geojson_and_csv_hold_every_nucleus(tmp_path):
    m = tricky_map()
    image = np.full((*m.shape, 3), 128, np.uint8)
    written = write_outputs(tmp_path, "t", image, Instances(m), kinds=("geojson", "csv"))
    features = json.loads(written["geojson"].read_text())["features"]
    rows = written["csv"].read_text().splitlines()[1:]
    assert len(features) == len(rows) == len(L.instance_ids(m))
    outlines = {}
    for f in features:
        g = shapely.geometry.shape(f["geometry"])
        assert g.is_valid
        assert g.area == f["properties"]["measurements"]["area"]  # pixel-edge outlines: the pixel count, exactly
        outlines[int(f["properties"]["name"].split()[-1])] = g
    assert np.array_equal(L.rasterize_outlines(outlines, m.shape), m)  # the GeoJSON alone rebuilds the label map


def test_qupath_reads_one_detection_per_nucleus(tmp_path):
    """QuPath's own Python library (qubalab) reads our GeoJSON: one detection per nucleus, with measurements."""
    qubalab_objects = pytest.importorskip("qubalab.objects")

    s = synthetic_sample(96, 12, seed=2)
    m = s.instances.copy()
    m[0:3, 0:2] = m.max() + 1  # and a nucleus on the image border
    props = L.instance_properties(m, s.image)
    path = write_geojson(tmp_path / "a.geojson", Instances(m, scores={int(i): 0.9 for i in L.instance_ids(m)}),
                         properties=props)
    features = qubalab_objects.geojson_features_from_string(path.read_text())
    objects = [qubalab_objects.ImageFeature.create_from_feature(f) for f in features]
    assert len(objects) == len(L.instance_ids(m))
    assert all(o.is_detection for o in objects)
    assert all({"area", "perimeter", "probability"} <= set(o.measurements) for o in objects)
    assert len({str(o.id) for o in objects}) == len(objects)
    for o in objects:
        assert shapely.geometry.shape(o.geometry).is_valid
