"""The Method contract. The engine wraps any Method; a method never writes its own training loop.

    config_class                      a dataclass whose defaults are the paper's
    build_model() -> nn.Module        the network
    targets(labels, classes) -> dict  numpy targets, computed in data-loader workers (+ image= if targets_use_image)
    foreground_targets(mask) -> dict  optional: the same keys from a nucleus mask alone (weak labels)
    loss(outputs, batch) -> dict      named terms; the engine backpropagates "total" and logs the rest
    postprocess(outputs) -> Instances numpy, per image or block; outputs are the model's dense maps as numpy
                                      (or, for `blendable = False` methods, instance maps: ids, classes, scores)

Training hooks, for methods that need more than one optimiser or phase (a GAN, a two-stage method); the engine keeps
the one loop, the checkpoints, the schedules and the devices:

    optimizer_groups(model) -> {name: params}    one optimiser each (default: "model" over every trainable parameter)
    stages() -> [Stage]                          phases run one after another (`train.stage_steps` sets their lengths)
    stage_validation(model, stage, val_sets, device, input_scale)
                                                 metrics of a stage the whole pipeline cannot validate yet
    image_diagnostics(model, image, labels, device, input_scale)
                                                 the method's own per-image measures (`nucseg compare` reports them)
    training_step(model, images, batch, stage)   yields (optimiser name, losses); the engine steps that optimiser on
                                                 losses["total"] before asking for the next
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
import torch.nn as nn

from nucseg.methods.inference import MethodInference

_METHODS: dict[str, type[Method]] = {}
_BUILTIN = ("nucseg.methods.unet.method", "nucseg.methods.weaveseg.method", "nucseg.methods.frgnet.method",
            "nucseg.methods.frgnet.zero_shot", "nucseg.methods.gensegnet.method", "nucseg.methods.sam_eunet3p",
            "nucseg.methods.cfr_sam")


@dataclass(frozen=True)
class Stage:
    """A phase of training: the optimisers that step in it, and whether validating the whole pipeline (segmenting
    the validation images) means anything yet. Parts of the model no active optimiser trains are frozen and run in
    inference mode for the stage (BatchNorm statistics and dropout as at inference)."""

    name: str
    optimizers: tuple[str, ...] = ("model",)
    validate: bool = True


class Method(MethodInference):
    """A method's training half over its inference half (`MethodInference`: config, post-processing, flips, side
    input), which a deployed model uses without torch."""

    # whether `loss` honours batch["valid"] (0 on unannotated nuclei), so `data.keep_fraction` < 1 may train it
    partial_labels: ClassVar[bool] = False
    # whether `targets` / `foreground_targets` take the (augmented) image too: `image=` (FrGNet's Fourier guide)
    targets_use_image: ClassVar[bool] = False
    # whether `targets` takes the sample's nucleus classes, `classes=` {instance id: class} (None for a set without)
    targets_use_classes: ClassVar[bool] = False

    def build_model(self) -> nn.Module:
        raise NotImplementedError

    def targets(self, labels: np.ndarray, classes: dict[int, int] | None = None) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def foreground_targets(self, mask: np.ndarray) -> dict[str, np.ndarray]:
        raise NotImplementedError(f"method '{self.name}' cannot train on foreground masks")

    @property
    def trains_on_masks(self) -> bool:
        """Whether the method learns from sets with nucleus masks only (sets with `annotation: foreground`)."""
        return type(self).foreground_targets is not Method.foreground_targets

    def loss(self, outputs: dict[str, torch.Tensor], batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    # Model config keys that change how a trained model is run, not its weights (SAM's chunk size, a runtime):
    # `nucseg export --set model.KEY=VALUE` may change these and the tunable post-processing keys, nothing else.
    inference_options: ClassVar[tuple[str, ...]] = ()
    # Model config keys added after models were saved, whose new default would change what an older checkpoint
    # computes: such a checkpoint (its config lacks the key) loads with the value given here, the old behaviour.
    defaults_before: ClassVar[dict[str, object]] = {}

    # Top-level parts of the model only training uses (a GAN's discriminator): `nucseg export` leaves them out of the
    # deployable file, and loading a file without them is not an error.
    training_only: tuple[str, ...] = ()
    # Every optimiser name any configuration of the method can have (GeNSeg-Net without its generator has only the
    # segmenter's): `optim.lr_per_optimizer` may name these even when switched off, other names are errors (typos).
    optimizer_names: tuple[str, ...] = ("model",)

    def optimizer_groups(self, model: nn.Module) -> dict[str, list[nn.Parameter]]:
        """Named parameter groups, one optimiser each (its learning rate: `optim.lr_per_optimizer[name]`, else
        `optim.lr`). Parameters in no group are not trained."""
        return {"model": [p for p in model.parameters() if p.requires_grad]}

    def stages(self) -> list[Stage]:
        return [Stage("train")]

    def training_step(self, model: nn.Module, images: torch.Tensor, batch: dict[str, torch.Tensor],
                      stage: str) -> Iterator[tuple[str, dict[str, torch.Tensor]]]:
        """Yield (optimiser name, named losses) in order. The engine backpropagates losses["total"] and steps that
        optimiser before resuming the generator, so a later loss sees the updated weights (a GAN's generator step
        after its discriminator step). `model` may be DDP-wrapped: call it, don't reach into its submodules."""
        yield "model", self.loss(model(images), batch)

    def stage_validation(self, model: nn.Module, stage: str, val_sets: dict[str, list], device: torch.device,
                         input_scale: str = "imagenet") -> dict[str, float]:
        """Metrics of a stage whose whole pipeline cannot be validated yet (`Stage.validate` False), at the run's
        validation steps, on the validation samples by set; they go to val.csv (never to the checkpoint choice).
        Default: none."""
        return {}

    def image_diagnostics(self, model: nn.Module, image: np.ndarray, labels: np.ndarray, device: torch.device,
                          input_scale: str = "imagenet") -> dict[str, float]:
        """A method's own measures of one image (H×W×C, stain-normalised as the model's inputs are; `input_scale`
        the run's `data.input_scale`) against its true label map, beside the common scores (CFR-SAM's prompt recall: a nucleus without a prompt is lost whatever its masks do). `nucseg compare`
        reports their means per model and writes them per image. Default: none."""
        return {}

    @property
    def has_diagnostics(self) -> bool:
        return type(self).image_diagnostics is not Method.image_diagnostics

    def predict_dense(self, model: nn.Module, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Dense per-pixel maps (probabilities, distances) to blend across windows. Default: the model's outputs."""
        return model(images)

    def unflip(self, name: str, value: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor | None:
        """Test-time flips: map `name` predicted on an image flipped along `dims`, brought back to the unflipped
        image's frame; None leaves the map out of the average (it is taken from the unflipped pass alone).
        Default: flipped back, right for scalar maps (probabilities, distances)."""
        return torch.flip(value, dims)


def register_method(cls: type[Method]) -> type[Method]:
    _METHODS[cls.name] = cls
    return cls


def _ensure_loaded() -> None:
    for pkg in _BUILTIN:
        importlib.import_module(pkg)


def get_method(name: str) -> type[Method]:
    _ensure_loaded()
    if name not in _METHODS:
        raise ValueError(f"unknown method '{name}' (known: {', '.join(sorted(_METHODS))})")
    return _METHODS[name]


def list_methods() -> list[str]:
    _ensure_loaded()
    return sorted(_METHODS)
