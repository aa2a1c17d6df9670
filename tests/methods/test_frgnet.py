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


def test_nms_before_refinement_refines_only_the_survivors_and_finds_the_same_nuclei(monkeypatch):
    from nucseg.methods import get_method
    from nucseg.methods.frgnet import inference
    from nucseg.metrics import aji

    s = synthetic_sample(128, 16, radius=(6, 10), touching=0.3, seed=2)
    dense = perfect_dense(s.instances)
    dense["refine"] = np.random.default_rng(0).normal(0, 0.2, dense["refine"].shape).astype(np.float32)
    refined = []
    real_refine = inference.refine_numpy
    monkeypatch.setattr(inference, "refine_numpy", lambda f, p, n: refined.append(len(p)) or real_refine(f, p, n))
    results = {}
    for first in (False, True):
        method = get_method("frgnet")({"encoder": "test_efficientnet", "min_area": 4, "nms_before_refine": first})
        results[first] = method.postprocess(dense).labels
    n_true = len(np.unique(s.instances)) - 1
    assert refined[0] > 3 * n_true and refined[1] <= n_true + 1  # every proposal, then only NMS's survivors
    assert aji(s.instances, results[True]) > 0.8
    assert aji(results[False], results[True]) > 0.95


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
    assert {"score", "location", "fourier", "contour", "refine", "guide", "contrastive"} <= set(rows[0])
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
        assert np.mean(totals[-4:]) < 0.95 * np.mean(totals[:4]), (name, totals)
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


# --- the loss as the paper and the CPN have it -------------------------------------------------------------------

TERMS = ["score", "location", "fourier", "contour", "refine", "guide", "contrastive"]


def frgnet_batch(keep_fraction: float = 1.0, n: int = 4, **model):
    """A smoke-sized FrGNet and a batch of its training patches from synthetic H&E."""
    from nucseg.data.dataset import DataConfig, PatchDataset, SetConfig, SyntheticSpec
    from nucseg.methods import get_method

    method = get_method("frgnet")({"encoder": "test_efficientnet", "decoder_channels": [16, 16, 8, 8, 8], "order": 4,
                                   "contour_points": 32, "proposals": 32, "contrast_samples": 16,
                                   "embedding_dim": 16, **model})
    cfg = DataConfig(sets=[SetConfig(path="s", synthetic=SyntheticSpec(images=3, size=96, nuclei=24))],
                     patch_size=64, target_margin=8, val_fraction=0.0, keep_fraction=keep_fraction)
    ds = PatchDataset(cfg, method.targets, n, targets_use_image=True)
    items = [ds[i] for i in range(n)]
    batch = {k: torch.as_tensor(np.stack([np.asarray(it[k]) for it in items])) for k in items[0]}
    return method, batch


def build(method):
    """The method's model, its GARU gates moved off their zero start (at zero no gradient passes through them)."""
    torch.manual_seed(0)
    model = method.build_model().train()
    for name, p in model.named_parameters():
        if name.startswith("garu"):
            with torch.no_grad():
                p.normal_(0, 0.1)
    return model


def gradients(method, model, batch, combine) -> dict[str, torch.Tensor]:
    """d combine(losses) / d parameters, after a forward pass with fixed dropout masks."""
    model.zero_grad()
    torch.manual_seed(0)
    losses = method.loss(model(batch["image"].float() / 255), batch)
    combine(losses).backward()
    return {k: p.grad.clone() if p.grad is not None else torch.zeros_like(p) for k, p in model.named_parameters()}


@pytest.mark.parametrize("term", TERMS)
def test_a_zero_weight_term_leaves_the_gradients_as_if_it_were_absent(term):
    """total = Σ weight_k · term_k exactly: weight 0 on a term gives the gradients of the other terms' sum."""
    import dataclasses

    method, batch = frgnet_batch()
    model = build(method)
    cfg = method.config
    weights = {k: getattr(cfg, f"weight_{k}") for k in TERMS}
    rest = gradients(method, model, batch, lambda losses: sum(weights[k] * losses[k] for k in TERMS if k != term))
    zeroed = type(method)(dataclasses.replace(cfg, **{f"weight_{term}": 0.0}))
    got = gradients(zeroed, model, batch, lambda losses: losses["total"])
    for name in got:
        torch.testing.assert_close(got[name], rest[name], msg=f"{term}: {name}")
    if term == "guide":  # the guide enters GARU detached: without its own loss the guide head learns nothing
        assert all(got[k].abs().max() == 0 for k in got if k.startswith("guide_head."))


def test_the_guide_head_learns_from_instance_losses_only_when_not_detached():
    method, batch = frgnet_batch(weight_guide=0.0, detach_guide=False)
    model = build(method)
    got = gradients(method, model, batch, lambda losses: losses["total"])
    assert max(got[k].abs().max() for k in got if k.startswith("guide_head.")) > 0


def test_refinement_gradients_do_not_reach_the_fourier_head():
    method, batch = frgnet_batch()
    model = build(method)
    got = gradients(method, model, batch, lambda losses: losses["refine"])
    assert all(got[k].abs().max() == 0 for k in got if k.startswith("fourier_head."))
    assert max(got[k].abs().max() for k in got if k.startswith("refine_head.")) > 0


def test_unannotated_nuclei_change_neither_the_guide_loss_nor_gilc_pairs():
    method, batch = frgnet_batch(keep_fraction=0.3)
    valid = batch["valid"]
    assert 0 < valid.mean() < 1
    torch.manual_seed(0)
    model = method.build_model().eval()
    with torch.no_grad():
        out = model(batch["image"].float() / 255)
    out["embedding"] = torch.randn(valid.shape[0], 16, 32, 32)

    def guide_loss_and_pairs(guide_target):
        b = dict(batch, guide=guide_target)
        gen = torch.Generator().manual_seed(0)
        pairs = method.contrast_pairs(guide_target.float(), valid, (32, 32), gen)
        return method.loss(out, b)["guide"], pairs

    base_loss, base_pairs = guide_loss_and_pairs(batch["guide"])
    hole = valid == 0
    for flipped in (torch.where(hole, 1.0, batch["guide"]), torch.where(hole, 0.0, batch["guide"])):
        loss, pairs = guide_loss_and_pairs(flipped)
        assert torch.isclose(loss, base_loss)
        for a, b in zip(base_pairs, pairs):
            assert (a is None and b is None) or all(torch.equal(x, y) for x, y in zip(a, b))
    # the same change where nuclei are annotated does change both: the test can fail
    loss, pairs = guide_loss_and_pairs(torch.where(hole, batch["guide"], 1 - batch["guide"]))
    assert not torch.isclose(loss, base_loss)
    assert any(a is not None and (b is None or not torch.equal(a[0], b[0])) for a, b in zip(base_pairs, pairs))


def test_descriptors_sampled_at_pixels_equal_the_upsampled_map():
    import torch.nn.functional as F

    from nucseg.methods.frgnet.method import sample_at_pixels

    low = torch.randn(5, 16, 12)
    full = F.interpolate(low[None], size=(32, 24), mode="bilinear", align_corners=False)[0]
    ys, xs = torch.meshgrid(torch.arange(32), torch.arange(24), indexing="ij")
    got = sample_at_pixels(low, xs.flatten(), ys.flatten(), (32, 24))
    torch.testing.assert_close(got, full[:, ys.flatten(), xs.flatten()].T)


def test_garu_starts_as_the_identity_and_can_switch_features_off():
    from nucseg.methods.frgnet.model import GARU

    garu = GARU(8)
    features, guide = torch.rand(2, 8, 16, 16) + 0.1, torch.rand(2, 1, 8, 8)
    torch.testing.assert_close(garu(features, guide), features)
    with torch.no_grad():  # a large negative bias: the gain 1 + tanh(a) goes to 0
        garu.gate[-1].bias.fill_(-20.0)
    assert garu(features, guide).abs().max() < 1e-6


def test_test_time_flips_bring_the_refinement_field_back_and_leave_descriptors_out():
    """A field pointing at a centre, seen on a flipped image, unflips to the original; descriptors are not
    averaged over flips (a mirrored contour has another start and direction)."""
    from nucseg.methods import get_method

    method = get_method("frgnet")({"encoder": "test_efficientnet"})
    ys, xs = torch.meshgrid(torch.arange(12.0), torch.arange(16.0), indexing="ij")
    field = torch.stack([6.0 - xs, 4.0 - ys])[None]  # N×2×H×W: (dx, dy) towards (6, 4)
    for dims in [(-1,), (-2,), (-2, -1)]:
        # what a flip-equivariant model predicts on the flipped image: the flipped field, mirrored components negated
        seen = torch.flip(field, dims) * torch.tensor([-1.0 if -1 in dims else 1.0,
                                                       -1.0 if -2 in dims else 1.0]).view(1, 2, 1, 1)
        torch.testing.assert_close(method.unflip("refine", seen, dims), field)
        assert method.unflip("fourier", seen, dims) is None
        torch.testing.assert_close(method.unflip("score", field[:, :1], dims), torch.flip(field[:, :1], dims))
