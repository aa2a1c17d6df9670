"""Run configuration: YAML mapped onto typed dataclasses (OmegaConf), overridable with `--set a.b=c`.

The method's own options live under `model:` and are validated against the method's config dataclass.

Composition (MMDetection's `_base_`, Hydra's defaults): a file may name base files, `base: [../protocols/he-cpu.yaml]`
(one path or a list, relative to the naming file). Bases merge in order, each after its own bases, then the file's
own keys, then `--set`. Mappings merge key by key; a list (such as `data.sets`) is replaced whole, never appended to.
Each file merges onto the typed defaults separately, so an unknown key or a wrong type is reported with the file
that holds it; a missing base names the file that names it, and a cycle names its chain.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from nucseg.data.dataset import DataConfig


@dataclass
class OptimizerOverrides:
    """One optimiser's departures from `optim` (None: as `optim`), for methods with several (a GAN's generator
    and discriminator, GeNSeg-Net's segmenter)."""

    lr: float | None = None
    betas: list[float] | None = None
    weight_decay: float | None = None
    schedule: str | None = None
    warmup_steps: int | None = None


@dataclass
class OptimConfig:
    name: str = "adamw"  # adam | adamw
    lr: float = 1e-3
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])  # Adam's; GANs (pix2pix) use [0.5, 0.999]
    weight_decay: float = 1e-4
    # cosine | step (×gamma every step_size) | multistep (×gamma at milestones) | constant
    # | linear (constant, then a straight line down to min_lr_ratio·lr from `decay_from` of the steps: pix2pix's)
    schedule: str = "cosine"
    warmup_steps: int = 100
    step_size: int = 1000
    gamma: float = 0.1
    milestones: list[int] = field(default_factory=list)
    min_lr_ratio: float = 0.02
    decay_from: float = 0.5
    # methods with several optimisers (a GAN's generator and discriminator): a learning rate per optimiser name,
    # in place of `lr`; the schedule scales each alike
    lr_per_optimizer: dict[str, float] = field(default_factory=dict)
    # any of lr, betas, weight_decay, schedule, warmup_steps per optimiser name (e.g. the segmenter's rate
    # constant while the GAN's decays); `lr_per_optimizer` is the short form for the rate alone
    per_optimizer: dict[str, OptimizerOverrides] = field(default_factory=dict)


def optimizer_settings(optim: OptimConfig, name: str) -> OptimConfig:
    """The settings optimiser `name` trains with: `optim`, then `lr_per_optimizer`, then `per_optimizer`."""
    import dataclasses

    changes = {}
    if name in optim.lr_per_optimizer:
        changes["lr"] = optim.lr_per_optimizer[name]
    own = optim.per_optimizer.get(name)
    if own is not None:
        if own.lr is not None and name in optim.lr_per_optimizer:
            raise ValueError(f"optim: the rate of optimiser '{name}' is set twice (lr_per_optimizer and "
                             "per_optimizer)")
        changes.update({k: v for k, v in dataclasses.asdict(own).items() if v is not None})
    return dataclasses.replace(optim, **changes)


@dataclass
class TrainConfig:
    steps: int = 4000
    # methods trained in stages (`Method.stages`: GeNSeg-Net's enhancement then segmentation): the steps of each
    # stage by name; `steps` is then their sum. Each stage runs the optimiser schedule from its own start.
    stage_steps: dict[str, int] = field(default_factory=dict)
    batch_size: int = 8
    val_every: int = 500
    # last.ckpt (what --resume starts from) every this many steps, and at each validation: a session that stops
    # mid-run loses at most these steps
    checkpoint_every: int = 100
    log_every: int = 20
    select_metric: str = "aji"  # validation metric for best.ckpt: aji | pq | dice | mpq | aji_mpq (typed models)
    precision: str = "auto"  # training: auto (bf16 on CUDA and on CPUs with AMX or AVX-512 BF16) | bf16 | fp32; inference on CPUs: fp32
    device: str = "auto"  # auto (CUDA when available) | cpu | cuda | cuda:N; DDP processes take GPU LOCAL_RANK
    threads: int = 0  # torch threads on CPU (0 = all cores)
    workers: int = 0  # data-loader processes
    seed: int = 0
    grad_clip: float = 5.0
    init_from: str | None = None  # checkpoint or run dir: start from its weights where names and shapes match
    init_only: list[str] = field(default_factory=list)  # with init_from: only names with these prefixes ("encoder.")


@dataclass
class InferConfig:
    window: int = 1024  # fully convolutional: big windows waste nothing; a 1000² tile runs in one pass
    overlap: int = 64
    batch_size: int = 4
    tta: bool = False  # average over flips
    # the resolution (µm per pixel) the model works at; `segment --mpp X` resamples images by X / mpp before
    # prediction and the label maps back, so a 20x slide (0.5) meets a 40x model (0.25) at its scale
    mpp: float | None = None
    fold_batchnorm: bool = True  # fold BatchNorm into the preceding convolutions (same outputs, faster)
    # forward pass: auto (OpenVINO for fp32 on the CPU when installed, else torch) | torch | openvino
    runtime: str = "auto"
    block_size: int = 2048  # unused since images larger than `window` go tile by tile; kept so old checkpoints load
    # context on each side of a tile's core (`nucseg.postprocess.tiles`): wider than a nucleus, so none is cut
    block_margin: int = 64


@dataclass
class RunConfig:
    method: str = "unet"
    model: Any = field(default_factory=dict)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    infer: InferConfig = field(default_factory=InferConfig)


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> RunConfig:
    """Defaults <- YAML file <- `a.b=c` overrides; unknown keys are errors naming the key."""
    cfg = OmegaConf.structured(RunConfig)
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: config file not found")
        for source, layer in config_layers(path):
            cfg = _merge_layer(cfg, layer, str(source))
    if overrides:
        cfg = _merge_layer(cfg, OmegaConf.from_dotlist(list(overrides)), "--set")
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:  # `???` in a config: a value only the user can give (a path to their weights)
        sets = " ".join(f"--set {k}=..." for k in missing)
        raise ValueError(f"{path or 'config'}: {', '.join(missing)} must be given ({sets})")
    run: RunConfig = OmegaConf.to_object(cfg)
    # validate the method's options now, so a typo fails before training starts
    from nucseg.methods import get_method

    get_method(run.method)(run.model)
    return run


BASE_KEY = "base"


def config_layers(path: str | Path, _chain: tuple[Path, ...] = ()) -> list[tuple[Path, Any]]:
    """[(file, its own keys)] in merge order: each base's layers (depth first, in the order named), then the file's."""
    path = Path(path)
    resolved = path.resolve()
    if resolved in _chain:
        cycle = " -> ".join(str(p) for p in (*_chain[_chain.index(resolved):], resolved))
        raise ValueError(f"{path}: config bases form a cycle: {cycle}")
    try:
        node = OmegaConf.load(path)
    except Exception as exc:  # a YAML syntax error: name the file (OmegaConf's message has the line)
        raise ValueError(f"{path}: not a readable YAML config ({exc})") from exc
    if node is None:
        node = OmegaConf.create({})
    if not OmegaConf.is_dict(node):
        raise ValueError(f"{path}: a config must be a mapping of keys, not a {type(node).__name__}")
    bases = node.pop(BASE_KEY, None)
    if bases is None:
        bases = []
    elif isinstance(bases, str):
        bases = [bases]
    elif OmegaConf.is_list(bases) and all(isinstance(b, str) for b in bases):
        bases = list(bases)
    else:
        raise ValueError(f"{path}: '{BASE_KEY}' must be a path or a list of paths, relative to the file")
    layers: list[tuple[Path, Any]] = []
    for base in bases:
        base_path = Path(base) if Path(base).is_absolute() else path.parent / base
        if not base_path.is_file():
            raise FileNotFoundError(f"{path}: {BASE_KEY} '{base}' not found (looked for {base_path})")
        layers += config_layers(base_path, (*_chain, resolved))
    layers.append((path, node))
    return layers


def _merge_layer(cfg, layer, source: str):
    from omegaconf.errors import OmegaConfBaseException

    try:
        return OmegaConf.merge(cfg, layer)
    except OmegaConfBaseException as exc:  # unknown key, wrong type: say which file (or --set) holds it
        key = getattr(exc, "full_key", None)
        where = f" key '{key}'" if key else ""
        raise ValueError(f"{source}:{where} {exc.msg if hasattr(exc, 'msg') else exc}".rstrip()) from exc


def config_to_yaml(cfg: RunConfig) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def config_from_yaml(text: str) -> RunConfig:
    return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(RunConfig), OmegaConf.create(text)))
