"""Post-processing from dense network outputs to instances (numpy only)."""

from nucseg.postprocess.watershed import marker_watershed

__all__ = ["marker_watershed"]
