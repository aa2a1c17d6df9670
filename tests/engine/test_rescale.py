"""Resolution-aware segmentation: images at another µm/px are resampled to the model's and mapped back."""

import numpy as np
import torch
from scipy import ndimage as ndi

from nucseg.engine.config import InferConfig
from nucseg.engine.infer import Predictor
from nucseg.methods.base import Method
from nucseg.structures import Instances


class Threshold(Method):
    """Connected components of bright pixels; records the sizes it was asked to segment."""

    name = "threshold-test"

    def __init__(self):
        self.seen = []

    def predict_dense(self, model, images):
        self.seen.append(tuple(images.shape[-2:]))
        return {"fg": (images[:, :1] > 0).float()}

    def postprocess(self, dense):
        labels, _ = ndi.label(dense["fg"][0] > 0.5)
        return Instances(labels, scores={i: 1.0 for i in range(1, labels.max() + 1)})


def discs(size: int, radius: float, centres) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size]
    image = np.zeros((size, size, 3), np.uint8)
    for r, c in centres:
        image[(yy - r) ** 2 + (xx - c) ** 2 <= radius**2] = 255
    return image


def test_images_are_resampled_to_the_model_resolution_and_back():
    method = Threshold()
    predictor = Predictor(method, torch.nn.Identity(), InferConfig(window=256, mpp=0.25))
    centres = [(20, 20), (20, 70), (60, 40), (90, 90)]
    image = discs(100, 6, centres)  # a 20x image (0.5 µm/px) of 4 nuclei
    inst = predictor.segment(image, mpp=0.5)
    assert method.seen[-1] == (224, 224)  # 200² (2×) padded to a multiple of 32
    assert inst.labels.shape == (100, 100)
    assert len(inst) == 4 and set(inst.scores) == set(inst.ids.tolist())
    assert np.array_equal(inst.labels > 0, image[..., 0] > 0)
    # same resolution, or no resolution known: no resampling
    predictor.segment(image, mpp=0.26)
    assert method.seen[-1] == (128, 128)
    predictor.segment(image)
    assert method.seen[-1] == (128, 128)
