"""FrGNet: descriptors, proposals and NMS, InfoNCE, the tile mechanism with contours, and training."""

import csv

import numpy as np
import pytest
import torch

from nucseg.data.synthetic import synthetic_sample
from nucseg.methods.frgnet.efd import decode, decode_torch, descriptor_maps, encode, nucleus_contour


def fill(points: np.ndarray, shape) -> np.ndarray:
    import cv2

    out = np.zeros(shape, np.uint8)
    cv2.fillPoly(out, [np.round(points).astype(np.int32)], 1)
    return out.astype(bool)


@pytest.mark.parametrize("order", [6, 8, 12])
def test_efd_encode_decode_reproduces_a_nucleus(order):
    s = synthetic_sample(96, 6, radius=(7, 11), seed=4)
    for i in np.unique(s.instances)[1:]:
        mask = s.instances == i
        contour = nucleus_contour(mask)
        rebuilt = fill(decode(encode(contour, order), 64), mask.shape)
        assert (rebuilt & mask).sum() / (rebuilt | mask).sum() > 0.9
    coef = np.random.default_rng(0).normal(size=(3, 2 + 4 * order))
    np.testing.assert_allclose(decode_torch(torch.from_numpy(coef), 32).numpy(), decode(coef, 32), atol=1e-9)


def test_descriptor_maps_hold_each_nucleus_relative_to_the_pixel():
    s = synthetic_sample(64, 5, seed=1)
    maps = descriptor_maps(s.instances, 8)
    i = np.unique(s.instances)[1]
    ys, xs = np.nonzero(s.instances == i)
    centre = maps[:2, ys, xs] + np.stack([xs, ys])  # absolute centre: the same from every pixel of the nucleus
    assert np.allclose(centre, centre[:, :1], atol=1e-3)
    assert np.allclose(centre[:, 0], [xs.mean(), ys.mean()], atol=1.0)
    assert (maps[:, s.instances == 0] == 0).all()


def perfect_dense(labels: np.ndarray, order: int = 8) -> dict[str, np.ndarray]:
    """The dense maps a perfect FrGNet would predict for `labels`."""
    fg = (labels > 0).astype(np.float32)[None]
    return {"score": fg, "fourier": descriptor_maps(labels, order), "refine": np.zeros((2, *labels.shape), np.float32),
            "guide": fg}


def test_postprocess_of_perfect_maps_recovers_the_nuclei_and_nms_removes_duplicates():
    from nucseg.methods import get_method
    from nucseg.metrics import aji

    method = get_method("frgnet")({"encoder": "test_efficientnet", "min_area": 4})
    s = synthetic_sample(128, 16, radius=(6, 10), touching=0.3, seed=2)
    dense = perfect_dense(s.instances)
    contours, _ = method.contours(dense)
    n_true = len(np.unique(s.instances)) - 1
    # every nucleus pixel on the proposal grid proposed its nucleus' contour: NMS keeps one per nucleus
    assert abs(len(contours) - n_true) <= 1
    inst = method.postprocess(dense)
    assert abs(len(inst.scores) - n_true) <= 1 and aji(s.instances, inst.labels) > 0.8
    # guide filtering drops what the guide does not support
    dense["guide"] = np.zeros_like(dense["guide"])
    assert method.postprocess(dense).labels.max() == 0


def test_info_nce_is_lowest_for_aligned_pairs():
    from nucseg.methods.frgnet.method import info_nce

    g = torch.Generator().manual_seed(0)
    anchors = torch.randn(8, 16, generator=g)
    others = torch.randn(8, 16, generator=g)
    aligned = info_nce(anchors, torch.cat([anchors + 0.01 * torch.randn(8, 16, generator=g), others]),
                       torch.arange(8), 0.1)
    random = info_nce(anchors, torch.cat([torch.randn(8, 16, generator=g), others]), torch.arange(8), 0.1)
    opposed = info_nce(anchors, torch.cat([-anchors, others]), torch.arange(8), 0.1)
    assert aligned < random < opposed and aligned < 0.05


def test_tiles_equal_whole_for_contours():
    """Descriptors are relative to each pixel, so a tile's crop of the maps gives the same contours: the shared tile
    mechanism (centroid ownership, paste) reproduces the whole-image result."""
    from nucseg.methods import get_method
    from nucseg.metrics import aji
    from nucseg.postprocess.tiles import owned, paste, plan_tiles

    method = get_method("frgnet")({"encoder": "test_efficientnet", "min_area": 4})
    s = synthetic_sample(200, 50, radius=(5, 9), seed=6)
    dense = perfect_dense(s.instances)
    whole = method.postprocess(dense).labels
    out = np.zeros_like(whole)
    next_id = 1
    for t in plan_tiles(200, 200, 96, 24)[1]:
        x0, y0, x1, y1 = t.region
        local, _ = owned(method.postprocess({k: v[:, y0:y1, x0:x1] for k, v in dense.items()}), t)
        new, _ = paste(out[y0:y1, x0:x1], local, next_id)
        next_id += int((new > 0).sum())
    # exactly the whole-image result, up to the ids: same foreground, one tiled id per whole id and back
    fg = whole > 0
    assert np.array_equal(fg, out > 0) and whole.max() > 40
    pairs = set(zip(whole[fg].tolist(), out[fg].tolist()))
    assert len(pairs) == len(np.unique(whole[fg])) == len(np.unique(out[fg]))
    assert aji(whole, out) == 1.0


def test_smoke_training_lowers_the_loss_and_each_switch_trains(tmp_path):
    from nucseg.engine.config import load_config
    from nucseg.engine.train import train

    train(load_config("configs/frgnet/smoke.yaml", ["train.val_every=0"]), tmp_path / "full", progress=False)
    with open(tmp_path / "full/train.csv") as f:
        rows = list(csv.DictReader(f))
    assert float(rows[-1]["total"]) < float(rows[0]["total"])
    assert {"score", "fourier", "contour", "refine", "guide", "contrastive"} <= set(rows[0])
    # each switch trains (its losses finite and falling over 12 steps) and takes effect in what is optimised
    switches = {"no-guide": (["model.guide=none", "model.gilc=false"], {"guide", "contrastive"}, set()),
                "hard-guide": (["model.guide=hard"], set(), {"guide", "contrastive"}),
                "partial": (["data.keep_fraction=0.3"], set(), {"guide"})}
    for name, (switch, absent, present) in switches.items():
        cfg = load_config("configs/frgnet/smoke.yaml", ["train.steps=12", "train.val_every=0", "train.log_every=1",
                                                        *switch])
        assert train(cfg, tmp_path / name, progress=False)["step"] == 12
        with open(tmp_path / name / "train.csv") as f:
            log = list(csv.DictReader(f))
        totals = [float(r["total"]) for r in log]
        assert len(totals) == 12 and all(np.isfinite(totals)), name
        assert np.mean(totals[-4:]) < 0.9 * np.mean(totals[:4]), (name, totals)
        columns = set(log[0])
        assert not absent & columns and present <= columns, (name, sorted(columns))


def test_box_nms_matches_torchvision():
    torchvision = pytest.importorskip("torchvision")
    from nucseg.methods.frgnet.method import box_nms

    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 100, (300, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(5, 20, (300, 2))], 1)
    scores = rng.uniform(size=300)
    ref = torchvision.ops.nms(torch.from_numpy(boxes), torch.from_numpy(scores), 0.4).numpy()
    np.testing.assert_array_equal(box_nms(boxes, scores, 0.4), ref)
