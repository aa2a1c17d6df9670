"""Post-processing from dense network outputs to instances (numpy only)."""

from nucseg.postprocess.watershed import (
    WATERSHED_GRID,
    WatershedOptions,
    instances_from_maps,
    marker_watershed,
)

__all__ = ["WATERSHED_GRID", "WatershedOptions", "instances_from_maps", "marker_watershed"]
