"""Name -> model factory, in the manner of timm's `@register_model` / `create_model`.

Factories register when their method package is imported; `_ensure_loaded` imports the built-in methods so a name
resolves without the caller knowing where it lives.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

import torch.nn as nn

_FACTORIES: dict[str, Callable[..., nn.Module]] = {}
_DESCRIPTIONS: dict[str, str] = {}
_BUILTIN_METHOD_PACKAGES = ("nucseg.methods.unet", "nucseg.methods.weaveseg", "nucseg.methods.frgnet",
                            "nucseg.methods.gensegnet", "nucseg.methods.sam_eunet3p", "nucseg.methods.cfr_sam")


def register_model(name: str, description: str) -> Callable:
    def wrap(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _FACTORIES and _FACTORIES[name] is not fn:
            raise ValueError(f"model '{name}' is registered twice")
        _FACTORIES[name] = fn
        _DESCRIPTIONS[name] = description
        return fn

    return wrap


def _ensure_loaded() -> None:
    for pkg in _BUILTIN_METHOD_PACKAGES:
        importlib.import_module(pkg)


def create(name: str, **cfg) -> nn.Module:
    """Build a registered model with its config keyword arguments."""
    _ensure_loaded()
    if name not in _FACTORIES:
        raise ValueError(f"unknown model '{name}' (known: {', '.join(sorted(_FACTORIES))})")
    return _FACTORIES[name](**cfg)


def list_models() -> list[str]:
    _ensure_loaded()
    return sorted(_FACTORIES)


def describe(name: str) -> str:
    _ensure_loaded()
    return _DESCRIPTIONS[name]
