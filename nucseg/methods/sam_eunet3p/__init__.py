"""SAM + eU-Net3+ fusion: U-Net3+ with GLU gating, fused with a frozen SAM encoder by the Enhanced Fusion Block."""

from nucseg.methods.sam_eunet3p.method import SamEUNet3pConfig, SamEUNet3pMethod
from nucseg.methods.sam_eunet3p.model import EUNet3Plus

__all__ = ["EUNet3Plus", "SamEUNet3pConfig", "SamEUNet3pMethod"]
