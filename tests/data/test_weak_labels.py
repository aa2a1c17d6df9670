"""Sets with nucleus masks only (weak labels): reading, patches, the U-Net's partial-label loss, fine-tuning."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from nucseg.data.dataset import DataConfig, PatchDataset, SetConfig, validation_samples
from nucseg.io.images import write_image


@pytest.fixture(scope="module")
def weak_set(synthetic_set, tmp_path_factory):
    """The synthetic set's images with foreground/ masks instead of labels/."""
    from nucseg.io.images import read_label

    root = tmp_path_factory.mktemp("weak") / "weak"
    (root / "images").mkdir(parents=True)
    (root / "foreground").mkdir()
    for p in sorted((synthetic_set / "labels").iterdir()):
        image = next((synthetic_set / "images").glob(p.stem + ".*"))
        (root / "images" / image.name).write_bytes(image.read_bytes())
        write_image(root / "foreground" / p.name, (read_label(p) > 0).astype(np.uint8))
    return root


def unet():
    from nucseg.methods import get_method

    return get_method("unet")(encoder="test_efficientnet", decoder_channels=[16, 16, 8, 8, 8])


def test_mask_sets_give_weak_targets_and_no_validation(synthetic_set, weak_set):
    m = unet()
    cfg = DataConfig(sets=[SetConfig(str(synthetic_set)), SetConfig(str(weak_set), annotation="foreground")],
                     patch_size=48, target_margin=8, val_fraction=0.34)
    ds = PatchDataset(cfg, m.targets, 40, foreground_targets_fn=m.foreground_targets)
    items = [ds[i] for i in range(40)]
    weak = [it for it in items if it["labelled"] == 0]
    full = [it for it in items if it["labelled"] == 1]
    assert weak and full
    assert all(set(np.unique(it["three_class"])) <= {-1, 0} for it in weak)
    assert any((it["three_class"] == -1).any() for it in weak)
    assert all(it["three_class"].min() >= 0 for it in full)
    assert list(validation_samples(cfg)) == ["synth"]  # masks cannot score instances


def test_mask_sets_need_a_method_that_trains_on_masks(weak_set):
    from nucseg.methods import get_method

    m = get_method("weaveseg")()
    assert not m.trains_on_masks and unet().trains_on_masks
    cfg = DataConfig(sets=[SetConfig(str(weak_set), annotation="foreground")], patch_size=48, target_margin=8)
    with pytest.raises(ValueError, match="weak.*masks"):
        PatchDataset(cfg, m.targets, 4)


def test_partial_label_loss():
    m = unet()
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 8, 8, requires_grad=True)
    out = {"logits": logits, "distance": torch.zeros(2, 1, 8, 8)}
    target = torch.randint(0, 3, (2, 8, 8))
    full = {"three_class": target, "distance": torch.rand(2, 1, 8, 8), "labelled": torch.ones(2)}
    # fully labelled: exactly the usual cross-entropy
    assert torch.isclose(m.loss(out, full)["ce"], F.cross_entropy(logits, target))
    # a mask pixel costs -log(p_interior + p_boundary); Dice and distance skip the weak patch
    weak_target = target.clone()
    weak_target[1] = torch.where(target[1] > 0, -1, 0)
    weak = {**full, "three_class": weak_target, "labelled": torch.tensor([1.0, 0.0])}
    losses = m.loss(out, weak)
    log_p = logits.log_softmax(1)
    fg = weak_target[1] < 0
    expected = torch.cat([-log_p[0].gather(0, target[0][None])[0].flatten(),
                          -torch.logsumexp(log_p[1, 1:], 0)[fg], -log_p[1, 0][~fg]]).mean()
    assert torch.isclose(losses["ce"], expected)
    assert torch.isclose(losses["distance"], F.mse_loss(torch.sigmoid(out["distance"][:1]), full["distance"][:1]))
    losses["total"].backward()
    assert torch.isfinite(logits.grad).all()


def test_init_weights_loads_matching_tensors(tmp_path):
    from nucseg.engine.checkpoints import init_weights, save_checkpoint
    from nucseg.engine.config import RunConfig
    from nucseg.methods.unet.model import UNet

    source = UNet("test_efficientnet", decoder_channels=(16, 16, 8, 8, 4), heads={"logits": 3})
    save_checkpoint(tmp_path / "a.ckpt", source, RunConfig())
    target = UNet("test_efficientnet", decoder_channels=(16, 16, 8, 8, 4), heads={"logits": 3}, output_stride=2)
    loaded, total = init_weights(target, tmp_path / "a.ckpt")
    assert 0 < loaded < total  # the encoder and four decoder blocks; not the re-sized heads
    assert torch.equal(target.decoder[0].conv[0][0].weight, source.decoder[0].conv[0][0].weight)
    with pytest.raises(ValueError, match="no weights match"):
        init_weights(torch.nn.Linear(2, 2), tmp_path / "a.ckpt")
    fresh = UNet("test_efficientnet", decoder_channels=(16, 16, 8, 8, 4), heads={"logits": 3})
    before = fresh.decoder[0].conv[0][0].weight.clone()
    only_encoder, _ = init_weights(fresh, tmp_path / "a.ckpt", only=["encoder."])
    assert 0 < only_encoder < loaded
    assert torch.equal(fresh.decoder[0].conv[0][0].weight, before)  # the decoder keeps its own initialisation
    assert all(torch.equal(a, b) for a, b in zip(fresh.encoder.state_dict().values(),
                                                 source.encoder.state_dict().values()))


def test_partial_labels_leave_out_an_optional_mask_set(synthetic_set, weak_set, capsys):
    """A mask of every nucleus would undo `keep_fraction`: a protocol's optional mask-only set is left out with a
    note, a required one stays (the user asked for it)."""
    m = unet()
    sets = [SetConfig(str(synthetic_set)), SetConfig(str(weak_set), annotation="foreground", required=False)]
    cfg = DataConfig(sets=sets, patch_size=48, target_margin=8, keep_fraction=0.3)
    ds = PatchDataset(cfg, m.targets, 4, foreground_targets_fn=m.foreground_targets)
    assert [s.name for s in ds.sets] == [synthetic_set.name]
    assert "left out" in capsys.readouterr().out
    sets[1].required = True
    ds = PatchDataset(cfg, m.targets, 4, foreground_targets_fn=m.foreground_targets)
    assert len(ds.sets) == 2
    cfg.keep_fraction = 1.0
    sets[1].required = False
    assert len(PatchDataset(cfg, m.targets, 4, foreground_targets_fn=m.foreground_targets).sets) == 2
