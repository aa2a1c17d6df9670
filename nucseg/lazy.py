"""Package names that load their module on first use (PEP 562), so a package's torch-free parts import without
the rest: `__getattr__, __all__ = lazy_exports(__name__, {"Name": "package.module", ...})`."""

from __future__ import annotations

import importlib


def lazy_exports(package: str, names: dict[str, str]):
    def __getattr__(name: str):
        if name in names:
            return getattr(importlib.import_module(names[name]), name)
        raise AttributeError(f"module '{package}' has no attribute '{name}'")

    return __getattr__, list(names)
