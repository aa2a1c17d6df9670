"""Config composition (`base:`): merge order, paths relative to the naming file, errors that name the file and key,
and every shipped config resolving to the values it had before the configs were split into bases."""

import json
import re
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from nucseg.engine.config import RunConfig, load_config

ROOT = Path(__file__).resolve().parents[2]
BEFORE = Path(__file__).with_name("resolved_configs_before_bases.json")

# configs whose resolved values changed on purpose when they were split into bases: {file: {dotted key: new value}}
INTENDED_CHANGES: dict[str, dict[str, object]] = {
    # the ResNet-50 weights are the user's path, required (it trained from scratch without a word before)
    "configs/frgnet/paper.yaml": {"model.encoder_weights": "GIVEN"},
    # eq. 12 without our distance term, and the paper's [0, 1] inputs (#26)
    "configs/weaveseg/paper.yaml": {"model.weight_distance": 0.0, "data.input_scale": "unit"},
    # the U-Net's rate fixed, the GAN's decaying with pix2pix's betas, the paper's augmentation alone, the standard
    # U-Net (#27)
    "configs/gensegnet/paper.yaml": {
        "optim.schedule": "constant", "optim.lr_per_optimizer": {},
        "optim.per_optimizer": {name: {"lr": 0.0001, "betas": [0.5, 0.999], "weight_decay": None,
                                       "schedule": "linear", "warmup_steps": None}
                                for name in ("generator", "discriminator")},
        "data.augment.scale": (1.0, 1.0), "data.augment.blur_p": 0.0, "data.augment.gamma_p": 0.0,
        "data.augment.hed_p": 0.0,
        "model.encoder": "standard_unet", "model.encoder_weights": None, "model.decoder_channels": [512, 256, 128, 64]},
}


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_bases_merge_in_order_own_keys_last_then_set(tmp_path):
    write(tmp_path / "protocols/a.yaml", "train: {steps: 10, batch_size: 2, log_every: 7}\noptim: {lr: 0.5}\n")
    write(tmp_path / "protocols/b.yaml", "base: a.yaml\ntrain: {steps: 20, batch_size: 3}\n")  # a path, not a list
    write(tmp_path / "protocols/c.yaml", "train: {steps: 30}\ndata: {patch_size: 128}\n")
    cfg_file = write(tmp_path / "method/x.yaml",
                     "base: [../protocols/b.yaml, ../protocols/c.yaml]\nmethod: unet\ntrain: {steps: 40}\n")
    cfg = load_config(cfg_file)
    assert cfg.train.steps == 40  # the file's own keys win over every base
    assert cfg.train.batch_size == 3  # b over its base a
    assert cfg.train.log_every == 7 and cfg.optim.lr == 0.5  # a's keys reach through b
    assert cfg.data.patch_size == 128
    assert load_config(cfg_file, ["train.steps=50"]).train.steps == 50  # --set after everything
    # the later base wins over the earlier one where both set a key
    write(tmp_path / "method/y.yaml", "base: [../protocols/c.yaml, ../protocols/b.yaml]\n")
    assert load_config(tmp_path / "method/y.yaml").train.steps == 20


def test_lists_are_replaced_not_appended(tmp_path):
    write(tmp_path / "p.yaml", "data:\n  sets: [{path: a, weight: 0.5}, {path: b}]\n")
    cfg = load_config(write(tmp_path / "m.yaml", "base: [p.yaml]\ndata:\n  sets: [{path: c}]\n"))
    assert [s.path for s in cfg.data.sets] == ["c"]


def test_base_errors_name_the_file_and_key(tmp_path):
    missing = write(tmp_path / "m.yaml", "base: [nowhere.yaml]\n")
    with pytest.raises(FileNotFoundError, match=r"m\.yaml: base 'nowhere\.yaml' not found"):
        load_config(missing)
    write(tmp_path / "c1.yaml", "base: c2.yaml\n")
    write(tmp_path / "c2.yaml", "base: [c1.yaml]\n")
    with pytest.raises(ValueError, match=r"cycle: .*c1\.yaml -> .*c2\.yaml -> .*c1\.yaml"):
        load_config(tmp_path / "c1.yaml")
    write(tmp_path / "bad-base.yaml", "train: {stpes: 3}\n")
    with pytest.raises(ValueError, match=r"bad-base\.yaml: key 'train\.stpes'"):
        load_config(write(tmp_path / "uses-bad.yaml", "base: bad-base.yaml\n"))
    with pytest.raises(ValueError, match=r"--set: key 'optim\.lrr'"):
        load_config(write(tmp_path / "ok.yaml", "train: {steps: 3}\n"), ["optim.lrr=1"])
    with pytest.raises(ValueError, match=r"wrong-type\.yaml: key 'train\.steps'"):
        load_config(write(tmp_path / "wrong-type.yaml", "train: {steps: many}\n"))
    with pytest.raises(ValueError, match=r"base\.yaml: 'base' must be a path or a list"):
        load_config(write(tmp_path / "base.yaml", "base: {a: 1}\n"))


def _resolved(config: Path) -> dict:
    try:
        cfg = load_config(config)
    except ValueError as exc:  # `???` values (a user's weights): give them as the snapshot did
        keys = re.findall(r"--set ([\w.]+)=", str(exc))
        if not keys:
            raise
        cfg = load_config(config, [f"{k}=GIVEN" for k in keys])
    return OmegaConf.to_container(OmegaConf.structured(cfg))


def _set_dotted(tree: dict, key: str, value) -> None:
    *parents, last = key.split(".")
    for p in parents:
        tree = tree[int(p)] if isinstance(tree, list) else tree[p]
    tree[int(last) if isinstance(tree, list) else last] = value


BEFORE_CONFIGS = sorted(json.loads(BEFORE.read_text()))


@pytest.mark.parametrize("name", BEFORE_CONFIGS)
def test_configs_resolve_as_before_bases(name, monkeypatch):
    """The snapshot was taken from the configs as they were before `base:` existed (one file each); fields added
    to the dataclasses since then take their defaults."""
    monkeypatch.chdir(ROOT)
    before = json.loads(BEFORE.read_text())[name]
    before["data"]["class_names"] = {int(k): v for k, v in before["data"]["class_names"].items()}  # JSON keys
    expected = OmegaConf.to_container(OmegaConf.merge(OmegaConf.structured(RunConfig), before))
    for key, value in INTENDED_CHANGES.get(name, {}).items():
        _set_dotted(expected, key, value)
    assert _resolved(ROOT / name) == expected


def test_every_config_resolves():
    """Each config in configs/ (protocols too, as a bare config) loads, and those that were split still exist."""
    for path in sorted((ROOT / "configs").glob("*/*.yaml")):
        _resolved(path)
    assert all((ROOT / name).is_file() for name in BEFORE_CONFIGS)
