"""FrGNet (Ling & Xiong 2025): a contour proposal network with Fourier guidance and guide-based instance-level
contrastive learning, for full and partial labels; and its Fourier guide alone as the training-free method
`fourier-guide` (Fig. 1). See README.md in this folder."""

from nucseg.methods.frgnet.method import FrGNetConfig, FrGNetMethod
from nucseg.methods.frgnet.model import FrGNetNet
from nucseg.methods.frgnet.zero_shot import FourierGuideConfig, FourierGuideMethod, FourierGuideNet

__all__ = ["FourierGuideConfig", "FourierGuideMethod", "FourierGuideNet", "FrGNetConfig", "FrGNetMethod", "FrGNetNet"]
