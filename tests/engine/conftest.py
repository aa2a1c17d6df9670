from pathlib import Path

import pytest

SMOKE = Path(__file__).resolve().parents[2] / "configs/unet/smoke.yaml"


@pytest.fixture(scope="session")
def trained_run(synthetic_set, tmp_path_factory):
    """The U-Net smoke config trained on the synthetic set: (run directory, train() result)."""
    from nucseg.engine.config import load_config
    from nucseg.engine.train import train

    out = tmp_path_factory.mktemp("run")
    # fp32 on every CPU: on one with AMX `auto` trains in bf16, and the tests' quality bars were set in fp32
    overrides = [f"data.sets=[{{path: '{synthetic_set}'}}]", "train.precision=fp32"]
    result = train(load_config(SMOKE, overrides), out, progress=False)
    return out, result
