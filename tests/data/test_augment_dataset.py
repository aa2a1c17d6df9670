import numpy as np

from nucseg.data.augment import AugmentConfig, Augmenter
from nucseg.data.dataset import DataConfig, PatchDataset, SetConfig, split_ids
from nucseg.data.synthetic import synthetic_sample


def test_augmentation_keeps_image_and_labels_aligned():
    s = synthetic_sample(128, 20, style="fluorescence", seed=2)
    aug = Augmenter(AugmentConfig(rotate=30, elastic_p=1.0, affine_p=1.0, hed_p=0.0, blur_p=0, gamma_p=0,
                                  brightness_contrast_p=0))
    rng = np.random.default_rng(0)
    for _ in range(5):
        img, lab = aug(s.image, s.instances, rng)
        assert lab.dtype == np.int32 and set(np.unique(lab)) <= set(np.unique(s.instances))
        fg = lab > 0
        if fg.sum() > 50:  # nuclei are bright in this style: labels must sit on bright pixels
            assert img[..., 0][fg].mean() > img[..., 0][~fg].mean() + 60


def test_split_is_by_group_and_deterministic():
    ids = [f"train_{t}_{p:03d}" for t in range(10) for p in range(4)]
    tr, va = split_ids(ids, 0.2, seed=0, group_pattern=r"train_\d+_")
    assert split_ids(ids, 0.2, seed=0, group_pattern=r"train_\d+_") == (tr, va)
    assert not {i[:-3] for i in tr} & {i[:-3] for i in va} and len(va) == 8


def test_patches_are_reproducible(synthetic_set):
    from nucseg.methods import get_method

    m = get_method("unet")(encoder="test_efficientnet")
    cfg = DataConfig(sets=[SetConfig(str(synthetic_set))], patch_size=48, target_margin=8, val_fraction=0.34)
    ds = PatchDataset(cfg, m.targets, 10, seed=3)
    a, b = ds[4], ds[4]
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert a["image"].shape == (3, 48, 48) and a["three_class"].shape == (48, 48)


def test_set_weights_stay_with_their_sets_when_one_is_empty(synthetic_set):
    from nucseg.methods import get_method

    ids = [p.stem for p in (synthetic_set / "labels").iterdir()]
    m = get_method("unet")(encoder="test_efficientnet")
    cfg = DataConfig(sets=[SetConfig(str(synthetic_set), weight=0.5, exclude=ids),  # nothing left: dropped
                           SetConfig(str(synthetic_set), weight=0.2), SetConfig(str(synthetic_set), weight=0.8)],
                     patch_size=48, target_margin=8, val_fraction=0.34)
    ds = PatchDataset(cfg, m.targets, 4)
    assert len(ds.sets) == 2 and np.allclose(ds.set_weights, [0.2, 0.8])


def test_patch_pool_repeats_draws_exactly(synthetic_set):
    from nucseg.methods import get_method

    m = get_method("unet")(encoder="test_efficientnet")
    cfg = DataConfig(sets=[SetConfig(str(synthetic_set))], patch_size=48, target_margin=8, val_fraction=0.34,
                     patch_pool=3)
    ds = PatchDataset(cfg, m.targets, 10, seed=3)
    assert np.array_equal(ds[1]["image"], ds[4]["image"]) and np.array_equal(ds[1]["image"], ds[7]["image"])
    assert not np.array_equal(ds[1]["image"], ds[2]["image"])


def test_stain_jitter_stays_off_fluorescence_and_greyscale_images():
    """HED jitter only on stained (colour brightfield) images: decided per whole image, not per patch."""
    from nucseg.data.augment import AugmentConfig, Augmenter
    from nucseg.data.dataset import DataConfig, PatchDataset, SetConfig, SyntheticSpec
    from nucseg.methods import get_method

    jitter_only = AugmentConfig(flips=False, affine_p=0.0, blur_p=0.0, brightness_contrast_p=0.0, gamma_p=0.0,
                                hed_p=1.0, hed_sigma=0.2)
    augment = Augmenter(jitter_only)
    rgb = np.random.default_rng(0).integers(60, 200, (32, 32, 3), dtype=np.uint8)
    labels = np.zeros((32, 32), np.int32)
    assert not np.array_equal(augment(rgb, labels, np.random.default_rng(1))[0], rgb)
    assert np.array_equal(augment(rgb, labels, np.random.default_rng(1), stained=False)[0], rgb)
    every = Augmenter(AugmentConfig(**{**jitter_only.__dict__, "hed_images": "all"}))
    assert not np.array_equal(every(rgb, labels, np.random.default_rng(1), stained=False)[0], rgb)
    method = get_method("unet")({"encoder": "test_efficientnet"})
    for style, stained in (("he", True), ("fluorescence", False)):
        cfg = DataConfig(sets=[SetConfig(path="s", synthetic=SyntheticSpec(style=style, images=1, size=96,
                                                                           nuclei=10))],
                         patch_size=48, target_margin=8, val_fraction=0.0, augment=jitter_only)
        ds = PatchDataset(cfg, method.targets, 2)
        assert ds.sets[0].samples[0].meta["stained"] is stained
