"""The inference half of a Method, torch-free: its config, post-processing, test-time flips and per-image side input.

This is all a deployed model needs beside its exported network (`nucseg export`'s graph), so `nucseg segment` can
run with numpy and OpenVINO alone. A Method (nucseg.methods.base, torch) extends its method's inference class with
the model, targets, loss and training hooks, so the two halves share one config and one post-processing.

    config_class                       a dataclass whose defaults are the paper's
    postprocess(dense) -> Instances    numpy, per image or block, from the dense maps
    unflip_array(name, value, dims)    flip TTA in numpy (None: the map is not averaged over flips)
    image_plane_count, image_planes    per-image side input (`Method.image_planes`)
"""

from __future__ import annotations

import importlib
from typing import Any, ClassVar

import numpy as np
from omegaconf import OmegaConf

from nucseg.structures import Instances

# method name -> the module that registers its inference class (imported on demand, never the torch half)
INFERENCE_MODULES = {"unet": "nucseg.methods.unet.inference", "weaveseg": "nucseg.methods.weaveseg.inference",
                     "gensegnet": "nucseg.methods.gensegnet.inference", "frgnet": "nucseg.methods.frgnet.inference"}
_INFERENCE: dict[str, type[MethodInference]] = {}


class MethodInference:
    name: ClassVar[str] = ""
    config_class: ClassVar[type] = object
    # post-processing options `nucseg tune` may choose on the validation split: {option: candidate values}
    tunable: ClassVar[dict[str, list]] = {}
    # whether the dense outputs are maps that overlapping windows and flip TTA may average (probabilities,
    # distances); False for a method whose outputs are instance maps (ids, classes, scores: CFR-SAM's), which the
    # engine runs once per block, unblended, never flipped, in PyTorch
    blendable: ClassVar[bool] = True

    def __init__(self, config: Any = None, **overrides):
        base = OmegaConf.structured(self.config_class)
        if config is not None:
            base = OmegaConf.merge(base, config)
        if overrides:
            base = OmegaConf.merge(base, overrides)
        self.config = OmegaConf.to_object(base)

    def postprocess(self, dense: dict[str, np.ndarray]) -> Instances:
        raise NotImplementedError

    def unflip_array(self, name: str, value: np.ndarray, dims: tuple[int, ...]) -> np.ndarray | None:
        """`unflip` in numpy, for the torch-free runtime: default, flipped back (right for scalar maps)."""
        return np.flip(value, dims)

    # Per-image side input: values decided once from a whole image (or a slide's thumbnail), never per window, which
    # the engine appends to the network's input as constant planes after the image's channels (normalised to [0, 1]),
    # so every window, tile, flip and batch of one image carries the same values, in training too (computed from the
    # whole training image, not the patch) and in the OpenVINO export (the graph takes channels + planes).
    @property
    def image_plane_count(self) -> int:
        return 0

    def image_planes(self, image: np.ndarray) -> np.ndarray:
        """`image_plane_count` values in [0, 1] for a whole H×W×C uint8 image in the model's channels."""
        return np.zeros(0, np.float32)


def register_inference(cls: type[MethodInference]) -> type[MethodInference]:
    _INFERENCE[cls.name] = cls
    return cls


def get_inference(name: str) -> type[MethodInference]:
    """The torch-free inference class of method `name`; a ValueError for a method that has none (it runs on torch)."""
    if name not in _INFERENCE and name in INFERENCE_MODULES:
        importlib.import_module(INFERENCE_MODULES[name])
    if name not in _INFERENCE:
        raise ValueError(f"method '{name}' has no torch-free inference (it runs on torch: pip install nucseg[train])")
    return _INFERENCE[name]
