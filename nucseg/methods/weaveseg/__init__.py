"""WeaveSeg (Li, Wu & Qin): adaptive spectral refinement (ASR), iterative contrast-weaving (ICW), uncertainty loss.
See README.md in this folder. inference.py (config, watershed; torch-free), method.py (targets, loss), model.py."""

from nucseg.lazy import lazy_exports

_NAMES = {"WeaveSegConfig": "nucseg.methods.weaveseg.inference", "WeaveSegMethod": "nucseg.methods.weaveseg.method",
          "WeaveSegNet": "nucseg.methods.weaveseg.model"}
__getattr__, __all__ = lazy_exports(__name__, _NAMES)
