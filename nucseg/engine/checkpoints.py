"""Checkpoints: plain dicts of tensors and primitives, written atomically, loaded with weights_only=True.

A checkpoint carries the resolved config (YAML text), so a model is rebuilt from the file alone.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import nucseg
from nucseg.engine.config import RunConfig, config_from_yaml, config_to_yaml
from nucseg.io.images import atomic_path

if TYPE_CHECKING:
    import torch


def save_checkpoint(path: str | Path, model: torch.nn.Module, cfg: RunConfig, fp16: bool = False,
                    leave_out: tuple[str, ...] = (), **state) -> Path:
    """`fp16` stores floating-point weights at half precision (half the file; loading casts them back to fp32);
    `leave_out` names top-level parts of the model not to store (the method's `training_only`, on export)."""
    weights = {k: v.detach().cpu() for k, v in model.state_dict().items() if k.split(".", 1)[0] not in leave_out}
    if fp16:
        weights = {k: v.half() if v.is_floating_point() else v for k, v in weights.items()}
    payload = {
        "model": weights,
        "config": config_to_yaml(cfg),
        "method": cfg.method,
        "nucseg_version": nucseg.__version__,
        **state,
    }
    with atomic_path(path) as tmp:
        import torch

        torch.save(payload, tmp)
    return Path(path)


def resolve_checkpoint_file(path: str | Path) -> Path:
    """A checkpoint file, or a run directory's best file (tuned, then best, then last)."""
    path = Path(path)
    if path.is_dir():
        for name in ("tuned.ckpt", "best.ckpt", "last.ckpt", "model.pt"):
            if (path / name).is_file():
                return path / name
        raise FileNotFoundError(f"{path}: no tuned.ckpt, best.ckpt, last.ckpt or model.pt in this run directory")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint not found")
    return path


def load_checkpoint(path: str | Path) -> dict:
    path = resolve_checkpoint_file(path)
    try:
        import torch

        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(f"{path}: not a readable nucseg checkpoint ({type(exc).__name__}: {exc})") from None
    if not isinstance(ckpt, dict) or "model" not in ckpt or "config" not in ckpt:
        raise ValueError(f"{path}: not a nucseg checkpoint (needs 'model' and 'config')")
    ckpt["path"] = str(path)
    return ckpt


def init_weights(model: torch.nn.Module, path: str | Path, only: list[str] | None = None) -> tuple[int, int]:
    """Start `model` from a checkpoint's weights where names and shapes match (fine-tuning a changed architecture,
    e.g. a new head or decoder depth), and, with `only`, where the name starts with one of those prefixes (e.g.
    ["encoder."] to start a different decoder from scratch). Returns (tensors loaded, tensors in the model)."""
    state = load_checkpoint(path)["model"]
    own = model.state_dict()
    matched = {k: v.to(own[k].dtype) for k, v in state.items() if k in own and own[k].shape == v.shape
               and (not only or any(k.startswith(prefix) for prefix in only))}
    if not matched:
        raise ValueError(f"{path}: no weights match this model's names and shapes")
    model.load_state_dict(matched, strict=False)
    return len(matched), len(own)


def method_from_checkpoint(path: str | Path, ckpt: dict | None = None):
    """(method, run config) from a checkpoint file or run directory, without building the network."""
    from nucseg.methods import get_method

    ckpt = load_checkpoint(path) if ckpt is None else ckpt
    cfg = config_from_yaml(ckpt["config"])
    model_cfg = dict(cfg.model) if isinstance(cfg.model, dict) else cfg.model
    method_class = get_method(cfg.method)
    if isinstance(model_cfg, dict):
        for key, value in model_cfg.items():  # the checkpoint holds the trained weights: never read their files
            if isinstance(value, str) and (key.endswith("_weights") or key.endswith("_cache")):
                model_cfg[key] = None
        for key, value in method_class.defaults_before.items():  # saved before the key existed: as it ran then
            model_cfg.setdefault(key, value)
    return method_class(model_cfg), cfg


def build_from_checkpoint(path: str | Path, ckpt: dict | None = None):
    """(method, model in eval mode, run config) from a checkpoint file or run directory (or its loaded `ckpt`)."""
    ckpt = load_checkpoint(path) if ckpt is None else ckpt
    method, cfg = method_from_checkpoint(path, ckpt)
    model = method.build_model()
    state = {k: v.float() if v.is_floating_point() else v for k, v in ckpt["model"].items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if k.split(".", 1)[0] not in method.training_only]  # exported without them
    if missing or unexpected:
        raise ValueError(f"{ckpt.get('path', path)}: the weights do not fit method '{cfg.method}' as configured "
                         f"(missing {missing[:5]}, unexpected {unexpected[:5]})")
    model.eval()
    return method, model, cfg
