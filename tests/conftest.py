import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

SHARED = Path(os.environ.get("NUCSEG_DATA", Path(__file__).resolve().parents[1].parent / "shared" / "data"))


@pytest.fixture(autouse=True, scope="session")
def _private_runtime_cache(tmp_path_factory):
    """OpenVINO exports made by tests go to a temporary folder, not the user's ~/.cache/nucseg."""
    os.environ["NUCSEG_CACHE"] = str(tmp_path_factory.mktemp("nucseg-cache"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED.is_dir():
        pytest.skip(f"shared data not found at {SHARED} (set NUCSEG_DATA)")
    return SHARED


@pytest.fixture(scope="session")
def synthetic_set(tmp_path_factory) -> Path:
    """A small canonical set of synthetic H&E-like images (with classes)."""
    from nucseg.data.convert import write_sample
    from nucseg.data.synthetic import synthetic_sample

    root = tmp_path_factory.mktemp("synthetic") / "synth"
    for seed in range(6):
        write_sample(root, synthetic_sample(96, n_nuclei=14, radius=(5, 9), seed=seed))
    return root
