"""Instance metrics: hand-computed cases, known pitfalls, properties, and parity with the per-instance reference."""

import numpy as np
import pytest
from reference_metrics import ref_aji, ref_aji_plus, ref_dice, ref_pq, remap

from nucseg import metrics as M


def boxes(shape, *rects):
    out = np.zeros(shape, np.int32)
    for i, (r0, c0, r1, c1) in rects:
        out[r0:r1, c0:c1] = i
    return out


def test_hand_computed_single_pair():
    t = boxes((10, 10), (1, (0, 0, 4, 4)))  # 16 px
    p = boxes((10, 10), (7, (0, 0, 4, 2)))  # 8 px inside
    assert M.aji(t, p) == pytest.approx(8 / 16)
    assert M.dice(t, p) == pytest.approx(2 * 8 / 24)
    s = M.pq(t, p)
    assert (s["tp"], s["fp"], s["fn"]) == (0, 1, 1)  # IoU 0.5 is not > 0.5
    assert s["pq"] == 0


def test_one_prediction_covering_two_nuclei():
    t = boxes((10, 10), (1, (0, 0, 4, 4)), (2, (0, 4, 4, 8)))
    p = boxes((10, 10), (5, (0, 0, 4, 8)))
    # AJI: both nuclei take pred 5 (IoU .5 each); inter 16+16, union 32+32
    assert M.aji(t, p) == pytest.approx(32 / 64)
    # AJI+: pred 5 pairs with one nucleus; the other joins the union: 16 / (32 + 16)
    assert M.aji_plus(t, p) == pytest.approx(16 / 48)


def test_non_contiguous_shuffled_huge_ids_equal_contiguous():
    rng = np.random.default_rng(0)
    t = boxes((32, 32), (1, (0, 0, 8, 8)), (2, (10, 10, 20, 18)), (3, (22, 0, 30, 9)))
    p = boxes((32, 32), (1, (1, 1, 8, 9)), (2, (10, 12, 20, 20)), (3, (25, 25, 30, 30)))
    huge = np.array([0, 2**31 - 1, 70000, 3])
    base = [M.aji(t, p), M.aji_plus(t, p), M.pq(t, p)["pq"]]
    mapped = [M.aji(t, huge[p]), M.aji_plus(t, huge[p]), M.pq(t, huge[p])["pq"]]
    assert np.allclose(base, mapped)
    perm = np.concatenate([[0], rng.permutation(3) + 1])
    assert np.allclose(base, [M.aji(perm[t], p), M.aji_plus(perm[t], p), M.pq(perm[t], p)["pq"]])


def test_empty_maps():
    z = np.zeros((8, 8), np.int32)
    t = boxes((8, 8), (1, (0, 0, 4, 4)))
    for fn in (M.aji, M.aji_plus, M.dice):
        assert fn(t, z) == 0.0
        assert fn(z, t) == 0.0
        assert fn(z, z) == 1.0
    assert M.pq(t, z)["pq"] == 0.0 and M.pq(z, z)["pq"] == 1.0
    assert M.detection_by_centroid(t, z)["f1"] == 0.0
    assert np.isnan(M.hausdorff(t, z))


def test_perfect_prediction_scores_one(synthetic_set):
    from nucseg.io.images import read_label

    t = read_label(next((synthetic_set / "labels").iterdir()))
    row = M.instance_scores(t, t * 3)
    for k in ("aji", "aji_plus", "dice", "dq", "pq", "f1_det", "miou"):
        assert row[k] == pytest.approx(1.0, abs=1e-6), k
    assert row["sq"] == pytest.approx(1.0, abs=1e-5)
    assert row["hausdorff"] == 0.0


def test_pq_below_half_uses_hungarian():
    t = boxes((10, 10), (1, (0, 0, 4, 4)))
    p = boxes((10, 10), (1, (0, 0, 4, 2)), (2, (0, 2, 4, 3)))
    assert M.pq(t, p, 0.3)["tp"] == 1 and M.pq(t, p)["tp"] == 0


def test_centroid_detection_radius():
    t = boxes((40, 40), (1, (0, 0, 5, 5)))
    p = boxes((40, 40), (1, (10, 10, 15, 15)))  # centroids 14.1 px apart
    assert M.detection_by_centroid(t, p, radius=12)["f1"] == 0
    assert M.detection_by_centroid(t, p, radius=15)["f1"] == 1


def test_hausdorff_of_shifted_square():
    t = boxes((20, 20), (1, (2, 2, 10, 10)))
    p = boxes((20, 20), (1, (2, 4, 10, 12)))
    assert M.hausdorff(t, p) == pytest.approx(2.0)


def test_semantic_miou():
    t = boxes((4, 4), (1, (0, 0, 2, 4)))
    p = boxes((4, 4), (1, (0, 0, 1, 4)))
    # fg IoU 4/8, bg IoU 8/12
    assert M.semantic_scores(t > 0, p > 0)["miou"] == pytest.approx((0.5 + 8 / 12) / 2)


def perturb(t, rng):
    """A realistic prediction: shifted, dilated, some nuclei dropped, some merged, new ids."""
    from scipy import ndimage as ndi

    p = ndi.grey_dilation(np.roll(t, (2, -3), axis=(0, 1)), size=3)
    ids = np.unique(p)[1:]
    p[np.isin(p, rng.choice(ids, len(ids) // 10, replace=False))] = 0
    merge = rng.choice(ids, min(10, len(ids)), replace=False)
    p[np.isin(p, merge)] = merge[0]
    lut = np.concatenate([[0], rng.permutation(int(p.max())) * 5 + 11])
    return lut[p]


@pytest.mark.parametrize("name", ["gbm40/labels/05.png", "cpm15-train/labels/image03.png",
                                  "monuseg-train/labels/TCGA-50-5931-01Z-00-DX1.png"])
def test_parity_with_reference_on_real_labels(shared_data, name):
    from nucseg.io.images import read_label

    t = read_label(shared_data / name)
    p = perturb(t, np.random.default_rng(1))
    rt, rp = remap(t), remap(p)
    ours = [M.aji(t, p), M.aji_plus(t, p), *[M.pq(t, p)[k] for k in ("dq", "sq", "pq")], M.dice(t, p),
            M.pq(t, p, 0.3)["pq"]]
    ref = [ref_aji(rt, rp), ref_aji_plus(rt, rp), *ref_pq(rt, rp), ref_dice(t, p), ref_pq(rt, rp, 0.3)[2]]
    assert np.allclose(ours, ref, atol=1e-6, rtol=0)


def _perturbed(labels, seed):
    """A plausible prediction: shifted, some nuclei eroded, grown or holed."""
    from scipy import ndimage as ndi

    rng = np.random.default_rng(seed)
    p = np.roll(labels, (int(rng.integers(-2, 3)), int(rng.integers(-2, 3))), axis=(0, 1))
    grown = ndi.grey_dilation(p, size=3)
    p = np.where((p == 0) & (rng.random(p.shape) < 0.5), grown, p)
    p[rng.random(p.shape) < 0.02] = 0  # speckle holes, so the farthest pixel can lie inside a nucleus
    return p


def test_hausdorff_equals_per_pair_reference():
    from reference_metrics import hausdorff_per_pair

    from nucseg.data.synthetic import synthetic_sample
    from nucseg.labels import relabel_sequential

    for seed in range(3):
        t = synthetic_sample(160, 30, seed=seed).instances
        p = _perturbed(t, seed)
        pt, pp, _, _ = M.match_pairs(t, p, 0.5)
        t_rel, t_old = relabel_sequential(t)
        p_rel, p_old = relabel_sequential(p)
        ref = hausdorff_per_pair(t_rel, p_rel, zip(pt + 1, pp + 1))
        assert M.hausdorff(t, p) == pytest.approx(ref, abs=1e-9)
    # a prediction with a hole in the middle: the farthest pixel is inside the true nucleus, not on its boundary
    t = boxes((30, 30), (1, (2, 2, 28, 28)))
    p = t.copy()
    p[12:18, 12:18] = 0
    assert M.hausdorff(t, p) == pytest.approx(hausdorff_per_pair(t, p, [(1, 1)]))
    assert M.hausdorff(t, p) == pytest.approx(3.0)


def test_hausdorff_beyond_the_ring_search(monkeypatch):
    """Pixels farther from their partner than the ring search reaches are measured against the boundary, by brute
    force or a KD-tree, exactly."""
    from reference_metrics import hausdorff_per_pair

    from nucseg.metrics import instance

    t = boxes((40, 90), (1, (5, 5, 11, 75)), (2, (20, 5, 30, 20)))
    p = boxes((40, 90), (1, (5, 5, 11, 50)), (2, (21, 6, 31, 21)))  # bar 1 is 25 px short at one end
    expected = hausdorff_per_pair(t, p, [(1, 1), (2, 2)])
    assert expected == pytest.approx((25.0 + 2**0.5) / 2)
    assert M.hausdorff(t, p) == pytest.approx(expected)
    monkeypatch.setattr(instance, "_RING_RADIUS", 1)
    assert M.hausdorff(t, p) == pytest.approx(expected)
    monkeypatch.setattr(instance, "_BRUTE_FORCE_LIMIT", 0)  # the KD-tree for huge far sets
    assert M.hausdorff(t, p) == pytest.approx(expected)
    monkeypatch.setattr(instance, "_RING_RADIUS", 8)
    monkeypatch.setattr(instance, "_RING_WORK_LIMIT", 0)  # no ring at all: every pixel to the boundary search
    assert M.hausdorff(t, p) == pytest.approx(expected)


def test_instance_scores_reject_maps_of_another_shape():
    t = np.zeros((4, 6), np.int32)
    t[0, :3] = 1
    with pytest.raises(ValueError, match="differ in size"):
        M.instance_scores(t, t.T.copy())


def test_hausdorff_on_real_labels(shared_data):
    from reference_metrics import hausdorff_per_pair

    from nucseg.io.images import read_label
    from nucseg.labels import relabel_sequential

    path = sorted((shared_data / "monuseg-train" / "labels").glob("*.png"))[0]
    t, _ = relabel_sequential(read_label(path))
    p, _ = relabel_sequential(_perturbed(t, 7))
    pt, pp, _, _ = M.match_pairs(t, p, 0.5)
    assert M.hausdorff(t, p) == pytest.approx(hausdorff_per_pair(t, p, zip(pt + 1, pp + 1)), abs=1e-9)


def test_foreground_miou_from_overlap_equals_pixel_count():
    from nucseg.data.synthetic import synthetic_sample

    for seed in range(3):
        t = synthetic_sample(96, 10, seed=seed).instances
        p = _perturbed(t, seed)
        for a, b in ((t, p), (t, np.zeros_like(t)), (np.zeros_like(t), np.zeros_like(t)), (np.ones_like(t), t)):
            expected = M.semantic_scores(a > 0, b > 0, num_classes=2)["miou"]
            assert M.instance_scores(a, b)["miou"] == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("max_rounds", [64, 1])  # 1: scipy takes over
def test_bipartite_components_equal_scipy(monkeypatch, max_rounds):
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    from nucseg.metrics import matching
    from nucseg.metrics.matching import _bipartite_components

    monkeypatch.setattr(matching, "_MAX_ROUNDS", max_rounds)
    rng = np.random.default_rng(0)
    for n_true, n_pred, n_edges in ((5, 4, 0), (30, 40, 25), (200, 150, 400), (60, 60, 59)):
        a = rng.integers(0, n_true, n_edges)
        b = rng.integers(0, n_pred, n_edges) + n_true
        if n_edges == 59:  # one long chain: true k - pred k - true k+1 - ...
            a, b = np.r_[np.arange(59), np.arange(1, 60)], np.r_[np.arange(59), np.arange(59)] + 60
        ours = _bipartite_components(a, b, n_true + n_pred)
        graph = coo_matrix((np.ones(a.size), (a, b)), shape=(n_true + n_pred,) * 2)
        _, theirs = connected_components(graph, directed=False)
        # the same partition: each of our labels is one of theirs and back
        pairs = set(zip(ours.tolist(), theirs.tolist()))
        assert len(pairs) == len(set(ours.tolist())) == len(set(theirs.tolist()))
