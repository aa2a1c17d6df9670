"""CFR-SAM: Hungarian matching, point selection, MALA and the other adapters, HMFM and BGMR (shapes and gradients),
per-prompt decoding, instance maps through the engine's blocks, and both stages of the smoke config."""

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from nucseg.methods.cfr_sam.prompts import match_anchors, prompt_learner_loss, select_points
from nucseg.methods.cfr_sam.refine import BGMR, HMFM
from nucseg.models.adapters import MALA, add_adapters

pytest.importorskip("segment_anything")

SMOKE = Path(__file__).resolve().parents[2] / "configs" / "cfr-sam" / "smoke.yaml"
TINY = {"num_classes": 3, "prompt_encoder": "test_efficientnet", "fpn_channels": 16, "fpn_levels": 2,
        "anchor_stride": 4, "prompt_hidden": 32, "sam": "vit_test", "sam_weights": None, "sam_chunk": 64,
        "adapter_rank": 8, "hmfm_levels": [0], "refine_channels": 8, "edge_channels": 4, "mask_window": 32}


def test_hungarian_matching_assigns_each_centroid_once_to_the_best_anchor():
    # three anchors sit on three centroids, a fourth is far from all; classes decide between two close anchors
    anchors = np.array([[10, 10], [30, 30], [31, 30], [90, 90]], np.float32)
    prob = np.full((4, 3), 1 / 3, np.float32)
    prob[1] = [0.1, 0.8, 0.1]  # anchor 1: class 1
    prob[2] = [0.1, 0.1, 0.8]  # anchor 2: class 2, as close to centroid 1 as anchor 1
    gt = np.array([[10, 10], [30.5, 30]], np.float32)
    a, c = match_anchors(prob, anchors, gt, np.array([0, 2]), alpha=0.1)
    pairs = dict(zip(c.tolist(), a.tolist()))
    assert sorted(c.tolist()) == [0, 1] and len(set(a.tolist())) == 2
    assert pairs == {0: 0, 1: 2}
    # more centroids than a class prefers: still one anchor each
    gt = np.array([[10, 10], [30, 30], [31, 31], [60, 60]], np.float32)
    a, c = match_anchors(prob, anchors, gt, np.array([1, 1, 1, 1]), alpha=0.1)
    assert sorted(c.tolist()) == [0, 1, 2, 3] and len(set(a.tolist())) == 4


def test_point_selection_drops_background_and_duplicates_within_the_distance():
    points = torch.tensor([[10.0, 10.0], [11.0, 11.0], [30.0, 30.0], [50.0, 50.0], [-3.0, 5.0]])
    logits = torch.tensor([[-2.0, 3.0], [-2.0, 2.0], [-1.0, 2.0], [3.0, -3.0], [-3.0, 3.0]])  # column 0: background
    pts, cls, score, index = select_points(points, logits, 64, 64, 0.5, min_distance=3.0)
    assert index.tolist() == [0, 2]  # 1 is 1.4 px from the stronger 0; 3 is background; 4 is outside the image
    assert torch.equal(pts, points[[0, 2]]) and cls.tolist() == [1, 1]
    assert (score[:-1] >= score[1:]).all()
    _, _, _, index = select_points(points, logits, 64, 64, 0.5, min_distance=1.0)
    assert index.tolist() == [0, 1, 2]


def test_prompt_loss_learns_matched_anchors_as_nuclei():
    torch.manual_seed(0)
    logits = torch.zeros(1, 16, 2, requires_grad=True)
    points = torch.rand(1, 16, 2) * 32
    out = {"logits": logits, "points": points, "fg": torch.zeros(1, 1, 8, 8)}
    gt = [{"points": points[0, [3, 7]].numpy() + 0.5, "classes": np.array([1, 0]), "sizes": np.zeros((2, 2))}]
    losses = prompt_learner_loss(out, gt, torch.zeros(1, 8, 8))
    losses["total"].backward()
    grad = logits.grad[0]
    # matched anchors are pushed towards the nucleus class (column 1), the others towards background
    assert grad[3, 1] < 0 and grad[7, 1] < 0 and (grad[[i for i in range(16) if i not in (3, 7)], 0] < 0).all()
    assert float(losses["matched"]) == 2


def test_mala_kernels_are_normalised_and_the_shifted_sum_is_the_unfolded_convolution():
    torch.manual_seed(0)
    for dynamic in (True, False):
        mala = MALA(12, rank=4, dynamic=dynamic)
        z = torch.randn(2, 4, 9, 7)
        for k, kernel in zip(mala.kernel_sizes, mala.kernels(z)):
            assert kernel.shape[1] == k * k
            assert torch.allclose(kernel.sum(1), torch.ones(()), atol=1e-5)
    # MALA's forward against eqs. 4-5 written with unfold
    mala = MALA(12, rank=4)
    torch.nn.init.normal_(mala.up.weight)
    x = torch.randn(2, 9, 7, 12)
    z = mala.down(mala.norm(x)).permute(0, 3, 1, 2)
    local = 0
    for k, kernel in zip(mala.kernel_sizes, mala.kernels(z)):
        patches = F.unfold(z, k, padding=k // 2).view(2, 4, k * k, 9, 7)
        local = local + (patches * kernel[:, None]).sum(2)
    z = z + local / 3
    z = z + mala.mix(z)
    expected = x + mala.up(mala.act(z).permute(0, 2, 3, 1))
    assert torch.allclose(mala(x), expected, atol=1e-5)


@pytest.mark.parametrize("kind", ["mala", "mala_static", "adapter", "lora"])
def test_adapters_start_as_identity_and_train_while_the_encoder_stays_frozen(kind):
    from nucseg.models.sam import SamBackbone

    torch.manual_seed(0)
    sam = SamBackbone("vit_test", None, chunk=64)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        before = sam(x)["embedding"]
    added = sam.add_adapters(kind, rank=4)
    assert len(added) == 2  # one per transformer block
    out = sam(x)["embedding"]
    assert torch.allclose(out, before, atol=1e-5)
    out.square().mean().backward()
    assert all(p.grad is None for n, p in sam.image_encoder.named_parameters() if ".adapter." not in n
               and ".lora." not in n)
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for a in added for p in a.parameters())
    assert not sam.image_encoder.training or not sam.training


def test_unknown_adapter_is_an_error():
    from nucseg.models.sam import build_sam_parts

    with pytest.raises(ValueError, match="unknown adapter 'prefix'"):
        add_adapters(build_sam_parts("vit_test").image_encoder, "prefix")


@pytest.mark.parametrize("mode", ["hmfm", "add", "concat", "average", "none"])
def test_hmfm_fuses_levels_of_any_width_into_the_embedding(mode):
    torch.manual_seed(0)
    hmfm = HMFM([6, 10], 16, mode)
    emb = torch.randn(2, 16, 8, 8, requires_grad=True)
    levels = [torch.randn(2, 6, 16, 16, requires_grad=True), torch.randn(2, 10, 8, 8, requires_grad=True)]
    out = hmfm(emb, levels)
    assert out.shape == emb.shape
    if mode in ("hmfm", "concat", "none"):  # these start (nearly) as the embedding itself
        assert torch.allclose(out, emb, atol=0.05 * emb.abs().max().item())
    out.square().mean().backward()
    assert emb.grad.abs().sum() > 0
    if mode == "concat":  # the level part of the fuse weights starts at zero and is the first to learn
        assert hmfm.fuse.weight.grad[:, :16].abs().sum() > 0
    elif mode != "none":
        assert hmfm.project[0].weight.grad.abs().sum() > 0


@pytest.mark.parametrize("switches", [{}, {"mcbe": False}, {"bgff": False}])
def test_bgmr_refines_per_prompt_windows_with_gradients_everywhere(switches):
    torch.manual_seed(0)
    bgmr = BGMR(16, 4, 3, channels=8, edge_channels=4, **switches)
    fused = torch.randn(2, 16, 8, 8, requires_grad=True)
    image = torch.randn(2, 3, 32, 32)
    semantic, edges = bgmr.image_features(fused, image)
    assert semantic.shape == (2, 8, 32, 32) and edges.shape == (2, 4, 32, 32)
    mask_feats = torch.randn(5, 4, 16, 16, requires_grad=True)
    refined, boundary = bgmr(semantic[[0, 0, 1, 1, 1], :, :16, :16], mask_feats, edges[[0, 0, 1, 1, 1], :, :16, :16])
    assert refined.shape == boundary.shape == (5, 1, 16, 16)
    (refined.square().mean() + boundary.square().mean()).backward()
    assert fused.grad.abs().sum() > 0 and mask_feats.grad.abs().sum() > 0
    assert all(p.grad is not None for p in bgmr.parameters() if p.requires_grad)


def test_decoding_gives_one_window_per_prompt_inside_the_image():
    from nucseg.methods import get_method

    torch.manual_seed(0)
    model = get_method("cfr-sam")(TINY).build_model()
    images = torch.randn(2, 3, 96, 80)
    points = torch.tensor([[2.0, 2.0], [79.0, 95.0], [40.0, 50.0]])
    out = model(images, "masks", points=points, image_index=torch.tensor([0, 1, 1]))
    assert out["coarse"].shape == out["refined"].shape == (3, 1, 32, 32) and out["iou"].shape == (3,)
    for (x0, y0), (x, y) in zip(out["origin"].tolist(), points.tolist()):
        assert x0 <= x < x0 + 32 and y0 <= y < y0 + 32  # each window holds its prompt
    # context smaller than SAM's grid: a centred crop of the frame, same outputs' shapes
    small = get_method("cfr-sam")({**TINY, "context_tokens": 12, "mask_window": 16}).build_model()
    out = small(images, "masks", points=points, image_index=torch.tensor([0, 1, 1]))
    assert out["refined"].shape == (3, 1, 16, 16)


def test_instance_maps_round_trip_through_postprocess():
    from nucseg.engine.infer import instance_maps
    from nucseg.methods import get_method
    from nucseg.structures import Instances

    labels = np.zeros((20, 20), np.int32)
    labels[2:8, 2:8], labels[10:18, 10:18], labels[0:2, 18:20] = 3, 7, 9
    inst = Instances(labels, {3: 2, 7: 1, 9: 3}, {3: 0.9, 7: 0.6, 9: 0.7})
    method = get_method("cfr-sam")({**TINY, "min_area": 5})
    back = method.postprocess(instance_maps(inst))
    assert np.array_equal(back.labels, np.where(labels == 9, 0, labels))  # 4 px < min_area
    assert back.classes == {3: 2, 7: 1} and back.scores == pytest.approx({3: 0.9, 7: 0.6})


def test_smoke_config_lowers_both_stages_losses_and_segments_large_images_by_blocks(tmp_path, monkeypatch,
                                                                                     synthetic_set):
    from nucseg.cli import main
    from nucseg.data.synthetic import synthetic_sample
    from nucseg.engine.infer import Predictor

    monkeypatch.chdir(tmp_path)
    assert main(["train", str(SMOKE), "--out", str(tmp_path / "run")]) == 0
    rows = list(csv.DictReader(open(tmp_path / "run" / "train.csv")))
    prompts = [float(r["prompts/total"]) for r in rows if r["stage"] == "prompts"]
    masks = [float(r["masks/total"]) for r in rows if r["stage"] == "masks"]
    assert prompts[-1] < 0.7 * prompts[0] and masks[-1] < 0.9 * masks[0]
    # stage 1 is validated by its own metrics, the whole pipeline in stage 2
    val = list(csv.DictReader(open(tmp_path / "run" / "val.csv")))
    first = [r for r in val if r["stage"] == "prompts"]
    assert first and all(0 <= float(r["prompt_recall"]) <= 1 and 0 <= float(r["prompt_precision"]) <= 1
                         for r in first)
    assert float(val[-1]["aji"]) >= 0 and not val[-1]["stage"]
    predictor = Predictor.from_checkpoint(tmp_path / "run" / "best.ckpt", tta=True)
    image = synthetic_sample(200, 40, seed=3).image  # > the 96 px window: blocks with margins
    inst = predictor.segment(image)
    assert inst.labels.shape == (200, 200)
    assert set(inst.classes) == set(inst.ids.tolist()) and set(inst.classes.values()) <= {1, 2, 3}
    assert predictor.runtime == "torch"

    # `nucseg compare` reports the prompts beside the scores: per image in the CSV, their means in the table
    out = tmp_path / "cmp"
    assert main(["compare", str(tmp_path / "run" / "best.ckpt"), "--images", str(synthetic_set / "images"),
                 "--labels", str(synthetic_set / "labels"), "--out", str(out)]) == 0
    per_image = list(csv.DictReader(open(out / "compare.csv")))
    assert len(per_image) == 6 and all(0 <= float(r["prompt_recall"]) <= 1 for r in per_image)
    from nucseg.engine.checkpoints import build_from_checkpoint
    from nucseg.io.images import read_image, read_label
    from nucseg.metrics.evaluate import index_folder

    method, model, _ = build_from_checkpoint(tmp_path / "run" / "best.ckpt")
    first = per_image[0]["image"]
    direct = method.image_diagnostics(model, read_image(index_folder(synthetic_set / "images")[first]),
                                      read_label(index_folder(synthetic_set / "labels")[first]), torch.device("cpu"))
    assert float(per_image[0]["prompt_precision"]) == pytest.approx(direct["prompt_precision"])
    mean = sum(float(r["prompt_recall"]) for r in per_image) / 6
    assert f"| run-best | {mean:.3f} |" in (out / "compare.md").read_text().split("own measures")[1]


def test_deformable_convolution_equals_torchvisions():
    from torchvision.ops import deform_conv2d

    from nucseg.methods.cfr_sam.refine import deform_conv3x3

    torch.manual_seed(0)
    x = torch.randn(2, 5, 11, 9, requires_grad=True)
    offset = (torch.randn(2, 18, 11, 9) * 2).requires_grad_()  # some taps land outside the image
    weight = torch.randn(4, 5, 3, 3, requires_grad=True)
    ours = deform_conv3x3(x, offset, weight)
    ref = deform_conv2d(x, offset, weight, padding=1)
    assert torch.allclose(ours, ref, atol=1e-4)
    g = torch.randn_like(ref)
    grads = torch.autograd.grad((ours * g).sum(), (x, offset, weight))
    ref_grads = torch.autograd.grad((ref * g).sum(), (x, offset, weight))
    for a, b in zip(grads, ref_grads):
        assert torch.allclose(a, b, atol=1e-3)


def _disc_logits(size: int, cy: float, cx: float, radius: float, tilt: float) -> torch.Tensor:
    """Mask logits of a disc, higher towards one side (`tilt` per px along x): what a prompt off-centre gives."""
    yy, xx = torch.meshgrid(torch.arange(size).float(), torch.arange(size).float(), indexing="ij")
    inside = radius - ((yy - cy) ** 2 + (xx - cx) ** 2).sqrt()
    return inside + tilt * (xx - cx)


def test_deduplication_keeps_one_instance_per_nucleus():
    from nucseg.methods.cfr_sam.model import MaskPaster

    # two prompts on one nucleus, each mask leaning to its own side; a third prompt on a neighbour
    one_left, one_right = _disc_logits(48, 20, 20, 8, -0.3), _disc_logits(48, 20, 20, 8, 0.3)
    neighbour = _disc_logits(48, 20, 38, 8, 0.0)
    counts = {}
    for dedup in (0.0, 0.5):
        paster = MaskPaster(1, 48, 48, "cpu", dedup)
        kept = [paster.add(0, lg, 0, 0, 1, s) for lg, s in ((one_left, 0.9), (one_right, 0.8), (neighbour, 0.7))]
        ids = paster.ids[0]
        counts[dedup] = len(torch.unique(ids[ids > 0]))
        if dedup:
            assert kept == [True, False, True] and paster.dropped == 1
            disc = one_left > 0
            assert (ids[disc & (neighbour <= 0)] == 1).all()  # the nucleus whole, held by the better prompt
    assert counts[0.0] == 3 and counts[0.5] == 2  # without: the nucleus split between its two prompts


def test_deduplication_in_instance_maps_and_batchnorm_folding_leave_outputs_as_they_were(monkeypatch):
    """Two prompts on one nucleus give one instance; the BatchNorm-folded model
    gives the unfolded one's maps."""
    from nucseg.methods import get_method
    from nucseg.models.fusion import fold_batchnorm

    torch.manual_seed(0)
    model = get_method("cfr-sam")({**TINY, "dedup_overlap": 0.5}).build_model().eval()
    images = torch.randn(1, 3, 64, 64)
    points = torch.tensor([[30.0, 30.0], [32.0, 31.0]])

    def prompts_of(_images):
        return [{"points": points, "classes": torch.tensor([1, 1]), "scores": torch.tensor([0.9, 0.8])}]

    monkeypatch.setattr(model, "prompts_of", prompts_of)
    with torch.no_grad():
        dec = model(images, "masks", points=points, image_index=torch.tensor([0, 0]))
        same = ((dec["refined"][0] > 0) & (dec["refined"][1] > 0)).sum() / (dec["refined"][1] > 0).sum().clamp(min=1)
        out = model(images)
        folded = fold_batchnorm(model)
        monkeypatch.setattr(folded, "prompts_of", prompts_of)
        out_folded = folded(images)
        feats = model.image_features(model._pad(images))
        feats_folded = folded.image_features(folded._pad(images))
    ids = out["instance"][0, 0]
    assert same >= 0.5  # the random network's two masks overlap as duplicates do
    assert len(torch.unique(ids[ids > 0])) == 1
    from nucseg.methods.cfr_sam.refine import DeformBlock

    # every BatchNorm after a convolution folds; the deformable blocks' own stay (no Conv2d feeds them)
    norms = sum(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    assert norms == sum(isinstance(m, DeformBlock) for m in folded.modules()) > 0
    for k in ("fused", "semantic", "edges"):
        assert torch.allclose(feats[k], feats_folded[k], atol=1e-4)
    assert torch.equal(out["instance"], out_folded["instance"])


def test_prompt_detection_counts_nuclei_with_a_prompt_prompts_on_nuclei_and_duplicates():
    from nucseg.methods.cfr_sam.prompts import prompt_detection

    labels = np.zeros((20, 30), np.int32)
    labels[2:8, 2:8], labels[10:18, 10:18], labels[2:6, 20:28] = 1, 2, 3
    # two prompts on nucleus 1, one on nucleus 2, one on background, one outside the image; nucleus 3 has none
    points = np.array([[4.0, 4.0], [6.5, 5.5], [12.0, 15.0], [25.0, 15.0], [40.0, 3.0]])
    m = prompt_detection(points, labels)
    assert m["prompt_recall"] == pytest.approx(2 / 3) and m["prompt_precision"] == pytest.approx(3 / 4)
    assert m["prompt_duplicates"] == pytest.approx(1 / 3) and m["prompts_per_nucleus"] == pytest.approx(4 / 3)


def test_shared_first_layer_projections_give_the_per_window_decoder_outputs_and_gradients():
    from nucseg.methods import get_method

    torch.manual_seed(0)
    model = get_method("cfr-sam")(TINY).build_model()
    model.sam.unfreeze(("prompt_encoder", "mask_decoder"))  # stage 2 trains them
    images = torch.randn(2, 3, 96, 80)
    points = torch.tensor([[2.0, 2.0], [79.0, 95.0], [40.0, 50.0]])
    index = torch.tensor([0, 1, 1])
    outs = {}
    for share in (False, True):
        model.share_projections = share
        model.zero_grad()
        out = model(images, "masks", points=points, image_index=index)
        (out["refined"].square().mean() + out["iou"].sum()).backward()
        outs[share] = (out, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    for k in ("coarse", "refined", "iou"):
        assert torch.allclose(outs[True][0][k], outs[False][0][k], atol=1e-5)
    grads = outs[True][1]
    assert grads.keys() == outs[False][1].keys()
    assert any("transformer.layers.0.cross_attn_token_to_image.k_proj" in n for n in grads)  # the shared ones too
    assert any(n.startswith("hmfm.") for n in grads)  # and the fused embedding's, through the tile's projections
    for n, g in outs[True][1].items():
        assert torch.allclose(g, outs[False][1][n], atol=1e-5, rtol=1e-4), n
