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
    """The real data sets. Absent, their tests skip with this reason (shown by `-rs`); with NUCSEG_REQUIRE_DATA=1
    (CI sets it) they fail instead, so a CI machine without the data cannot pass by skipping them."""
    if not SHARED.is_dir():
        reason = f"shared data not found at {SHARED} (set NUCSEG_DATA)"
        if os.environ.get("NUCSEG_REQUIRE_DATA") == "1":
            pytest.fail(f"{reason}; NUCSEG_REQUIRE_DATA=1 requires it")
        pytest.skip(reason)
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
