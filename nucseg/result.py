"""What `Model.segment` returns: the instances of one image with the command line's outputs as methods.

Every output goes through the writers `nucseg segment` uses (`nucseg.io.writers`), so a table, a GeoJSON file or an
overlay made here equals the CLI's for the same image and model. Torch-free.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np

from nucseg.structures import Instances


@dataclass
class Result:
    """The nuclei of one image.

    instances: the label map with per-nucleus classes and scores (`nucseg.Instances`).
    image: the image as segmented (H×W×C, as read: measurements and the overlay use it).
    class_names: {class id: name} of the model's training sets ({} for a model without classes).
    mpp: microns per pixel, when known: the table's lengths and areas are then in µm and µm².
    model: the model that made it (a shipped name, or a checkpoint's path).
    """

    instances: Instances
    image: np.ndarray
    class_names: dict[int, str] = field(default_factory=dict)
    mpp: float | None = None
    model: str = ""

    @property
    def labels(self) -> np.ndarray:
        """H×W int32 instance map, 0 = background, one id per nucleus."""
        return self.instances.labels

    @property
    def classes(self) -> np.ndarray | None:
        """H×W uint8 per-pixel class map (0 = background), or None when the model does not classify."""
        if not (self.class_names or self.instances.classes):
            return None
        from nucseg.labels import instances_to_class_map

        return instances_to_class_map(self.labels, self.instances.classes)

    def __len__(self) -> int:
        return len(self.instances)

    @cached_property
    def _outlines(self) -> dict:
        from nucseg.labels import instance_outlines

        return instance_outlines(self.labels)

    @cached_property
    def _properties(self) -> dict[str, np.ndarray]:
        from nucseg.labels import instance_properties

        return instance_properties(self.labels, self.image, self.mpp, self._outlines)

    def table(self):
        """One row per nucleus with the CLI's CSV columns (id, centroid_x/y, area, perimeter, shape measures, mean
        intensity per channel, class, probability), as a pandas DataFrame. Lengths are in µm when `mpp` is known;
        centroids too (divide by `mpp` for pixels). Missing probabilities are NaN."""
        import pandas as pd

        from nucseg.io.writers import nucleus_table

        table = pd.DataFrame(nucleus_table(self.instances, self._properties, self.class_names))
        table["probability"] = table["probability"].astype(float)
        return table

    def to_geojson(self, path: str | Path) -> Path:
        """Write the nuclei as QuPath-importable GeoJSON (File > Import objects): the same bytes as `nucseg segment`
        writes for an image of this file's stem."""
        from nucseg.io.writers import write_geojson

        return write_geojson(Path(path), self.instances, self.class_names, self._properties, self._outlines)

    def to_csv(self, path: str | Path) -> Path:
        """Write the table as the CLI's CSV (4 decimals)."""
        from nucseg.io.writers import write_csv

        return write_csv(Path(path), self.instances, self._properties, self.class_names)

    def overlay(self) -> np.ndarray:
        """H×W×3 uint8: the image with each nucleus outlined in its class colour (the CLI's overlays/ PNG)."""
        from nucseg.viz import overlay_contours

        return overlay_contours(self.image, self.labels, self.instances.classes)

    def save(self, out_dir: str | Path, stem: str, outputs=("labels", "overlay", "geojson", "csv")) -> dict[str, Path]:
        """Write the outputs `nucseg segment` writes for an image named `stem` into `out_dir`: labels/<stem>.png
        (16-bit; types/<stem>.png beside it for a model with classes), overlays/, geojson/, csv/. Atomic."""
        from nucseg.io.writers import write_outputs

        return write_outputs(Path(out_dir), stem, self.image, self.instances, tuple(outputs), self.mpp,
                             self.class_names)
