"""Partial labels (`data.keep_fraction`): the right share of nuclei is kept, fixed per image, and unannotated nuclei
are left out of the U-Net's loss rather than taught as background."""

import numpy as np
import pytest
import torch

from nucseg.data.dataset import DataConfig, PatchDataset, SetConfig, SyntheticSpec, drop_annotations
from nucseg.data.synthetic import synthetic_sample


@pytest.mark.parametrize("fraction", [0.2, 0.3, 0.4, 0.6, 0.8])
def test_keep_fraction_keeps_that_share_of_each_image(fraction):
    labels = synthetic_sample(128, 40, seed=1).instances
    n = len(np.unique(labels)) - 1
    out = drop_annotations(labels, fraction, [0, "img"])
    kept, dropped = np.unique(out[out > 0]), np.unique(-out[out < 0])
    assert kept.size == max(1, round(fraction * n)) and kept.size + dropped.size == n
    assert np.array_equal(np.abs(out), labels)  # pixels kept, only marked
    assert np.array_equal(out, drop_annotations(labels, fraction, [0, "img"]))  # fixed for the run
    assert not np.array_equal(out, drop_annotations(labels, fraction, [0, "other"]))  # differs between images


def test_patches_carry_a_valid_mask_over_unannotated_nuclei():
    from nucseg.methods import get_method

    method = get_method("unet")({"encoder": "test_efficientnet"})
    cfg = DataConfig(sets=[SetConfig(path="s", synthetic=SyntheticSpec(images=2, size=96, nuclei=20))],
                     patch_size=64, target_margin=8, val_fraction=0.0, keep_fraction=0.3)
    ds = PatchDataset(cfg, method.targets, 8)
    item = ds[0]
    valid = item["valid"]
    assert valid.shape == (64, 64) and 0 < valid.mean() < 1
    # where valid is 0 the targets say background (the dropped nucleus is not in the label map) ...
    assert (item["three_class"][valid == 0] == 0).mean() > 0.5
    # ... and the loss does not see it: the same prediction gets the same loss whatever it says there
    model = method.build_model().eval()
    batch = {k: torch.as_tensor(np.asarray(v))[None] for k, v in item.items() if k != "image"}
    with torch.no_grad():
        out = model(torch.rand(1, 3, 64, 64))
    base = method.loss(out, batch)["total"]
    hole = torch.as_tensor(valid == 0)[None, None]
    out["logits"] = torch.where(hole, out["logits"] + torch.tensor([-5.0, 5.0, 0.0]).view(1, 3, 1, 1), out["logits"])
    assert torch.isclose(method.loss(out, batch)["total"], base)


def test_methods_without_partial_label_support_refuse_keep_fraction(tmp_path):
    from nucseg.engine.config import load_config
    from nucseg.engine.train import train

    cfg = load_config("configs/weaveseg/smoke.yaml", ["data.keep_fraction=0.3"])
    with pytest.raises(ValueError, match="keep_fraction.*weaveseg"):
        train(cfg, tmp_path / "run", progress=False)
