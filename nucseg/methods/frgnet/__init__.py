"""FrGNet (Ling & Xiong 2025): a contour proposal network with Fourier guidance and guide-based instance-level
contrastive learning, for full and partial labels; and its Fourier guide alone as the training-free method
`fourier-guide` (Fig. 1). See README.md in this folder. inference.py (config, contours; torch-free), method.py
(targets, loss), model.py, zero_shot.py."""

from nucseg.lazy import lazy_exports

_ZERO = "nucseg.methods.frgnet.zero_shot"
_NAMES = {"FrGNetConfig": "nucseg.methods.frgnet.inference", "FrGNetMethod": "nucseg.methods.frgnet.method",
          "FrGNetNet": "nucseg.methods.frgnet.model", "FourierGuideConfig": _ZERO, "FourierGuideMethod": _ZERO,
          "FourierGuideNet": _ZERO}
__getattr__, __all__ = lazy_exports(__name__, _NAMES)
