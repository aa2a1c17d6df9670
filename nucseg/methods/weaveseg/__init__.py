"""WeaveSeg (Li, Wu & Qin): adaptive spectral refinement (ASR), iterative contrast-weaving (ICW), uncertainty loss.
See README.md in this folder. inference.py (config, watershed; torch-free), method.py (targets, loss), model.py."""

_NAMES = {"WeaveSegConfig": "nucseg.methods.weaveseg.inference", "WeaveSegMethod": "nucseg.methods.weaveseg.method",
          "WeaveSegNet": "nucseg.methods.weaveseg.model"}
__all__ = list(_NAMES)


def __getattr__(name: str):
    if name in _NAMES:
        import importlib

        return getattr(importlib.import_module(_NAMES[name]), name)
    raise AttributeError(f"module 'nucseg.methods.weaveseg' has no attribute '{name}'")
