"""U-Net baseline: 3-class (background / interior / boundary) + per-nucleus distance map, marker watershed."""

from nucseg.methods.unet.method import UNetConfig, UNetMethod
from nucseg.methods.unet.model import UNet

__all__ = ["UNet", "UNetConfig", "UNetMethod"]
