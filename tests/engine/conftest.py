from pathlib import Path

import pytest

SMOKE = Path(__file__).resolve().parents[2] / "configs/unet/smoke.yaml"


@pytest.fixture(scope="session")
def trained_run(synthetic_set, tmp_path_factory):
    """The U-Net smoke config trained on the synthetic set: (run directory, train() result)."""
    from nucseg.engine.config import load_config
    from nucseg.engine.train import train

    out = tmp_path_factory.mktemp("run")
    result = train(load_config(SMOKE, [f"data.sets=[{{path: '{synthetic_set}'}}]"]), out, progress=False)
    return out, result
