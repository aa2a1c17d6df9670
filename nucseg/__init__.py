"""nucseg: nuclei instance segmentation and classification for microscopy.

The pipeline: data readers -> Sample -> targets -> model -> post-processing -> Instances -> metrics / writers.

From Python (`nucseg.api`; torch is imported when a model is built, not here):

    import nucseg
    model = nucseg.load_model("he")
    result = model.segment(image, mpp=0.25)
    result.labels, result.table()
"""

__version__ = "0.1.0"

from nucseg.lazy import lazy_exports  # noqa: E402
from nucseg.structures import Instances, Modality, Sample  # noqa: E402

# the API's names load on first use, so `import nucseg` (and `nucseg --version`) stay fast
__getattr__, _API = lazy_exports(__name__, {name: "nucseg.api" for name in (
    "Model", "Result", "load_model", "segment", "segment_slide")})

__all__ = ["Instances", "Model", "Modality", "Result", "Sample", "__version__", "load_model", "segment",
           "segment_slide"]


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_API))
