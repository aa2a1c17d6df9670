"""The Fourier guide (FrGNet Sec. 3.3): peaks on nuclei, numpy and torch agree, targets, and the training-free method."""

import numpy as np
import pytest
import torch

from nucseg.data.synthetic import synthetic_sample
from nucseg.targets.fourier import fourier_guide, guide_target


def auc(scores: np.ndarray, positive: np.ndarray) -> float:
    """ROC AUC as the Mann-Whitney U statistic (average ranks for ties); scikit-learn is not a dependency."""
    from scipy.stats import rankdata

    ranks = rankdata(scores.ravel())
    pos = positive.ravel()
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


@pytest.mark.parametrize("polarity", ["abs", "dark", "auto"])
def test_guide_peaks_on_nuclei(polarity):
    s = synthetic_sample(128, 20, radius=(5, 9), seed=0)
    g = fourier_guide(s.image, polarity=polarity)
    assert g.dtype == np.float32 and g.min() == 0.0 and g.max() == pytest.approx(1.0)
    nuclei = s.instances > 0
    assert g[nuclei].mean() > 2 * g[~nuclei].mean()
    assert auc(g, nuclei) > 0.8


def test_removing_only_the_mean_gives_the_centred_magnitude():
    image = np.random.default_rng(0).integers(0, 255, (40, 50, 3), dtype=np.uint8)
    grey = image.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    expected = np.abs(grey - grey.mean())
    expected = (expected - expected.min()) / (expected.max() - expected.min())
    np.testing.assert_allclose(fourier_guide(image, radius=0.0), expected, atol=1e-4)  # R = 0: only the DC term
    assert not np.allclose(fourier_guide(image, radius=1.0), expected, atol=1e-3)
    assert fourier_guide(np.full((16, 16, 3), 7, np.uint8)).max() == 0.0  # a flat image has no guide


def test_soft_and_hard_targets():
    s = synthetic_sample(96, 12, seed=1)
    soft = guide_target(s.image, s.instances, "soft")
    assert (soft[s.instances > 0] == 1.0).all() and 0 <= soft.min() and soft.max() <= 1
    hard = guide_target(s.image, s.instances, "hard")
    assert set(np.unique(hard)) <= {0.0, 1.0} and (hard[s.instances > 0] == 1).all()


@pytest.mark.parametrize("polarity", ["abs", "dark", "bright", "auto"])
def test_torch_guide_equals_numpy(polarity):
    from nucseg.engine.infer import normalize
    from nucseg.methods.frgnet import FourierGuideNet

    image = synthetic_sample(64, 8, seed=2).image[..., :3]
    x = normalize(torch.from_numpy(image.transpose(2, 0, 1).copy())[None])
    got = FourierGuideNet(1.0, polarity)(x)["guide"][0, 0].numpy()
    np.testing.assert_allclose(got, fourier_guide(image, 1.0, polarity), atol=2e-3)


def test_training_free_method_segments_synthetic_nuclei():
    from nucseg.methods import get_method
    from nucseg.metrics import aji

    method = get_method("fourier-guide")({"polarity": "auto", "min_area": 10})
    assert not list(method.build_model().parameters())
    s = synthetic_sample(128, 16, radius=(6, 9), seed=3)
    guide = fourier_guide(s.image, polarity="auto")
    inst = method.postprocess({"guide": guide[None]})
    assert abs(len(np.unique(inst.labels)) - 1 - 16) <= 6 and aji(s.instances, inst.labels) > 0.4


def test_the_hard_guide_carries_the_prior_where_nuclei_are_unannotated():
    """Hard = binarised Fourier guide joined with the mask: with no annotation at all it still marks the nuclei
    (binarising guide + mask by Otsu would leave little but the mask)."""
    s = synthetic_sample(128, 20, seed=3)
    hard = guide_target(s.image, np.zeros_like(s.instances), "hard", polarity="dark")
    nuclei = s.instances > 0
    assert hard[nuclei].mean() > 0.5 and hard[~nuclei].mean() < 0.2
    # half the nuclei annotated: the other half is still marked
    half = np.where(s.instances % 2 == 0, s.instances, 0)
    hard = guide_target(s.image, half, "hard", polarity="dark")
    unannotated = (s.instances > 0) & (half == 0)
    assert (hard[half > 0] == 1).all() and hard[unannotated].mean() > 0.5
