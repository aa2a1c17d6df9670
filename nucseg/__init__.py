"""nucseg: nuclei instance segmentation and classification for microscopy.

The pipeline: data readers -> Sample -> targets -> model -> post-processing -> Instances -> metrics / writers.
"""

__version__ = "0.1.0"

from nucseg.structures import Instances, Modality, Sample  # noqa: E402

__all__ = ["Instances", "Modality", "Sample", "__version__"]
