"""GeNSeg-Net: ideal-nucleus targets, Res-CBAM and grid attention, the discriminator's scales, grey input, the
watershed, and training in stages through the engine."""

import csv

import numpy as np
import pytest
import torch

from nucseg.data.synthetic import synthetic_sample
from nucseg.methods import Stage, get_method
from nucseg.metrics import aji, compute_overlap
from nucseg.targets.ideal import BODY, EDGE, edge_classes, ideal_nucleus_image

TINY = {"generator_channels": 8, "generator_blocks": 2, "discriminator_dim": 32, "discriminator_image_size": 64,
        "encoder": "test_efficientnet", "decoder_channels": [16, 16, 8, 8, 8]}


def two_touching_discs():
    yy, xx = np.mgrid[:40, :60]
    labels = np.zeros((40, 60), np.int32)
    labels[(yy - 20) ** 2 + (xx - 20) ** 2 < 100] = 1
    labels[((yy - 20) ** 2 + (xx - 37) ** 2 < 100) & (labels == 0)] = 2
    return labels


def test_ideal_image_peaks_at_centroids_and_has_one_level_on_shared_edges():
    labels = two_touching_discs()
    image = ideal_nucleus_image(labels, edge_width=4, centre_level=1.0, rim_level=0.6, edge_level=0.3)
    classes = edge_classes(labels, 4)
    for i in (1, 2):
        ys, xs = np.nonzero(labels == i)
        inside = image[labels == i]
        peak = np.argmax(inside)
        assert np.hypot(ys[peak] - ys.mean(), xs[peak] - xs.mean()) <= 1.0
        assert inside.max() == pytest.approx(1.0, abs=0.05)
    shared = (classes == EDGE) & (np.abs(np.arange(60) - 28.5) < 3)[None, :] & (np.abs(np.arange(40) - 20) < 3)[:, None]
    assert shared.sum() >= 8 and np.unique(image[shared]).tolist() == [pytest.approx(0.3)]
    assert np.all(image[labels == 0][classes[labels == 0] == 0] == 0)  # flat background
    # the body falls from centre to rim, then the band, then the background
    row = image[20, :20]
    assert np.all(np.diff(row[row > 0.5]) > 0)


def test_edge_band_is_half_inside_half_outside():
    labels = np.zeros((40, 40), np.int32)
    labels[10:30, 10:30] = 1
    classes = edge_classes(labels, 4)
    assert classes[20, 8:14].tolist() == [EDGE, EDGE, EDGE, EDGE, BODY, BODY]
    assert classes[20, 7] == 0
    with pytest.raises(ValueError, match="even"):
        edge_classes(labels, 3)


def test_watershed_recovers_instances_from_ideal_class_maps():
    s = synthetic_sample(128, 16, radius=(7, 11), seed=4)
    classes = edge_classes(s.instances, 4)
    prob = np.stack([classes == k for k in range(3)]).astype(np.float32)
    scores = {}
    for trim in (0, 1, 2, 3):
        labels = get_method("gensegnet")(**TINY, outer_trim=trim).postprocess({"prob": prob}).labels
        scores[trim] = aji(compute_overlap(s.instances, labels))
    assert scores[2] > 0.88
    # the band reaches 2 px past the outline: trimming exactly that much fits the nuclei best
    assert max(scores, key=scores.get) == 2


def test_res_cbam_and_generator_shapes_and_gradients():
    from nucseg.methods.gensegnet.model import Generator, ResBlock

    block = ResBlock(16, cbam=True)
    x = torch.randn(2, 16, 20, 20, requires_grad=True)
    y = block(x)
    assert y.shape == x.shape
    y.square().mean().backward()
    assert x.grad.abs().sum() > 0 and block.attention.channel.mlp[0].weight.grad.abs().sum() > 0
    assert block.attention.spatial.conv.weight.grad.abs().sum() > 0
    gen = Generator(8, 2, downsamplings=2)
    out = gen(torch.randn(1, 1, 50, 46))  # not a multiple of 4: padded, then cropped back
    assert out.shape == (1, 1, 50, 46) and out.abs().max() <= 1.0


def test_grid_attention_windows_round_trip_and_match_full_attention_on_one_window():
    from nucseg.models.blocks import TransformerBlock, window_merge, window_partition

    x = torch.randn(2, 8, 12, 5)
    assert torch.equal(window_merge(window_partition(x, 4), 4, 8, 12), x)
    torch.manual_seed(0)
    windowed = TransformerBlock(16, 2, window=4)
    full = TransformerBlock(16, 2)
    full.load_state_dict(windowed.state_dict())
    tokens = torch.randn(3, 16, 16, requires_grad=True)  # a 4×4 grid: one window = all tokens
    assert torch.allclose(windowed(tokens, (4, 4)), full(tokens), atol=1e-5)
    # on a larger grid, a token attends only within its window: others' tokens do not change it
    grid = torch.randn(1, 64, 16)
    moved = grid.clone()
    moved[0, 63] += 5.0  # the last token, in the bottom-right window of an 8×8 grid
    a, b = windowed(grid, (8, 8)), windowed(moved, (8, 8))
    assert torch.allclose(a[0, 0], b[0, 0]) and not torch.allclose(a[0, 63], b[0, 63])
    out = windowed(tokens.reshape(3, 16, 16), (4, 4))
    out.sum().backward()
    assert tokens.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="multiple of the attention window"):
        windowed(torch.randn(1, 36, 16), (6, 6))


def test_discriminator_tokens_per_scale_and_output():
    from nucseg.methods.gensegnet.model import TransformerDiscriminator

    disc = TransformerDiscriminator(dim=64, patch=8, window=8, image_size=256)
    assert disc.token_counts((256, 256)) == [32 * 32, 16 * 16, 8 * 8, 4 * 4 + 1]
    # grid attention on the 32×32 scale only (above 16×16); the dims C/8, C/4, C/2, C after concatenation
    assert [b[0].window for b in disc.stages] == [8, None, None, None]
    assert [b[0].norm1.normalized_shape[0] for b in disc.stages] == [8, 16, 32, 64]
    y = torch.randn(2, 1, 256, 256, requires_grad=True)
    logit = disc(y)
    assert logit.shape == (2, 1)
    logit.sum().backward()
    assert y.grad.abs().sum() > 0 and disc.pos[0].grad.abs().sum() > 0
    assert disc(torch.randn(1, 1, 128, 128)).shape == (1, 1)  # position encodings resized


def test_grey_input_modalities():
    from nucseg.engine.infer import normalize
    from nucseg.methods.gensegnet.model import GreyInput

    grey = GreyInput((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    he = synthetic_sample(96, 10, style="he", seed=1)
    fl = synthetic_sample(96, 10, style="fluorescence", seed=1)
    for s in (he, fl):
        img = torch.from_numpy(np.ascontiguousarray(s.image if s.image.shape[-1] == 3 else
                                                    np.repeat(s.image, 3, -1))).permute(2, 0, 1)[None]
        g = grey(normalize(img))[0, 0].numpy()
        assert g.min() >= 0 and g.max() <= 1
        assert g[s.instances > 0].mean() > g[s.instances == 0].mean() + 0.1  # nuclei bright in both
    with pytest.raises(ValueError, match="modality"):
        GreyInput((0, 0, 0), (1, 1, 1), modality="xray")
    with pytest.raises(ValueError, match="modality"):  # a config typo fails when the config is read
        get_method("gensegnet")(**TINY, modality="xray")


def test_segment_stage_freezes_the_generator_in_eval_mode():
    from nucseg.engine.train import enter_stage

    method = get_method("gensegnet")(**TINY)
    model = method.build_model()
    optimizers = {k: torch.optim.Adam(v) for k, v in method.optimizer_groups(model).items()}
    assert [s.name for s in method.stages()] == ["enhance", "segment"]
    enter_stage(model, optimizers, Stage("segment", ("segmenter",)))
    assert not model.generator.training and not model.discriminator.training and model.segmenter.training
    assert not any(p.requires_grad for p in model.generator.parameters())
    enter_stage(model, optimizers, Stage("enhance", ("generator", "discriminator")))
    assert model.generator.training and all(p.requires_grad for p in model.generator.parameters())
    assert [s.name for s in get_method("gensegnet")(**TINY, generator="none").stages()] == ["segment"]


def test_staged_training_resumes_across_stages_and_checks_its_config(tmp_path):
    from pathlib import Path

    from nucseg.engine.config import load_config
    from nucseg.engine.train import train

    smoke = Path(__file__).resolve().parents[2] / "configs/gensegnet/smoke.yaml"

    def cfg(*extra):
        return load_config(smoke, ["train.val_every=0", "train.log_every=1", *extra])

    train(cfg("train.stage_steps={enhance: 3, segment: 3}"), tmp_path / "full", progress=False)
    train(cfg("train.stage_steps={enhance: 3, segment: 0}"), tmp_path / "half", progress=False)
    ckpt = torch.load(tmp_path / "half/last.ckpt", weights_only=True)
    assert ckpt["step"] == 3 and set(ckpt["optimizers"]) == {"generator", "discriminator", "segmenter"}
    train(cfg("train.stage_steps={enhance: 3, segment: 3}"), tmp_path / "half", resume=True, progress=False)

    def rows(run):
        with open(tmp_path / run / "train.csv") as f:
            return list(csv.DictReader(f))

    full, half = rows("full"), rows("half")
    assert [r["stage"] for r in full] == ["enhance"] * 3 + ["segment"] * 3
    for key in ("generator/l1", "discriminator/total", "segmenter/total"):
        a = [float(r[key]) for r in full if r[key]]
        b = [float(r[key]) for r in half if r[key]]
        assert np.allclose(a, b, rtol=1e-4), key
    bad = cfg()
    bad.train.stage_steps = {"segment": 3}  # (on the command line, a dict merges into the file's)
    with pytest.raises(ValueError, match=r"stage_steps must give the steps of each stage.*enhance"):
        train(bad, tmp_path / "bad", progress=False)
    with pytest.raises(ValueError, match="lr_per_optimizer names"):
        train(cfg("optim.lr_per_optimizer={critic: 0.1}"), tmp_path / "bad2", progress=False)


def test_a_stage_the_method_lacks_may_be_given_zero_steps():
    from pathlib import Path

    from nucseg.engine.config import load_config
    from nucseg.engine.train import stage_plan

    smoke = Path(__file__).resolve().parents[2] / "configs/gensegnet/smoke.yaml"
    seg_only = load_config(smoke, ["model.generator=none", "train.stage_steps.enhance=0"])
    method = get_method("gensegnet")(seg_only.model)
    assert [(s.name, a, b) for s, a, b in stage_plan(method, seg_only)] == [
        ("segment", 0, seg_only.train.stage_steps["segment"])]
    with pytest.raises(ValueError, match="stage_steps must give the steps of each stage"):
        stage_plan(method, load_config(smoke, ["model.generator=none"]))  # 'enhance' still has steps


def test_seg_only_trains_from_the_full_config_and_typos_in_learning_rates_are_errors(tmp_path):
    """`model.generator=none` keeps the config's generator/discriminator learning rates (switched off, not typos)."""
    from pathlib import Path

    from nucseg.engine.config import load_config
    from nucseg.engine.train import train

    smoke = Path(__file__).resolve().parents[2] / "configs/gensegnet/smoke.yaml"
    base = ["train.val_every=0", "train.stage_steps={enhance: 0, segment: 2}", "model.generator=none",
            "optim.lr_per_optimizer={generator: 0.1, discriminator: 0.1}"]
    train(load_config(smoke, base), tmp_path / "segonly", progress=False)
    ckpt = torch.load(tmp_path / "segonly/last.ckpt", weights_only=True)
    assert ckpt["step"] == 2 and set(ckpt["optimizers"]) == {"segmenter"}
    with pytest.raises(ValueError, match="lr_per_optimizer names.*'critic'"):
        train(load_config(smoke, [*base, "optim.lr_per_optimizer.critic=0.1"]), tmp_path / "bad", progress=False)


def test_smoke_run_lowers_both_stages_losses(tmp_path):
    from pathlib import Path

    from nucseg.engine.config import load_config
    from nucseg.engine.train import train

    smoke = Path(__file__).resolve().parents[2] / "configs/gensegnet/smoke.yaml"
    train(load_config(smoke, ["train.val_every=0", "train.log_every=1"]), tmp_path, progress=False)
    with open(tmp_path / "train.csv") as f:
        rows = list(csv.DictReader(f))
    l1 = [float(r["generator/l1"]) for r in rows if r["stage"] == "enhance"]
    seg = [float(r["segmenter/total"]) for r in rows if r["stage"] == "segment"]
    assert np.mean(l1[-5:]) < 0.7 * np.mean(l1[:3])
    assert np.mean(seg[-5:]) < 0.85 * np.mean(seg[:3])


def test_export_leaves_the_discriminator_out_and_loads_back(tmp_path):
    from nucseg.engine.checkpoints import build_from_checkpoint, save_checkpoint
    from nucseg.engine.config import load_config
    from nucseg.engine.tune import export_checkpoint

    cfg = load_config(None, ["method=gensegnet"])
    cfg.model = dict(TINY)
    method = get_method("gensegnet")(cfg.model)
    model = method.build_model().eval()
    save_checkpoint(tmp_path / "run.ckpt", model, cfg)
    export_checkpoint(tmp_path / "run.ckpt", tmp_path / "deploy.pt")
    stored = torch.load(tmp_path / "deploy.pt", weights_only=True)["model"]
    assert stored and not any(k.startswith("discriminator.") for k in stored)
    _, loaded, _ = build_from_checkpoint(tmp_path / "deploy.pt")
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x)["logits"], model(x)["logits"])
    del stored[next(k for k in stored if k.startswith("segmenter."))]
    torch.save({"model": stored, "config": torch.load(tmp_path / "deploy.pt", weights_only=True)["config"]},
               tmp_path / "broken.pt")
    with pytest.raises(ValueError, match=r"broken.pt: the weights do not fit method 'gensegnet'.*missing \['segmenter"):
        build_from_checkpoint(tmp_path / "broken.pt")


def test_each_optimiser_keeps_its_own_schedule_betas_and_decay(tmp_path):
    """`optim.per_optimizer`: the segmenter's rate stays constant while the GAN's cosine decays; betas and weight
    decay reach each torch optimiser; a typo or a bad value is an error before training."""
    import csv
    from pathlib import Path

    from nucseg.engine.config import load_config
    from nucseg.engine.train import train

    smoke = Path(__file__).resolve().parents[2] / "configs/gensegnet/smoke.yaml"
    base = ["train.val_every=0", "train.log_every=1", "train.stage_steps={enhance: 4, segment: 4}",
            "optim.schedule=cosine", "optim.warmup_steps=0", "optim.per_optimizer.segmenter.schedule=constant",
            "optim.per_optimizer.segmenter.lr=0.0005", "optim.per_optimizer.generator.betas=[0.5, 0.999]",
            "optim.per_optimizer.discriminator.betas=[0.5, 0.999]",
            "optim.per_optimizer.segmenter.weight_decay=0.01"]
    train(load_config(smoke, base), tmp_path / "run", progress=False)
    rows = list(csv.DictReader(open(tmp_path / "run/train.csv")))
    generator = [float(r["lr/generator"]) for r in rows if r.get("lr/generator")]
    segmenter = [float(r["lr"] or r.get("lr/segmenter") or 0) for r in rows[4:]]
    assert generator[0] > generator[-1]  # cosine
    assert segmenter == [0.0005] * 4  # constant
    ckpt = torch.load(tmp_path / "run/last.ckpt", weights_only=True)
    groups = {k: v["param_groups"][0] for k, v in ckpt["optimizers"].items()}
    assert groups["generator"]["betas"] == (0.5, 0.999) or list(groups["generator"]["betas"]) == [0.5, 0.999]
    assert groups["segmenter"]["weight_decay"] == 0.01 and list(groups["segmenter"]["betas"]) == [0.9, 0.999]
    with pytest.raises(ValueError, match="per_optimizer names.*'critic'"):
        train(load_config(smoke, [*base, "optim.per_optimizer.critic.lr=0.1"]), tmp_path / "bad", progress=False)
    with pytest.raises(ValueError, match="betas of 'generator'"):
        train(load_config(smoke, [*base, "optim.per_optimizer.generator.betas=[1.5, 0.9]"]), tmp_path / "bad2",
              progress=False)
    with pytest.raises(ValueError, match="unknown schedule 'flat'"):
        train(load_config(smoke, [*base, "optim.per_optimizer.segmenter.schedule=flat"]), tmp_path / "bad3",
              progress=False)


def test_the_two_channel_segmenter_sees_the_grey_image_past_the_generator():
    """`segmenter_input: grey+enhanced`: with the generator's output held fixed, the logits still follow the image
    (they do not with `enhanced`); the mode needs a generator."""
    small = {"encoder": "test_efficientnet", "decoder_channels": [16, 16, 8, 8, 8], "generator_channels": 8,
             "generator_blocks": 1, "discriminator": "patchgan", "patchgan_channels": 8}
    a, b = torch.rand(1, 3, 64, 64), torch.rand(1, 3, 64, 64)
    logits = {}
    for mode in ("enhanced", "grey+enhanced"):
        method = get_method("gensegnet")({**small, "segmenter_input": mode})
        torch.manual_seed(0)
        model = method.build_model().eval()
        last = model.generator.net[-2]  # the generator's last conv: zero, so its output is tanh(0) for any image
        torch.nn.init.zeros_(last.weight)
        torch.nn.init.zeros_(last.bias)
        with torch.no_grad():
            logits[mode] = [model(x)["logits"] for x in (a, b)]
            assert torch.equal(model(a)["enhanced"], model(b)["enhanced"])
    assert torch.allclose(*logits["enhanced"])
    assert not torch.allclose(*logits["grey+enhanced"])
    with pytest.raises(ValueError, match="grey\\+enhanced needs the generator"):
        get_method("gensegnet")({**small, "segmenter_input": "grey+enhanced", "generator": "none"})


def test_modality_is_decided_once_per_image_for_every_window_and_tile():
    """`modality: auto`: an image that is mostly brightfield with a dark third is converted as brightfield in every
    window of the blended pass and in every tile, although the dark window alone would read as fluorescence; an
    all-dark image as fluorescence everywhere. The decision travels as the engine's side input (one constant plane)."""
    from nucseg.engine.config import InferConfig
    from nucseg.engine.infer import Predictor

    method = get_method("gensegnet")(**TINY)
    model = method.build_model().eval()
    seen = []
    model.grey.register_forward_pre_hook(lambda _m, args: seen.append(args[1].flatten().tolist()))
    image = np.full((64, 192, 3), 235, np.uint8)
    image[:, :64] = 10  # a dark third
    image[20:40, 20:40] = 200  # a bright "nucleus" in it
    predictor = Predictor(method, model, InferConfig(window=64, overlap=16, batch_size=1, block_margin=16),
                          runtime="torch")
    assert predictor.planes == 1 and predictor.image_planes_of(image).tolist() == [0.0]
    # the failure this prevents: the dark window, judged alone, is fluorescence
    assert method.image_planes(image[:, :64]).tolist() == [1.0]

    seen.clear()  # the predictor's own probe pass (BatchNorm folding)
    predictor.dense(image)
    assert len(seen) > 2 and all(flags == [False] for flags in seen), seen
    seen.clear()
    predictor.segment(image)  # larger than the window: tile by tile
    assert len(seen) >= 2 and all(flag is False for flags in seen for flag in flags), seen
    seen.clear()
    predictor.dense(np.full((64, 192, 3), 12, np.uint8))
    assert seen and all(flags == [True] for flags in seen)
    assert get_method("gensegnet")(**TINY, modality="fluorescence").image_plane_count == 0
