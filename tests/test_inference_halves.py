"""The torch-free halves of inference: image preparation and a method's post-processing load without torch and
give what the torch path gives."""

import subprocess
import sys

import numpy as np
import torch


def test_inference_halves_import_without_torch():
    code = ("import sys\n"
            "from nucseg.data.prepare import normalize_array, to_channels, to_uint8\n"
            "from nucseg.methods.inference import get_inference\n"
            "get_inference('unet')().postprocess\n"
            "assert 'torch' not in sys.modules, 'torch imported'\n")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_numpy_normalisation_equals_the_torch_one():
    from nucseg.data.prepare import normalize_array
    from nucseg.engine.infer import normalize

    rng = np.random.default_rng(0)
    for c in (1, 3):
        batch = rng.integers(0, 256, (2, c, 8, 8), dtype=np.uint8)
        for scale in ("imagenet", "unit"):
            np.testing.assert_allclose(normalize_array(batch, scale), normalize(torch.from_numpy(batch), scale).numpy(),
                                       atol=1e-6)


def test_the_unet_method_post_processes_with_its_inference_half():
    from nucseg.methods import get_method
    from nucseg.methods.inference import get_inference

    rng = np.random.default_rng(1)
    prob = rng.random((3, 48, 48)).astype(np.float32)
    prob /= prob.sum(0, keepdims=True)
    dense = {"prob": prob, "distance": rng.random((1, 48, 48)).astype(np.float32)}
    overrides = {"marker_threshold": 0.6}
    a = get_method("unet")(**overrides).postprocess(dense)
    b = get_inference("unet")(**overrides).postprocess(dense)
    np.testing.assert_array_equal(a.labels, b.labels)
    assert a.labels.max() > 0 and isinstance(get_method("unet")(), get_inference("unet"))
