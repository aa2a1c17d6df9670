"""WeaveSeg's inference half, torch-free: its config and the watershed from its dense maps (mask, trilateral
classes, distance, uncertainty). `WeaveSegMethod` (method.py) trains over it."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from nucseg.labels import instance_means
from nucseg.methods.inference import MethodInference, register_inference
from nucseg.postprocess import WATERSHED_GRID, WatershedOptions, instances_from_maps
from nucseg.structures import Instances


@dataclass
class WeaveSegConfig(WatershedOptions):
    encoder: str = "efficientnet_lite0"
    encoder_weights: str | None = None  # ImageNet-style weights: a path, or "efficientnet-lite0-imagenet"
    in_channels: int = 3
    channels: int = 64
    use_asr: bool = True
    use_lsgr: bool = True
    icw_iterations: int = 3  # the paper's best (Table 2); 0 = without ICW
    closed_loop: bool = True
    lowpass_kernel: int = 3
    highpass_kernel: int = 3
    lsgr_groups: int = 4
    attention_window: int = 5
    dense_layers: int = 3
    dense_growth: int = 16
    context_channels: int = 16
    aglu_per_channel: bool = False
    window: str = "none"  # ASR kernels: none (the paper's "implicit" window) | hamming (modules.py)
    asr_mix: bool = False  # a 3×3 conv-BN-ReLU after eq. 4's sum (not in the paper)
    uncertainty: str = "update"  # how S^u enters ICW: update | attention | none (modules.py)
    refresh_context: bool = True  # S^f, S^b, S^u recomputed from the state before every ICW iteration
    loop_fusion: bool = True  # the closed loop has its own ASR (False: shares the output's)
    output_stride: int = 1  # 1: a full-resolution ASR stage before the heads | 2: stride-2 heads, up-sampled
    full_res_channels: int = 16
    # training speed only: the ASR / attention tap loops through torch.compile when they take gradients (~2.5 min of
    # compiling in the first step on 2 CPU threads; inference and export never compile; modules._compiled)
    compile_kernels: bool = False
    # targets
    boundary_width: int = 2
    certain_erode: int = 2
    certain_dilate: int = 3
    # eq. 12 weights (paper's values) plus our distance term
    weight_mask: float = 1.0
    weight_fg: float = 0.5
    weight_bg: float = 0.5
    weight_tri: float = 0.3
    tri_dice: bool = True  # L_tri = CE + soft Dice (interior, boundary); False: CE alone
    weight_uncertainty: float = 1.0
    weight_distance: float = 2.0
    # post-processing: seeds only where the predicted uncertainty is below this (1.0 = off)
    uncertainty_threshold: float = 1.0


@register_inference
class WeaveSegInference(MethodInference):
    name = "weaveseg"
    config_class = WeaveSegConfig
    tunable = {**WATERSHED_GRID, "uncertainty_threshold": [0.3, 0.5, 0.7, 1.0]}

    def postprocess(self, dense: dict[str, np.ndarray]) -> Instances:
        c = self.config
        distance = dense["distance"][0] if c.weight_distance > 0 else None
        interior = dense["tri"][1]
        if c.uncertainty_threshold < 1.0 and "uncertainty" in dense:
            interior = np.where(dense["uncertainty"][0] < c.uncertainty_threshold, interior, 0.0)  # no seeds there
        labels = instances_from_maps(dense["mask"][0], interior, distance, c)
        return Instances(labels, scores=instance_means(labels, dense["mask"][0]))
