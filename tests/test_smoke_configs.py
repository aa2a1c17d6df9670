"""Every configs/*/smoke.yaml trains exactly as written (no --set, no data on disk) and its run segments an image."""

from pathlib import Path

import pytest

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*/smoke.yaml"))


@pytest.mark.parametrize("config", CONFIGS, ids=[c.parent.name for c in CONFIGS])
def test_smoke_config_trains_as_written(config, tmp_path, monkeypatch):
    from nucseg.cli import main
    from nucseg.data.synthetic import synthetic_sample
    from nucseg.io.images import read_label, write_image

    monkeypatch.chdir(tmp_path)  # no ../shared beside it: the config must bring its own data
    run = tmp_path / "run"
    assert main(["train", str(config), "--out", str(run)]) == 0
    assert (run / "best.ckpt").is_file() and (run / "val.csv").is_file()
    write_image(tmp_path / "in" / "a.png", synthetic_sample(96, 10, seed=9).image)
    assert main(["segment", str(tmp_path / "in"), "--model", str(run), "--out", str(tmp_path / "out")]) == 0
    assert read_label(tmp_path / "out" / "labels" / "a.png").shape == (96, 96)
