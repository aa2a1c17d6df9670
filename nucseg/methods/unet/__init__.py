"""U-Net baseline: 3-class (background / interior / boundary) + per-nucleus distance map, marker watershed.

inference.py (config, watershed; torch-free), method.py (targets, loss; torch), model.py (the network).
"""

_NAMES = {"UNet": "nucseg.methods.unet.model", "UNetMethod": "nucseg.methods.unet.method",
          "UNetConfig": "nucseg.methods.unet.inference"}
__all__ = list(_NAMES)


def __getattr__(name: str):
    if name in _NAMES:
        import importlib

        return getattr(importlib.import_module(_NAMES[name]), name)
    raise AttributeError(f"module 'nucseg.methods.unet' has no attribute '{name}'")
