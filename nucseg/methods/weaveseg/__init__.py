"""WeaveSeg (Li, Wu & Qin): adaptive spectral refinement (ASR), iterative contrast-weaving (ICW), uncertainty loss.
See README.md in this folder."""

from nucseg.methods.weaveseg.method import WeaveSegConfig, WeaveSegMethod
from nucseg.methods.weaveseg.model import WeaveSegNet

__all__ = ["WeaveSegConfig", "WeaveSegMethod", "WeaveSegNet"]
