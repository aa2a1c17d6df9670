"""Inference-time BatchNorm folding: a convolution followed by BatchNorm in eval mode is one convolution.

Unfolded, every BatchNorm is a separate pass over a full-size feature map; folded, it costs nothing (on the default
U-Net, 2 CPU threads: prediction of a 1000² tile 0.561 → 0.546 s, median of five A/B runs; see docs/design.md).
"""

from __future__ import annotations

import copy

import torch
import torch.nn as nn
from torch.nn.utils.fusion import fuse_conv_bn_eval


def _fold_children(module: nn.Module) -> int:
    folded = 0
    for child in module.children():
        folded += _fold_children(child)
    names = list(module._modules)
    # Modules register their layers in the order they run (Sequential, timm blocks: conv, bn, ...), so a Conv2d
    # registered right before a BatchNorm2d of matching width is that BatchNorm's input. Callers verify the result.
    for conv_name, bn_name in zip(names, names[1:]):
        conv, bn = module._modules[conv_name], module._modules[bn_name]
        if (isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d) and bn.track_running_stats
                and bn.num_features == conv.out_channels):
            module._modules[conv_name] = fuse_conv_bn_eval(conv, bn)
            # timm's BatchNormAct2d carries its activation (and drop): keep them
            rest = [m for m in (getattr(bn, "drop", None), getattr(bn, "act", None)) if isinstance(m, nn.Module)]
            module._modules[bn_name] = nn.Sequential(*rest) if rest else nn.Identity()
            folded += 1
    return folded


@torch.no_grad()
def fold_batchnorm(model: nn.Module, example: torch.Tensor | None = None, atol: float = 1e-3) -> nn.Module:
    """An eval-mode copy of `model` with each Conv2d -> BatchNorm2d pair folded into one Conv2d.

    With `example`, the copy's outputs are compared with the original's; if they differ by more than `atol` (a model
    whose registration order is not its run order), the unfolded eval-mode model is returned instead."""
    model.eval()
    folded = copy.deepcopy(model)
    if _fold_children(folded) == 0:
        return model
    if example is not None:
        ref, out = model(example), folded(example)
        ref = ref if isinstance(ref, dict) else {"out": ref}
        out = out if isinstance(out, dict) else {"out": out}
        if any((ref[k].float() - out[k].float()).abs().max() > atol for k in ref):
            return model
    return folded
