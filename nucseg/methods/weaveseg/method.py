"""WeaveSeg as a Method: targets, the loss of eq. 12, and post-processing to instances.

Instance representation: the trilateral head (background / interior / boundary) separates touching nuclei and a
per-nucleus distance head gives one peak per nucleus; instances are the shared marker watershed of the baseline
(seeds: distance > marker_threshold and interior probability > interior_threshold, and the predicted uncertainty
below `uncertainty_threshold`, 1 = off; foreground: the mask head). The distance head is our addition to eq. 12
(`weight_distance`, 0 restores the paper's loss exactly; seeds then come from the interior class alone), because a
mask and a thin boundary alone merge nuclei that touch along long edges.

Choices the paper leaves open, set as the U-Net baseline it is compared with has them (so the comparison is of the
modules, not of the targets): a 2 px boundary (`boundary_width`), L_tri as cross-entropy + soft Dice on interior and
boundary (`tri_dice`), the distance term at weight 2. The uncertainty target U* and the certain regions S^f / S^b
share one erosion / dilation (`certain_erode`, `certain_dilate`): S^f is the eroded interior, S^b what lies beyond the
dilation, U* lives between.

Ablations (Tables 1-3): `use_asr`, `icw_iterations` (0 = without ICW), `use_lsgr`, `closed_loop`, `uncertainty`
(how S^u enters ICW), and each loss weight (0 switches a term off). The settings of an earlier version, kept so
its models load: `window: hamming`, `asr_mix: true`, `uncertainty: none`, `refresh_context: false`,
`loop_fusion: false`, `output_stride: 2`, `boundary_width: 1`, `tri_dice: false`.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from nucseg.losses import soft_dice_loss
from nucseg.methods.base import Method, register_method
from nucseg.methods.weaveseg.inference import WeaveSegConfig, WeaveSegInference  # noqa: F401
from nucseg.methods.weaveseg.model import WeaveSegNet
from nucseg.methods.weaveseg.targets import certain_regions, uncertainty_map
from nucseg.targets import distance_map, three_class


@register_method
class WeaveSegMethod(WeaveSegInference, Method):

    def build_model(self) -> nn.Module:
        c = self.config
        return WeaveSegNet(c.encoder, c.encoder_weights, c.in_channels, c.channels, c.use_asr, c.use_lsgr,
                           c.icw_iterations, c.closed_loop, c.lowpass_kernel, c.highpass_kernel, c.lsgr_groups,
                           c.attention_window, c.dense_layers, c.dense_growth, c.context_channels,
                           c.aglu_per_channel, c.window, c.asr_mix, c.uncertainty, c.refresh_context, c.loop_fusion,
                           c.output_stride, c.full_res_channels, compile_kernels=c.compile_kernels)

    def targets(self, labels: np.ndarray, classes: dict[int, int] | None = None) -> dict[str, np.ndarray]:
        c = self.config
        fg, bg = certain_regions(labels, c.certain_erode, c.certain_dilate)
        return {
            "mask": (labels > 0).astype(np.float32)[None],
            "trilateral": three_class(labels, c.boundary_width).astype(np.int64),
            "fg": fg[None],
            "bg": bg[None],
            "uncertainty": uncertainty_map(labels, c.certain_erode, c.certain_dilate,
                                          boundary_width=c.boundary_width)[None],
            "distance": distance_map(labels)[None],
        }

    def loss(self, outputs: dict[str, torch.Tensor], batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        c = self.config
        o = {k: v.float() for k, v in outputs.items()}
        terms = {
            "mask": (c.weight_mask, F.binary_cross_entropy_with_logits(o["mask"], batch["mask"])),
            "fg": (c.weight_fg, F.binary_cross_entropy_with_logits(o["fg"], batch["fg"])),
            "bg": (c.weight_bg, F.binary_cross_entropy_with_logits(o["bg"], batch["bg"])),
            "tri": (c.weight_tri, self.trilateral_loss(o["trilateral"], batch["trilateral"])),
            "uncertainty": (c.weight_uncertainty, F.mse_loss(torch.sigmoid(o["uncertainty"]), batch["uncertainty"])),
            "distance": (c.weight_distance, F.mse_loss(torch.sigmoid(o["distance"]), batch["distance"])),
        }
        out = {name: value for name, (_, value) in terms.items()}
        out["total"] = sum(w * v for w, v in terms.values() if w)
        return out

    def trilateral_loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        ce = F.cross_entropy(logits, target)
        if not self.config.tri_dice:
            return ce
        return ce + soft_dice_loss(logits.softmax(1), target, classes=(1, 2))

    def predict_dense(self, model: nn.Module, images: torch.Tensor) -> dict[str, torch.Tensor]:
        out = model(images)
        return {"mask": torch.sigmoid(out["mask"].float()), "tri": out["trilateral"].float().softmax(1),
                "distance": torch.sigmoid(out["distance"].float()),
                "uncertainty": torch.sigmoid(out["uncertainty"].float())}

