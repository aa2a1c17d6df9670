"""The Fourier guide on its own (FrGNet, Fig. 1): coarse nuclei without any training, a zero-shot baseline."""

from nucseg.methods.fourier_guide.method import FourierGuideConfig, FourierGuideMethod, FourierGuideNet

__all__ = ["FourierGuideConfig", "FourierGuideMethod", "FourierGuideNet"]
