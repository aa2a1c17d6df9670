"""FrGNet (Ling & Xiong 2025): a contour proposal network with Fourier guidance and guide-based instance-level
contrastive learning, for full and partial labels. See README.md in this folder."""

from nucseg.methods.frgnet.method import FrGNetConfig, FrGNetMethod
from nucseg.methods.frgnet.model import FrGNetNet

__all__ = ["FrGNetConfig", "FrGNetMethod", "FrGNetNet"]
