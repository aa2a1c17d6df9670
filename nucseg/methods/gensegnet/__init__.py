"""GeNSeg-Net (ACM MM 2024): every nucleus redrawn as an "ideal" one by a GAN, then a 3-class U-Net and watershed,
for IHC and fluorescence. See README.md in this folder. inference.py (config, modality, watershed; torch-free),
method.py (stages, targets, loss), model.py."""

from nucseg.lazy import lazy_exports

_MODEL = "nucseg.methods.gensegnet.model"
_NAMES = {"GeNSegConfig": "nucseg.methods.gensegnet.inference", "GeNSegMethod": "nucseg.methods.gensegnet.method",
          "GeNSegNet": _MODEL, "Generator": _MODEL, "GreyInput": _MODEL, "PatchDiscriminator": _MODEL,
          "TransformerDiscriminator": _MODEL}
__getattr__, __all__ = lazy_exports(__name__, _NAMES)
