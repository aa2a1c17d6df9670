"""Training data: canonical sets held in memory, split by image, sampled as random patches with joint augmentation.

Crop borders: targets are computed on the crop plus a margin (`target_margin` px) and then cut to the patch, so a
nucleus cut by the patch border gets the same distance/boundary targets as in the whole image (up to the margin).
Sampling is a pure function of (seed, index): a resumed run sees exactly the data stream it would have seen.

Weak labels: a set with `annotation: foreground` has nucleus masks only (e.g. the 17 MoNuSeg images without
instance outlines). All its images go to training (it cannot score instances), its patches get the method's
`foreground_targets`, and every item carries `labelled` (1.0 full labels, 0.0 mask only) so losses can skip the
terms a mask cannot supervise.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from nucseg.data.augment import AugmentConfig, Augmenter
from nucseg.data.modality import detect_modality
from nucseg.data.prepare import stain_normalizer, to_channels, to_uint8  # noqa: F401 (their home: prepare.py)
from nucseg.data.readers.canonical import dataset_info, list_ids, read_canonical_one
from nucseg.structures import Sample


@dataclass
class SyntheticSpec:
    """A set generated in memory by `nucseg.data.synthetic` (smoke configs and tests need no data on disk)."""

    style: str = "he"  # he | fluorescence | ihc
    images: int = 6
    size: int = 96
    nuclei: int = 14


@dataclass
class SetConfig:
    path: str = "synthetic"  # a canonical set, absolute or relative to DataConfig.root (a name, when synthetic)
    weight: float = 1.0  # share of patches drawn from this set
    exclude: list[str] = field(default_factory=list)  # ids to leave out (e.g. broken labels)
    group_pattern: str | None = None  # regex; ids with the same first match share a split (patches of one tile)
    max_images: int | None = None
    annotation: str = "labels"  # labels: instance maps | foreground: nucleus masks only (weak labels, training only)
    # this set's validation share, in place of data.val_fraction (e.g. more of MoNuSeg's few large tiles, so choices
    # made on validation are not made on two tiles' noise)
    val_fraction: float | None = None
    # the validation images named outright (ids, or group keys where `group_pattern` groups ids), in place of the
    # seeded draw: a protocol's split stays the same whatever the split code or the set's other files become
    val_ids: list[str] | None = None
    val_max_images: int | None = None  # this set's cap, in place of data.val_max_images
    # False: a set the method may go without. A mask-only set (annotation: foreground) is then left out, with a
    # note, for a method that cannot train on masks, instead of failing (a protocol offers it to those that can)
    required: bool = True
    synthetic: SyntheticSpec | None = None  # generate the set instead of reading `path`


@dataclass
class DataConfig:
    sets: list[SetConfig] = field(default_factory=list)
    root: str = "../shared/data"
    patch_size: int = 256
    target_margin: int = 24
    val_fraction: float = 0.15
    val_max_images: int = 6  # per set, to keep validation quick
    split_seed: int = 0
    channels: int = 3  # 3: RGB (greyscale repeated); 1: greyscale/luminance (fluorescence and IHC mode)
    # how pixels reach the network: imagenet (ImageNet mean / std, what pretrained encoders expect) | unit ([0, 1]);
    # GeNSeg-Net undoes the ImageNet scaling inside its model and needs imagenet
    input_scale: str = "imagenet"
    # partial labels (FrGNet's weak setting): keep this share of each training image's nuclei, a seeded random
    # choice fixed for the run; the others are unannotated, not background (methods that can use partial labels
    # leave their pixels out of the loss: `Method.partial_labels`)
    keep_fraction: float = 1.0
    keep_seed: int = 0
    stain_norm: str | None = None  # None | macenko | reinhard | vahadane (needs a reference image)
    stain_reference: str | None = None
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    # a finite pool of training patches: draw i is draw i mod `patch_pool` (same crop, same augmentation), so a frozen
    # encoder's embeddings can be cached and reused (SAM on a CPU); None: every draw is new
    patch_pool: int | None = None
    # {class id: name} of the nucleus types, for outputs (GeoJSON classification, CSV, the model card); merged over
    # the sets' dataset.json "classes" at training start, values given here winning
    class_names: dict[int, str] = field(default_factory=dict)


def id_group(image_id: str, group_pattern: str | None) -> str:
    """The split group of an id: the first match of `group_pattern` (patches of one tile share it), else the id."""
    if group_pattern:
        m = re.search(group_pattern, image_id)
        if m:
            return m.group(0)
    return image_id


def split_ids(ids: list[str], val_fraction: float, seed: int, group_pattern: str | None = None,
              val_ids: list[str] | None = None) -> tuple[list, list]:
    """Deterministic train/validation split by image (or by group of images); `val_ids` names the validation
    ids or groups outright (each must exist)."""
    def group(i: str) -> str:
        return id_group(i, group_pattern)

    if val_ids is not None:
        named = set(val_ids)
        unknown = sorted(named - set(ids) - {group(i) for i in ids})
        if unknown:
            raise ValueError(f"val_ids {unknown} are neither ids nor groups of this set")
        val = [i for i in ids if i in named or group(i) in named]
        return [i for i in ids if i not in set(val)], val
    groups = sorted({group(i) for i in ids})
    rng = np.random.default_rng(seed)
    rng.shuffle(groups)
    n_val = int(round(len(groups) * val_fraction))
    if val_fraction > 0 and len(groups) > 1:
        n_val = max(1, n_val)
    val_groups = set(groups[:n_val])
    train = [i for i in ids if group(i) not in val_groups]
    val = [i for i in ids if group(i) in val_groups]
    return train, val


def drop_annotations(labels: np.ndarray, keep_fraction: float, seed) -> np.ndarray:
    """The instance map with a seeded random `keep_fraction` of its nuclei kept (rounded, at least one) and the
    others marked unannotated by negating their ids (negative ids survive crops and nearest-neighbour warps)."""
    import zlib

    ids = np.unique(labels)
    ids = ids[ids > 0]
    if ids.size == 0:
        return labels
    key = [int(v) if not isinstance(v, str) else zlib.crc32(v.encode()) for v in seed]
    keep = np.random.default_rng(key).choice(ids, max(1, round(keep_fraction * ids.size)), replace=False)
    out = labels.astype(np.int32)
    dropped = (out > 0) & ~np.isin(out, keep)
    out[dropped] = -out[dropped]
    return out


def split_set_ids(cfg: SetConfig, path: Path, data_cfg: DataConfig) -> tuple[list[str], list[str]]:
    """(training ids, validation ids) of one set at `path`, from the files' ids alone (no image is read)."""
    if cfg.synthetic:
        ids = [f"{path.name}-{k}" for k in range(cfg.synthetic.images)]
    else:
        ids = list_ids(path, cfg.annotation)
    ids = [i for i in ids if i not in set(cfg.exclude)]
    if cfg.annotation == "foreground":  # masks cannot score instances: no validation share
        return ids, []
    fraction = data_cfg.val_fraction if cfg.val_fraction is None else cfg.val_fraction
    try:
        return split_ids(ids, fraction, data_cfg.split_seed, cfg.group_pattern, cfg.val_ids)
    except ValueError as exc:
        raise ValueError(f"data set {path}: {exc}") from None


class LoadedSet:
    """One canonical set's split, with its images and label maps in memory."""

    def __init__(self, cfg: SetConfig, root: str, data_cfg: DataConfig, split: str, normalizer=None):
        path = Path(cfg.path)
        self.path = path if path.is_absolute() or cfg.synthetic else Path(root) / path
        self.name = self.path.name
        self.foreground_only = cfg.annotation == "foreground"
        self.required = cfg.required
        if cfg.synthetic:
            from nucseg.data.synthetic import synthetic_sample

            spec = cfg.synthetic
            generate = {f"{self.name}-{k}": k for k in range(spec.images)}
        else:
            info = dataset_info(self.path)
        train, val = split_set_ids(cfg, self.path, data_cfg)
        cap = data_cfg.val_max_images if cfg.val_max_images is None else cfg.val_max_images
        chosen = train if split == "train" else val[:cap]
        if cfg.max_images:
            chosen = chosen[: cfg.max_images]
        self.ids = chosen
        self.samples: list[Sample] = []
        for i in chosen:
            if cfg.synthetic:
                s = synthetic_sample(spec.size, spec.nuclei, style=spec.style, seed=generate[i])
                s.meta["id"] = i
            else:
                s = read_canonical_one(self.path, i, info, cfg.annotation)
            image = to_uint8(s.image)
            if normalizer is not None:
                image = normalizer.transform(image)
            s.image = to_channels(image, data_cfg.channels)
            s.meta["stained"] = detect_modality(image) == "he"  # of the whole image, not of each patch
            if split == "train" and not self.foreground_only and data_cfg.keep_fraction < 1.0:
                s.instances = drop_annotations(s.instances, data_cfg.keep_fraction, [data_cfg.keep_seed, i])
            self.samples.append(s)
        areas = np.array([s.instances.size for s in self.samples], dtype=np.float64)
        self.image_weights = areas / areas.sum() if areas.size else areas


class PatchDataset:
    """Map-style dataset of `length` random patches; item i is a pure function of (seed, i)."""

    def __init__(self, data_cfg: DataConfig, targets_fn, length: int, seed: int = 0, split: str = "train",
                 foreground_targets_fn=None, targets_use_image: bool = False, targets_use_classes: bool = False,
                 image_planes_fn=None):
        self.cfg = data_cfg
        self.image_planes_fn = image_planes_fn  # a method's per-image side input (Method.image_planes)
        self.targets_use_image = targets_use_image
        self.targets_use_classes = targets_use_classes
        normalizer = stain_normalizer(data_cfg)
        loaded = [(LoadedSet(s, data_cfg.root, data_cfg, split, normalizer), s.weight) for s in data_cfg.sets]
        loaded = [(ds, w) for ds, w in loaded if ds.samples]  # a set whose split is empty takes no share
        if foreground_targets_fn is None:  # mask-only sets a protocol offers to the methods that can use them
            for ds, _ in loaded:
                if ds.foreground_only and not ds.required:
                    print(f"data: {ds.name} (nucleus masks only) left out: this method cannot train on masks")
            loaded = [(ds, w) for ds, w in loaded if not (ds.foreground_only and not ds.required)]
        elif data_cfg.keep_fraction < 1.0 and split == "train":
            # a mask of every nucleus would undo the partial labels: an optional mask-only set is left out
            for ds, _ in loaded:
                if ds.foreground_only and not ds.required:
                    print(f"data: {ds.name} (nucleus masks only) left out: it would label every nucleus, "
                          f"where data.keep_fraction is {data_cfg.keep_fraction}")
            loaded = [(ds, w) for ds, w in loaded if not (ds.foreground_only and not ds.required)]
        if not loaded:
            raise ValueError("no training images: check data.sets and data.root")
        self.sets = [ds for ds, _ in loaded]
        weights = np.array([w for _, w in loaded], dtype=np.float64)
        self.set_weights = weights / weights.sum()
        if any(ds.foreground_only for ds in self.sets) and foreground_targets_fn is None:
            names = ", ".join(ds.name for ds in self.sets if ds.foreground_only)
            raise ValueError(f"sets with annotation 'foreground' ({names}) need a method that trains on masks")
        self.targets_fn = targets_fn
        self.foreground_targets_fn = foreground_targets_fn
        self.length = length
        self.seed = seed
        self.augment = Augmenter(data_cfg.augment)

    def __len__(self) -> int:
        return self.length

    def crop(self, sample: Sample, rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
        h, w = sample.instances.shape
        ph, pw = max(size - h, 0), max(size - w, 0)
        image, labels = sample.image, sample.instances
        if ph or pw:
            image = np.pad(image, ((0, ph), (0, pw), (0, 0)), mode="reflect")
            labels = np.pad(labels, ((0, ph), (0, pw)))  # reflected nuclei would be unlabelled: leave them out
        r = int(rng.integers(0, image.shape[0] - size + 1))
        c = int(rng.integers(0, image.shape[1] - size + 1))
        return image[r : r + size, c : c + size], labels[r : r + size, c : c + size]

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        draw = int(index) % self.cfg.patch_pool if self.cfg.patch_pool else int(index)
        rng = np.random.default_rng([self.seed, draw])
        ds = self.sets[rng.choice(len(self.sets), p=self.set_weights)]
        sample = ds.samples[rng.choice(len(ds.samples), p=ds.image_weights)]
        m, p = self.cfg.target_margin, self.cfg.patch_size
        image, labels = self.crop(sample, rng, p + 2 * m)
        image, labels = self.augment(image, labels, rng, stained=sample.meta.get("stained", True))
        unannotated = labels < 0
        labels = np.maximum(labels, 0)
        extra = {"image": image} if self.targets_use_image else {}
        if ds.foreground_only:
            targets = self.foreground_targets_fn(labels > 0, **extra)
        else:
            if self.targets_use_classes:  # augmentation keeps instance ids, so the sample's classes still apply
                extra["classes"] = sample.classes
            targets = self.targets_fn(labels, **extra)
        out = {k: v[..., m : m + p, m : m + p] for k, v in targets.items()}
        if self.cfg.keep_fraction < 1.0:
            from scipy import ndimage as ndi

            # an unannotated nucleus and a 2 px rim around it carry no label: 0 there, 1 elsewhere
            rim = ndi.binary_dilation(unannotated, iterations=2) if unannotated.any() else unannotated
            out["valid"] = (~rim[m : m + p, m : m + p]).astype(np.float32)
        out["labelled"] = np.float32(0.0 if ds.foreground_only else 1.0)
        out["image"] = np.ascontiguousarray(image[m : m + p, m : m + p].transpose(2, 0, 1))
        if self.image_planes_fn is not None:  # of the whole (unaugmented) image, as the Predictor computes it
            if "image_planes" not in sample.meta:
                sample.meta["image_planes"] = np.asarray(self.image_planes_fn(sample.image), np.float32)
            out["image_planes"] = sample.meta["image_planes"]
        return out


def resolve_class_names(data_cfg: DataConfig) -> dict[int, str]:
    """The class names of a training config: `data.class_names`, then each set's dataset.json "classes" for the
    ids not named yet (two sets naming one id differently is an error naming both files)."""
    names = {int(k): str(v) for k, v in dict(data_cfg.class_names).items()}
    given = set(names)
    found: dict[int, tuple[str, Path]] = {}
    for s in data_cfg.sets:
        if s.synthetic is not None:
            continue
        src = Path(s.path) if Path(s.path).is_absolute() else Path(data_cfg.root) / s.path
        for k, v in (dataset_info(src).get("classes") or {}).items():
            k = int(k)
            if k in given:
                continue
            if k in found and found[k][0] != v:
                raise ValueError(f"class {k} is '{found[k][0]}' in {found[k][1] / 'dataset.json'} and '{v}' in "
                                 f"{src / 'dataset.json'}: name it in data.class_names")
            found[k] = (str(v), src)
    names.update({k: v for k, (v, _) in found.items()})
    return dict(sorted(names.items()))


def validation_samples(data_cfg: DataConfig) -> dict[str, list[Sample]]:
    """{set name: whole validation images} for model selection."""
    out = {}
    normalizer = stain_normalizer(data_cfg)
    for s in data_cfg.sets:
        loaded = LoadedSet(s, data_cfg.root, data_cfg, "val", normalizer)
        if loaded.samples:
            out[loaded.name] = loaded.samples
    return out
