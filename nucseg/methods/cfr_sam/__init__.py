"""CFR-SAM: a prompt learner's centroid prompts into SAM with MALA adapters, HMFM fusion and boundary-guided
refinement (Sec. 3 of the paper); see method.py."""

from nucseg.methods.cfr_sam.method import CFRSAMConfig, CFRSAMMethod
from nucseg.methods.cfr_sam.model import CFRSAM

__all__ = ["CFRSAM", "CFRSAMConfig", "CFRSAMMethod"]
