"""Stain normalisation: each method gives what it promises (Reinhard: L*a*b* statistics; Macenko / Vahadane: the
reference's stain vectors and concentration range), on real H&E when the shared data is there."""

import numpy as np
import pytest

from nucseg.data.stain import StainNormalizer, concentrations, macenko_stains, vahadane_stains


@pytest.fixture(scope="module")
def he_pair(shared_data):
    from nucseg.io.images import read_image

    files = sorted((shared_data / "monuseg-train/images").glob("*.png"))
    return read_image(files[0])[:300, :300], read_image(files[5])[:300, :300]


def test_reinhard_matches_lab_statistics(he_pair):
    from skimage.color import rgb2lab

    ref, src = he_pair
    out = StainNormalizer("reinhard").fit(ref).transform(src)
    assert np.allclose(rgb2lab(out).mean((0, 1)), rgb2lab(ref).mean((0, 1)), atol=1.5)


@pytest.mark.parametrize("method,estimate", [("macenko", macenko_stains), ("vahadane", vahadane_stains)])
def test_stain_vectors_and_range_match_reference(he_pair, method, estimate):
    ref, src = he_pair
    norm = StainNormalizer(method).fit(ref)
    out = norm.transform(src)
    assert out.shape == src.shape and out.dtype == np.uint8
    assert np.abs(norm.transform(ref).astype(int) - ref).mean() < 4  # the reference maps (almost) onto itself
    cos = (estimate(out) * norm.stains).sum(0)
    assert cos.min() > 0.98
    c99 = np.percentile(concentrations(out, norm.stains), 99, axis=1)
    assert np.allclose(c99, norm.max_c, rtol=0.15)


def test_unknown_method_and_greyscale_passthrough():
    from nucseg.data.synthetic import synthetic_sample

    with pytest.raises(ValueError, match="stain normalisation must be one of"):
        StainNormalizer("nope")
    grey = np.zeros((8, 8, 1), np.uint8)
    assert StainNormalizer("reinhard").fit(synthetic_sample(64, 8).image).transform(grey) is grey
