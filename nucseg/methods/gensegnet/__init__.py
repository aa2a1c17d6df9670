"""GeNSeg-Net (ACM MM 2024): every nucleus redrawn as an "ideal" one by a GAN, then a 3-class U-Net and watershed,
for IHC and fluorescence. See README.md in this folder."""

from nucseg.methods.gensegnet.method import GeNSegConfig, GeNSegMethod
from nucseg.methods.gensegnet.model import (
           Generator,
           GeNSegNet,
           GreyInput,
           PatchDiscriminator,
           TransformerDiscriminator,
)

__all__ = ["GeNSegConfig", "GeNSegMethod", "GeNSegNet", "Generator", "GreyInput", "PatchDiscriminator",
           "TransformerDiscriminator"]
