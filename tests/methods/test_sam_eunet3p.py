"""SAM + eU-Net3+: GLU blocks and the Enhanced Fusion Block (shapes, gradients, windowed attention), the network with
and without SAM, the Dice + focal loss, and the smoke config training through the engine."""

import csv
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from nucseg.losses import focal_loss
from nucseg.methods import get_method
from nucseg.models.blocks import EnhancedFusionBlock, conv_norm_act

pytest.importorskip("segment_anything")

TINY = {"filters": [8, 8, 16, 16, 16], "cat_channels": 4, "sam": "vit_test", "sam_weights": None, "sam_chunk": 64,
        "efb_heads": 2}
SMOKE = Path(__file__).resolve().parents[2] / "configs" / "sam-eunet3p" / "smoke.yaml"


@pytest.mark.parametrize("activation", ["relu", "leakyrelu", "swish", "glu"])
def test_conv_blocks_keep_their_width_for_every_activation(activation):
    block = conv_norm_act(5, 7, activation)
    x = torch.randn(2, 5, 16, 16, requires_grad=True)
    y = block(x)
    assert y.shape == (2, 7, 16, 16)
    y.square().mean().backward()
    assert x.grad.abs().sum() > 0 and block[0].weight.grad.abs().sum() > 0


def test_glu_gates_one_half_by_the_other():
    block = conv_norm_act(3, 4, "glu").eval()
    x = torch.randn(1, 3, 8, 8)
    pre = block[1](block[0](x))
    assert torch.allclose(block(x), pre[:, :4] * torch.sigmoid(pre[:, 4:]), atol=1e-6)
    with pytest.raises(ValueError, match="unknown activation"):
        conv_norm_act(3, 4, "tanh")


@pytest.mark.parametrize("attention", ["cross", "self", "none"])
def test_efb_fuses_to_the_local_width_and_passes_gradients_to_both_inputs(attention):
    torch.manual_seed(0)
    efb = EnhancedFusionBlock(16, 32, heads=4, attention=attention, window=4)
    local = torch.randn(2, 16, 8, 12, requires_grad=True)
    glob = torch.randn(2, 32, 16, 24, requires_grad=True)  # finer than the local map: resized inside
    out = efb(local, glob)
    assert out.shape == local.shape
    out.square().mean().backward()
    assert local.grad.abs().sum() > 0 and glob.grad.abs().sum() > 0
    assert efb.excite[0].weight.grad.abs().sum() > 0
    if attention != "none":
        assert efb.attn.in_proj_weight.grad.abs().sum() > 0 if attention == "self" else efb.attn.q_proj_weight.grad.abs().sum() > 0


def test_windowed_attention_is_local_to_its_window():
    torch.manual_seed(0)
    efb = EnhancedFusionBlock(8, 8, heads=2, window=4).eval()
    local, glob = torch.randn(1, 8, 8, 8), torch.randn(1, 8, 8, 8)
    bumped = glob.clone()
    bumped[..., 5, 5] += 3  # a change in another window that keeps the channel means (the SE gate pools globally)
    bumped[..., 6, 6] -= 3
    with torch.no_grad():
        assert torch.allclose(efb(local, bumped)[..., :4, :4], efb(local, glob)[..., :4, :4], atol=1e-5)
        efb.window = None  # global attention: the change reaches every token
        assert not torch.allclose(efb(local, bumped)[..., :4, :4], efb(local, glob)[..., :4, :4], atol=1e-4)


def test_network_with_and_without_sam_and_deep_supervision_only_in_training():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 64, 96)
    for sam in ("vit_test", "none"):
        method = get_method("sam-eunet3p")({**TINY, "sam": sam})
        net = method.build_model()
        assert (net.sam is None) == (sam == "none")
        out = net.train()(x)
        assert out["logits"].shape == (2, 3, 64, 96) and out["distance"].shape == (2, 1, 64, 96)
        assert sorted(k for k in out if k.startswith("side")) == [f"side{k}_logits" for k in range(1, 5)]
        assert set(net.eval()(x)) == {"logits", "distance"}
    # the SAM encoder is frozen: the engine's optimiser never sees it
    method = get_method("sam-eunet3p")(TINY)
    net = method.build_model()
    trainable = {id(p) for p in method.optimizer_groups(net)["model"]}
    assert not any(id(p) in trainable for p in net.sam.parameters())
    assert any(id(p) in trainable for p in net.efb.parameters())


def test_focal_loss_is_cross_entropy_at_gamma_zero_and_smaller_on_easy_pixels():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 8, 8)
    target = torch.randint(0, 3, (2, 8, 8))
    assert torch.allclose(focal_loss(logits.log_softmax(1), target, gamma=0), F.cross_entropy(logits, target))
    assert focal_loss(logits.log_softmax(1), target, gamma=2) < F.cross_entropy(logits, target)
    # -1: any nucleus class; a pixel sure to be class 1 or 2 costs ~nothing
    sure = torch.tensor([[-9.0, 4.0, 4.0]]).view(1, 3, 1, 1)
    assert focal_loss(sure.log_softmax(1), torch.tensor([[[-1]]])) < 1e-6


def test_smoke_config_lowers_the_loss_and_segments(tmp_path, monkeypatch):
    from nucseg.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(["train", str(SMOKE), "--out", str(tmp_path / "run")]) == 0
    rows = list(csv.DictReader(open(tmp_path / "run" / "train.csv")))
    first, last = float(rows[0]["total"]), float(rows[-1]["total"])
    assert last < 0.7 * first
    val = list(csv.DictReader(open(tmp_path / "run" / "val.csv")))
    assert float(val[-1]["aji"]) > 0.3
    # export may record a weight-free model key (SAM's chunk) with the model, never one that changes the network
    from nucseg.engine.checkpoints import build_from_checkpoint
    from nucseg.engine.tune import export_checkpoint

    export_checkpoint(tmp_path / "run", tmp_path / "chunk128.pt", ["model.sam_chunk=128"])
    _, model, cfg = build_from_checkpoint(tmp_path / "chunk128.pt")
    assert cfg.model["sam_chunk"] == 128 and model.sam.chunk == 128
    with pytest.raises(ValueError, match="model.filters"):
        export_checkpoint(tmp_path / "run", tmp_path / "wider.pt", ["model.filters=[8,16,32,64,128]"])


def test_paper_config_asks_for_the_official_weights_by_name():
    from nucseg.engine.config import load_config

    paper = SMOKE.with_name("paper.yaml")
    with pytest.raises(ValueError, match=r"paper.yaml: model.sam_weights must be given"):
        load_config(paper)
    cfg = load_config(paper, ["model.sam_weights=/data/sam_vit_b_01ec64.pth"])
    assert cfg.model["sam"] == "vit_b" and cfg.optim.lr == 1e-4 and cfg.model["dropout"] == 0.3
