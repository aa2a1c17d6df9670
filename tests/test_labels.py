import numpy as np
import pytest

from nucseg import labels as L
from nucseg.data.synthetic import synthetic_sample
from nucseg.structures import Sample


def test_relabel_and_class_maps():
    lab = np.array([[0, 7, 7], [90000, 0, 3]], np.int32)
    new, old = L.relabel_sequential(lab)
    assert new.tolist() == [[0, 2, 2], [3, 0, 1]] and old.tolist() == [3, 7, 90000]
    cmap = L.instances_to_class_map(lab, {7: 2, 3: 1})
    assert cmap.tolist() == [[0, 2, 2], [0, 0, 1]]
    assert L.class_map_to_instance_classes(lab, cmap) == {3: 1, 7: 2, 90000: 0}


def test_polygons_round_trip_and_properties():
    s = synthetic_sample(128, 15, seed=1)
    polys = L.instances_to_polygons(s.instances)
    back = L.polygons_to_instances(polys, s.instances.shape)
    from nucseg.metrics import aji

    assert aji(s.instances, back) > 0.8
    ids, cents = L.centroids(s.instances)
    props = L.instance_properties(s.instances, s.image, mpp=0.5)
    assert np.allclose(props["centroid_y"], cents[:, 0] * 0.5)
    assert np.allclose(props["area"], [np.sum(s.instances == i) * 0.25 for i in ids])
    assert set(L.bounding_boxes(s.instances)) == set(ids.tolist())


def test_sample_validates_sizes():
    with pytest.raises(ValueError, match="mask size"):
        Sample(np.zeros((4, 4, 3), np.uint8), np.zeros((5, 4), np.int32), meta={"id": "x"})


@pytest.mark.parametrize("style", ["he", "ihc", "fluorescence"])
def test_synthetic_is_seedable_and_has_touching_nuclei(style):
    a = synthetic_sample(128, 30, style=style, seed=7)
    b = synthetic_sample(128, 30, style=style, seed=7)
    assert np.array_equal(a.image, b.image) and np.array_equal(a.instances, b.instances)
    from scipy import ndimage as ndi

    touching = (ndi.maximum_filter(a.instances, 3) != ndi.minimum_filter(a.instances, 3)) & (
        ndi.minimum_filter(a.instances, 3) > 0)
    assert touching.any()
    assert a.meta["modality"] in ("he", "ihc", "fluorescence")
