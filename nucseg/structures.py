"""The contracts between pipeline stages: `Sample` (what readers produce) and `Instances` (what methods produce).

Nothing downstream of a reader knows about file formats; nothing downstream of a method knows about models.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import numpy as np


class Modality(StrEnum):
    """The imaging modality of a sample (`Sample.meta["modality"]`): readers set it, stain augmentation and the
    choice of shipped model follow it."""

    HE = "he"  # brightfield H&E
    IHC = "ihc"  # brightfield immunohistochemistry (DAB + hematoxylin)
    FLUORESCENCE = "fluorescence"
    BRIGHTFIELD = "brightfield"  # other brightfield stains
    UNKNOWN = "unknown"


@dataclass
class Sample:
    """One annotated image.

    image: H×W×C (C = 1, 3 or 4), uint8 or uint16.
    instances: H×W int32, 0 = background; ids need not be contiguous.
    classes: optional {instance id: class id}; class 0 is never a nucleus class.
    meta: id, source, mpp (microns per pixel), modality and anything a reader knows.
    """

    image: np.ndarray
    instances: np.ndarray
    classes: dict[int, int] | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.image.ndim == 2:
            self.image = self.image[..., None]
        if self.image.ndim != 3:
            raise ValueError(f"{self.id}: image must be H×W×C, got shape {self.image.shape}")
        if self.image.dtype not in (np.uint8, np.uint16):
            raise ValueError(f"{self.id}: image must be uint8 or uint16, got {self.image.dtype}")
        if self.instances.shape != self.image.shape[:2]:
            raise ValueError(
                f"{self.id}: mask size {self.instances.shape} differs from image size {self.image.shape[:2]}"
            )
        self.instances = np.ascontiguousarray(self.instances, dtype=np.int32)
        self.meta.setdefault("modality", Modality.UNKNOWN.value)

    @property
    def id(self) -> str:
        return str(self.meta.get("id", "?"))

    @property
    def class_map(self) -> np.ndarray | None:
        """Per-pixel class map (uint8), or None when the sample has no classes."""
        if self.classes is None:
            return None
        from nucseg.labels import instances_to_class_map

        return instances_to_class_map(self.instances, self.classes)


@dataclass
class Instances:
    """The result of segmenting one image: label map, per-instance class and score, outlines on demand."""

    labels: np.ndarray
    classes: dict[int, int] = field(default_factory=dict)
    scores: dict[int, float] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.labels = np.ascontiguousarray(self.labels, dtype=np.int32)

    @property
    def ids(self) -> np.ndarray:
        from nucseg.labels import instance_ids

        return instance_ids(self.labels)

    def __len__(self) -> int:
        return len(self.ids)

    def outlines(self) -> dict:
        """{id: shapely Polygon / MultiPolygon}: every instance's pixel-edge outline (see `labels.instance_outlines`)."""
        from nucseg.labels import instance_outlines

        return instance_outlines(self.labels)

    def class_map(self) -> np.ndarray:
        from nucseg.labels import instances_to_class_map

        return instances_to_class_map(self.labels, self.classes)
