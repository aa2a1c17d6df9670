import csv
from pathlib import Path

import numpy as np
import pytest
import torch

from nucseg.methods import get_method
from nucseg.methods.weaveseg.modules import (
    AGLU,
    ASR,
    LSGR,
    ContrastiveAttention,
    ICWIteration,
    apply_local_kernel,
)

ROOT = Path(__file__).resolve().parents[2]
TINY = dict(encoder="test_efficientnet", channels=16, context_channels=8, dense_growth=8, dense_layers=2,
            lsgr_groups=2)


def grads_flow(module, *inputs):
    out = module(*inputs)
    out.float().square().mean().backward()
    return out, {n: p.grad is not None and bool(p.grad.abs().sum() > 0) for n, p in module.named_parameters()}


def test_asr_shapes_and_gradients():
    torch.manual_seed(0)
    asr = ASR(16, groups=4, comb_channels=8)
    out, flows = grads_flow(asr, torch.randn(2, 16, 8, 8), torch.randn(2, 16, 16, 16))
    assert out.shape == (2, 16, 16, 16)
    assert all(flows.values()), [n for n, ok in flows.items() if not ok]


def test_lsgr_offsets_resample_and_learn():
    torch.manual_seed(0)
    lsgr = LSGR(8, groups=2)
    x, comb = torch.randn(1, 4, 10, 10), torch.randn(1, 8, 10, 10)
    assert torch.allclose(lsgr(x, comb), x, atol=1e-5)  # zero-initialised offsets: identity resampling
    out, flows = grads_flow(lsgr, x, comb)
    assert out.shape == x.shape and flows["offset.weight"]
    with torch.no_grad():
        lsgr.offset.bias.copy_(torch.tensor([5.0, 0.0, 5.0, 0.0]))  # shift right by tanh(5)·2 ≈ 2 px
    assert torch.allclose(lsgr(x, comb)[..., 2:6], x[..., 4:8], atol=1e-3)


def test_local_kernel_matches_unfold_reference():
    x, ker = torch.randn(1, 3, 6, 6), torch.rand(1, 9, 12, 12)
    patches = torch.nn.functional.unfold(x, 3, padding=1).view(1, 3, 9, 6, 6)
    patches = patches.repeat_interleave(2, 3).repeat_interleave(2, 4)
    assert torch.allclose(apply_local_kernel(x, ker, 3, 2), (patches * ker[:, None]).sum(2), atol=1e-5)


def test_contrastive_attention_weights_sum_to_one_per_window():
    ca = ContrastiveAttention(8, 4, window=5)
    w = ca.weights(torch.randn(2, 4, 9, 7), torch.randn(2, 4, 9, 7))
    assert w.shape == (2, 25, 9, 7)
    assert torch.allclose(w.sum(1), torch.ones(2, 9, 7), atol=1e-5)
    assert float(w[:, 0, 0, 0].max().detach()) == 0.0  # the corner's out-of-image neighbour gets no weight


def test_icw_and_aglu_gradients():
    torch.manual_seed(0)
    it = ICWIteration(8, 4, window=3, dense_layers=2, growth=4)
    x, ctx = torch.randn(2, 8, 12, 12), torch.randn(2, 4, 12, 12, requires_grad=True)
    out = it(x, ctx, ctx)
    out.square().mean().backward()
    assert out.shape == x.shape and ctx.grad is not None and ctx.grad.abs().sum() > 0
    assert it.gate.kappa.grad is not None and it.gate.lam.grad is not None
    g = AGLU(8)
    with torch.no_grad():
        g.kappa.fill_(1.0), g.lam.fill_(0.0)
    v = torch.tensor([2.0]).view(1, 1, 1, 1).expand(1, 8, 1, 1)
    assert torch.allclose(g(v), v * torch.sigmoid(v))


@pytest.mark.parametrize("switches", [
    {}, {"use_asr": False}, {"icw_iterations": 0}, {"icw_iterations": 1}, {"icw_iterations": 4},
    {"closed_loop": False}, {"use_lsgr": False}, {"aglu_per_channel": True},
    {"uncertainty": "attention"}, {"uncertainty": "none", "refresh_context": False}, {"output_stride": 2},
    {"window": "hamming", "asr_mix": True, "loop_fusion": False},
    {"weight_uncertainty": 0.0, "weight_tri": 0.0}, {"weight_fg": 0.0, "weight_bg": 0.0, "weight_distance": 0.0},
])
def test_every_ablation_builds_runs_and_backpropagates(switches):
    from nucseg.data.synthetic import synthetic_sample

    method = get_method("weaveseg")({**TINY, **switches})
    net = method.build_model()
    out = net(torch.randn(2, 3, 64, 64))
    assert {k: tuple(v.shape[1:]) for k, v in out.items()} == {
        "fg": (1, 64, 64), "bg": (1, 64, 64), "uncertainty": (1, 64, 64), "mask": (1, 64, 64),
        "trilateral": (3, 64, 64), "distance": (1, 64, 64)}
    labels = synthetic_sample(64, 8, seed=1).instances
    t = method.targets(labels)
    batch = {k: torch.from_numpy(np.stack([v, v])) for k, v in t.items()}
    losses = method.loss(out, batch)
    losses["total"].backward()
    inst = method.postprocess({k: v[0].detach().numpy() for k, v in method.predict_dense(net, torch.randn(1, 3, 64, 64))
                               .items()})
    assert inst.labels.shape == (64, 64)


def test_uncertainty_target_high_on_boundaries_low_inside():
    from scipy import ndimage as ndi

    from nucseg.data.synthetic import synthetic_sample
    from nucseg.methods.weaveseg.targets import uncertainty_map

    labels = synthetic_sample(128, 25, radius=(7, 12), touching=0.5, seed=4).instances
    u = uncertainty_map(labels)
    edge = (ndi.maximum_filter(labels, 3) != ndi.minimum_filter(labels, 3))
    deep = (ndi.distance_transform_edt(~edge) > 4) & (labels > 0)  # > 4 px from any nucleus edge
    far = ndi.distance_transform_edt(labels == 0) > 6
    contact = edge & (ndi.minimum_filter(labels, 3) > 0)
    assert u[edge].mean() > 0.35 and u[contact].mean() > 0.6
    assert u[deep].mean() < 0.05 and u[far].max() < 0.05
    assert 0.0 <= u.min() and u.max() <= 1.0


def test_smoke_config_lowers_loss(synthetic_set, tmp_path):
    from nucseg.engine.config import load_config
    from nucseg.engine.train import train

    cfg = load_config(ROOT / "configs/weaveseg/smoke.yaml", [f"data.sets=[{{path: '{synthetic_set}'}}]",
                                                             "train.val_every=30"])
    train(cfg, tmp_path, progress=False)
    with open(tmp_path / "train.csv") as f:
        losses = [float(r["total"]) for r in csv.DictReader(f)]
    assert losses[-1] < losses[0] * 0.8
    assert (tmp_path / "best.ckpt").is_file()


def test_segment_with_weaveseg_run_dir(synthetic_set, tmp_path):
    """`nucseg segment --model RUN_DIR` works for a WeaveSeg run (any method's checkpoint)."""
    from nucseg.cli import main
    from nucseg.data.synthetic import synthetic_sample
    from nucseg.engine.config import load_config
    from nucseg.engine.train import train
    from nucseg.io.images import write_image

    cfg = load_config(ROOT / "configs/weaveseg/smoke.yaml", [f"data.sets=[{{path: '{synthetic_set}'}}]",
                                                             "train.steps=2", "train.val_every=0"])
    train(cfg, tmp_path / "run", progress=False)
    write_image(tmp_path / "in" / "x.png", synthetic_sample(80, 8, seed=9).image)
    assert main(["segment", str(tmp_path / "in"), "--model", str(tmp_path / "run"), "--out", str(tmp_path / "o"),
                 "--outputs", "labels"]) == 0
    assert (tmp_path / "o/labels/x.png").is_file()
    ckpt = str(tmp_path / "run/last.ckpt")
    assert main(["segment", str(tmp_path / "in"), "--model", "weaveseg", "--checkpoint", ckpt, "--out",
                 str(tmp_path / "o2"), "--outputs", "csv"]) == 0
    assert main(["segment", str(tmp_path / "in"), "--model", "unet", "--checkpoint", ckpt, "--out",
                 str(tmp_path / "o3")]) == 2  # a WeaveSeg checkpoint is not a U-Net
    # a method name with no shipped weights needs --checkpoint (`--model weaveseg` alone uses weaveseg.pt)
    assert main(["segment", str(tmp_path / "in"), "--model", "unet", "--out", str(tmp_path / "o4")]) == 2


# --- #26: faithful to the paper ------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["update", "attention"])
def test_the_uncertainty_context_changes_icw(mode):
    """Sec. 3.3: every ICW iteration takes S^u; with `uncertainty: none` it does not."""
    torch.manual_seed(0)
    x, f, b = torch.randn(1, 16, 12, 12), torch.randn(1, 8, 12, 12), torch.randn(1, 8, 12, 12)
    u1, u2 = torch.randn(1, 8, 12, 12), torch.randn(1, 8, 12, 12)
    step = ICWIteration(16, 8, uncertainty=mode).eval()
    for p in step.parameters():  # off the zero-ish start
        torch.nn.init.normal_(p, 0, 0.3) if p.dim() > 1 else None
    assert not torch.allclose(step(x, f, b, u1), step(x, f, b, u2))
    off = ICWIteration(16, 8, uncertainty="none").eval()
    assert torch.equal(off(x, f, b, u1), off(x, f, b, u2))


def test_the_network_feeds_refreshed_uncertainty_context_to_icw():
    """Changing the decoupling branch's S^u channels changes the mask output (it reaches ICW), not only the
    uncertainty head."""
    torch.manual_seed(0)
    net = get_method("weaveseg")({**TINY, "icw_iterations": 2}).build_model().eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        base = net(x)["mask"]
        conv = net.decouple[0]
        ctx = conv.out_channels // 3
        conv.weight[2 * ctx :] += 0.5 * torch.randn_like(conv.weight[2 * ctx :])  # the S^u third only
        assert not torch.allclose(net(x)["mask"], base, atol=1e-5)


def test_a_box_filter_asr_kernel_is_reachable():
    """A uniform softmax is a box filter (no window); with the Hamming window of the earlier version the same
    logits keep most of the weight on the centre tap."""
    from nucseg.methods.weaveseg.modules import AdaptiveKernel

    for k in (3, 5):
        kernel = AdaptiveKernel(4, k)
        torch.nn.init.zeros_(kernel.conv.weight)
        torch.nn.init.zeros_(kernel.conv.bias)
        out = kernel(torch.randn(1, 4, 6, 6))
        torch.testing.assert_close(out, torch.full_like(out, 1 / k**2))
    windowed = AdaptiveKernel(4, 3, window="hamming")
    torch.nn.init.zeros_(windowed.conv.weight)
    torch.nn.init.zeros_(windowed.conv.bias)
    assert windowed(torch.randn(1, 4, 6, 6))[0, 4].min() > 0.7  # the centre tap


def test_targets_honour_their_config_keys():
    from nucseg.data.synthetic import synthetic_sample

    labels = synthetic_sample(96, 14, radius=(7, 11), touching=0.4, seed=2).instances
    base = get_method("weaveseg")(TINY).targets(labels)
    for key, value, changed in [("boundary_width", 1, {"trilateral", "uncertainty"}),
                                ("certain_erode", 1, {"fg", "uncertainty"}),
                                ("certain_dilate", 2, {"bg", "uncertainty"})]:
        other = get_method("weaveseg")({**TINY, key: value}).targets(labels)
        differs = {k for k in base if not np.array_equal(base[k], other[k])}
        assert differs == changed, (key, differs)


def test_seeds_avoid_uncertain_pixels_when_asked():
    from nucseg.data.synthetic import synthetic_sample
    from nucseg.metrics import aji

    s = synthetic_sample(128, 24, radius=(7, 10), touching=0.6, seed=3)
    method = get_method("weaveseg")({**TINY, "min_area": 4, "min_marker_area": 1})
    t = method.targets(s.instances)
    dense = {"mask": t["mask"], "tri": np.eye(3, dtype=np.float32)[t["trilateral"]].transpose(2, 0, 1),
             "distance": t["distance"], "uncertainty": np.ones_like(t["mask"])}
    seeded = method.postprocess(dense).labels
    assert aji(s.instances, seeded) > 0.7
    method.config.uncertainty_threshold = 0.5  # everything uncertain: no seeds, touching nuclei merge
    assert aji(s.instances, method.postprocess(dense).labels) < aji(s.instances, seeded) - 0.05


@pytest.mark.slow
def test_compiled_tap_loops_give_the_eager_values_and_gradients():
    """`compile_kernels` (training speed only): the compiled tap loops give the eager ones' outputs and gradients."""
    from nucseg.methods.weaveseg.modules import local_cosine_similarity

    torch.manual_seed(0)
    cases = [(lambda x, kern, on: apply_local_kernel(x, kern, 3, 2, on), (2, 4, 5, 6), (2, 9, 10, 12)),
             (lambda x, kern, on: apply_local_kernel(x, kern, 5, 1, on), (2, 4, 5, 6), (2, 25, 5, 6)),
             (lambda x, _, on: local_cosine_similarity(x, on), (2, 4, 5, 6), (1,))]
    for fn, x_shape, kern_shape in cases:
        x, kern = torch.randn(x_shape), torch.rand(kern_shape)
        results = []
        for on in (False, True):
            xg, kg = x.clone().requires_grad_(), kern.clone().requires_grad_()
            out = fn(xg, kg, on)
            (out * torch.linspace(-1, 1, out.numel()).view(out.shape)).sum().backward()
            results.append((out.detach(), xg.grad, kg.grad))
        for eager, compiled in zip(*results):
            if eager is not None:
                torch.testing.assert_close(compiled, eager, rtol=1e-4, atol=1e-5)


def test_compile_kernels_reaches_every_tap_loop_and_inference_stays_eager():
    from nucseg.methods.weaveseg import modules

    net = get_method("weaveseg")({**TINY, "icw_iterations": 1, "compile_kernels": True}).build_model().eval()
    flagged = [type(m).__name__ for m in net.modules() if hasattr(m, "compile_kernels")]
    assert {"ASR", "LSGR", "ContrastiveAttention"} <= set(flagged)
    assert all(m.compile_kernels for m in net.modules() if hasattr(m, "compile_kernels"))
    modules._compiled.cache_clear()
    with torch.no_grad():
        net(torch.randn(1, 3, 32, 32))
    assert modules._compiled.cache_info().currsize == 0  # no gradient: the eager loops
    assert not get_method("weaveseg")(TINY).build_model().output_fusion.compile_kernels
