"""GeNSeg-Net (ACM MM 2024): every nucleus redrawn as an "ideal" one by a GAN, then a 3-class U-Net and watershed,
for IHC and fluorescence. See README.md in this folder. inference.py (config, modality, watershed; torch-free),
method.py (stages, targets, loss), model.py."""

_MODEL = "nucseg.methods.gensegnet.model"
_NAMES = {"GeNSegConfig": "nucseg.methods.gensegnet.inference", "GeNSegMethod": "nucseg.methods.gensegnet.method",
          "GeNSegNet": _MODEL, "Generator": _MODEL, "GreyInput": _MODEL, "PatchDiscriminator": _MODEL,
          "TransformerDiscriminator": _MODEL}
__all__ = list(_NAMES)


def __getattr__(name: str):
    if name in _NAMES:
        import importlib

        return getattr(importlib.import_module(_NAMES[name]), name)
    raise AttributeError(f"module 'nucseg.methods.gensegnet' has no attribute '{name}'")
