import numpy as np

from nucseg import targets as T


def two_touching():
    lab = np.zeros((12, 20), np.int32)
    lab[2:10, 2:10] = 4
    lab[2:10, 10:18] = 9
    return lab


def test_three_class_marks_touching_edges():
    tc = T.three_class(two_touching(), boundary_width=1)
    assert tc[5, 9] == T.BOUNDARY and tc[5, 10] == T.BOUNDARY  # the shared edge
    assert tc[5, 5] == T.INTERIOR and tc[0, 0] == T.BACKGROUND
    wide = T.three_class(two_touching(), boundary_width=3)
    assert (wide == T.BOUNDARY).sum() > (tc == T.BOUNDARY).sum()


def test_distance_map_normalised_per_nucleus():
    lab = two_touching()
    lab[2:6, 10:14] = 0  # make the second nucleus smaller and odd-shaped
    d = T.distance_map(lab)
    for i in (4, 9):
        assert np.isclose(d[lab == i].max(), 1.0)
    assert d[lab == 0].max() == 0


def test_hv_maps_range_and_sign():
    hv = T.hv_maps(two_touching())
    assert hv.min() >= -1 and hv.max() <= 1
    assert hv[0, 5, 2] < 0 < hv[0, 5, 9]  # x offset: left of centre negative
    assert hv[1, 2, 5] < 0 < hv[1, 9, 5]


def test_centroid_map():
    c = T.centroid_map(two_touching())
    assert c.sum() == 2 and c[6, 6] == 1
    blurred = T.centroid_map(two_touching(), sigma=1.5)
    assert np.isclose(blurred.max(), 1.0, atol=0.05)


def test_foreground():
    assert T.foreground(two_touching()).sum() == 128
