"""U-Net baseline: 3-class (background / interior / boundary) + per-nucleus distance map, marker watershed.

inference.py (config, watershed; torch-free), method.py (targets, loss; torch), model.py (the network).
"""

from nucseg.lazy import lazy_exports

_NAMES = {"UNet": "nucseg.methods.unet.model", "UNetMethod": "nucseg.methods.unet.method",
          "UNetConfig": "nucseg.methods.unet.inference"}
__getattr__, __all__ = lazy_exports(__name__, _NAMES)
