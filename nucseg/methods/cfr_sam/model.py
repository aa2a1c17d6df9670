"""The CFR-SAM network (Fig. 2): prompt learner, SAM with adapters in its frozen encoder (MALA), HMFM over encoder
levels, SAM's prompt encoder and mask decoder per point prompt, and BGMR.

Per-prompt decoding. SAM's decoder sees one 64×64-token embedding, 256 image px here (`nucseg.models.sam`: 4 px per
token). Each prompt gets its own context: the 64×64 tokens of the whole image's fused embedding centred on it
(clamped to the image), so a nucleus on a chunk's edge is decoded with context on both sides, and an image of any
size is one set of prompts. The mask decoder's upscaling is per pixel (transposed 2×2 convolutions, per-pixel layer
norm, GELU), so it runs only on the `mask_window` px around the prompt (64 px: larger than a nucleus at 40×): exact
there, and 16× cheaper than the whole context, which SAM's every-prompt-full-image decoding would cost on a CPU. A
mask is background outside its window; `mask_window: 0` decodes the whole context, as the paper does. For a CPU
budget `context_tokens` (< 64) keeps only the centre of each prompt's frame: the decoder attends over fewer image
tokens, each at its frame position (prompt and positional encoding as in the full frame).

The coarse mask features F_m handed to BGMR are the upscaled decoder features weighted by the prompt's
hypernetwork vector (so their channel sum is the coarse mask logit).

Assembly: masks are pasted by decreasing prompt score; a pixel claimed by several masks goes to the one with the
highest refined logit; each instance takes its prompt's class and score.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from nucseg.methods.cfr_sam.prompts import PromptLearner, select_points
from nucseg.methods.cfr_sam.refine import BGMR, HMFM
from nucseg.models.registry import register_model
from nucseg.models.sam import SamBackbone


class CFRSAM(nn.Module):
    """forward(images, task): "instances" (inference: instance maps), "prompts" (the prompt learner's outputs) or
    "masks" (`points` P×2 px with `image_index` P, or `boxes` P×4: per-prompt masks, for training)."""

    def __init__(self, in_channels: int = 3, num_classes: int = 1, prompt_encoder: str = "efficientnet_lite0",
                 prompt_encoder_weights: str | None = None, fpn_channels: int = 128, fpn_levels: int = 3,
                 anchor_stride: int = 8, prompt_hidden: int = 256, prompt_dropout: float = 0.1, regression_scale: float = 100.0,
                 prompt: str = "point",
                 sam: str = "litemedsam", sam_weights: str | None = "litemedsam", sam_chunk: int = 256,
                 sam_runtime: str = "auto", adapter: str = "mala", adapter_rank: int = 64, kernel_sizes: tuple[int, ...] = (3, 5, 7),
                 hmfm: str = "hmfm", hmfm_levels: tuple[int, ...] = (0, 1, 2), bgmr: bool = True, mcbe: bool = True,
                 bgff: bool = True, refine_channels: int = 32, edge_channels: int = 16, context_tokens: int = 0,
                 mask_window: int = 64, dedup_overlap: float = 0.5, share_projections: bool = True,
                 point_threshold: float = 0.5, point_min_distance: float = 3.0, max_prompts: int = 4096,
                 prompt_batch: int = 32):
        super().__init__()
        if prompt not in ("point", "box"):
            raise ValueError(f"unknown prompt '{prompt}' (known: point, box)")
        self.prompt = prompt
        self.prompt_learner = PromptLearner(prompt_encoder, prompt_encoder_weights, in_channels, num_classes,
                                            fpn_channels, fpn_levels, anchor_stride, prompt_hidden, prompt_dropout,
                                            boxes=prompt == "box", regression_scale=regression_scale)
        levels = tuple(int(i) for i in hmfm_levels) if hmfm != "none" else ()
        self.sam = SamBackbone(sam, sam_weights, frozen=True, prompt_parts=True, level_indices=levels,
                               chunk=sam_chunk, runtime=sam_runtime)
        self.sam.add_adapters(adapter, adapter_rank, tuple(kernel_sizes))
        grid = int(self.sam.prompt_encoder.image_embedding_size[0])
        if sam_chunk != 4 * grid:
            raise ValueError(f"sam_chunk must be 4 × SAM's embedding grid ({4 * grid} for '{sam}'), got {sam_chunk}")
        self.grid, self.chunk = grid, int(sam_chunk)
        dim = self.sam.embed_dim
        self.hmfm = HMFM(self.sam.level_channels(), dim, hmfm)
        decoder = self.sam.mask_decoder
        mask_channels = int(decoder.output_hypernetworks_mlps[0].layers[-1].out_features)
        self.bgmr = BGMR(dim, mask_channels, in_channels, refine_channels, edge_channels, mcbe, bgff) if bgmr else None
        self.context_tokens = int(context_tokens) if context_tokens else grid
        if not 1 <= self.context_tokens <= grid:
            raise ValueError(f"context_tokens must be 1..{grid} (SAM's grid), got {context_tokens}")
        self.mask_window = int(mask_window) if mask_window else 4 * self.context_tokens
        if self.mask_window % 4 or not 4 <= self.mask_window <= 4 * self.context_tokens:
            raise ValueError(f"mask_window must be a multiple of 4 up to the context's {4 * self.context_tokens} px, "
                             f"got {mask_window}")
        self.dedup_overlap = float(dedup_overlap)
        self.share_projections = bool(share_projections)
        self.point_threshold, self.point_min_distance = point_threshold, point_min_distance
        self.max_prompts, self.prompt_batch = max_prompts, prompt_batch

    # -- image-level features ---------------------------------------------------------------------------------------
    def _pad(self, images: torch.Tensor) -> torch.Tensor:
        """Pad to whole chunks (at least one), so every context window lies inside the maps."""
        h, w = images.shape[-2:]
        ph, pw = -h % self.chunk, -w % self.chunk
        if not (ph or pw):
            return images
        mode = "reflect" if min(h, w) > max(ph, pw) else "replicate"
        return F.pad(images, (0, pw, 0, ph), mode=mode)

    def image_features(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Padded images -> the fused embedding (stride 4) and, with BGMR, its semantic and boundary features
        (stride 1)."""
        enc = self.sam(images)
        out = {"fused": self.hmfm(enc["embedding"], enc["levels"])}
        if self.share_projections:
            out["first_layer"] = first_layer_maps(self.sam.mask_decoder.transformer, out["fused"])
        if self.bgmr is not None:
            out["semantic"], out["edges"] = self.bgmr.image_features(out["fused"], images)
        return out

    # -- per-prompt decoding ----------------------------------------------------------------------------------------
    def decode(self, feats: dict[str, torch.Tensor], image_index: torch.Tensor, points: torch.Tensor | None = None,
               boxes: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Masks of P prompts (points P×2 or boxes P×4 in image px, on image `image_index`). Returns {"coarse",
        "refined", "boundary"} logits P×1×m×m over each prompt's window, "origin" P×2 (x0, y0 of the window in image
        px) and "iou" P (SAM's IoU prediction)."""
        fused = feats["fused"]
        g, ct, m = self.grid, self.context_tokens, self.mask_window
        mt = m // 4
        ht, wt = fused.shape[-2:]
        centre = points if points is not None else (boxes[:, :2] + boxes[:, 2:]) / 2
        # context windows of ct×ct tokens around each prompt, and the mask window of mt×mt tokens inside them
        cx = (torch.round(centre[:, 0] / 4).long() - ct // 2).clamp(0, wt - ct)
        cy = (torch.round(centre[:, 1] / 4).long() - ct // 2).clamp(0, ht - ct)
        local = centre - torch.stack([cx, cy], 1).to(centre) * 4
        mx = (torch.round(local[:, 0] / 4).long() - mt // 2).clamp(0, ct - mt)
        my = (torch.round(local[:, 1] / 4).long() - mt // 2).clamp(0, ct - mt)
        context = torch.stack([fused[b, :, y : y + ct, x : x + ct] for b, x, y in
                               zip(image_index.tolist(), cx.tolist(), cy.tolist())])
        # a context smaller than SAM's grid is the centre of a g×g frame: positions (prompt and encoding) are the
        # frame's, so the decoder sees a crop of what it was trained on
        frame = (g - ct) // 2
        scale = self.sam.input_size / self.chunk
        pe = self.sam.prompt_encoder
        if points is not None:
            # SAM's coordinates index pixels (it adds 0.5 itself); ours are continuous (pixel i spans [i, i + 1))
            sparse, dense = pe(points=((local[:, None] + frame * 4) * scale - 0.5,
                                       torch.ones(len(local), 1, device=local.device)), boxes=None, masks=None)
        else:
            offset = (torch.stack([cx, cy], 1).to(boxes) * 4 - frame * 4).repeat(1, 2)
            sparse, dense = pe(points=None, boxes=(boxes - offset) * scale - 0.5, masks=None)
        dense = dense[..., frame : frame + ct, frame : frame + ct]
        dec = self.sam.mask_decoder
        tokens = torch.cat([dec.iou_token.weight, dec.mask_tokens.weight], 0)
        tokens = torch.cat([tokens[None].expand(len(sparse), -1, -1), sparse], 1)
        pos = pe.get_dense_pe()[..., frame : frame + ct, frame : frame + ct].expand(len(sparse), -1, -1, -1)
        if "first_layer" in feats:  # the first layer's image projections, cropped from the tile's
            crops = {k: torch.stack([v[b, :, y : y + ct, x : x + ct] for b, x, y in
                                     zip(image_index.tolist(), cx.tolist(), cy.tolist())])
                     for k, v in feats["first_layer"].items()}
            hs, src = two_way_shared(dec.transformer, context, dense[:1], pos[:1], tokens, crops)
        else:
            hs, src = dec.transformer(context + dense, pos, tokens)
        src = src.transpose(1, 2).reshape(len(sparse), -1, ct, ct)
        window = torch.stack([src[i, :, y : y + mt, x : x + mt] for i, (x, y) in
                              enumerate(zip(mx.tolist(), my.tolist()))])
        upscaled = dec.output_upscaling(window)  # P×C/8×m×m: per-pixel ops, so exactly the context's values here
        hyper = dec.output_hypernetworks_mlps[0](hs[:, 1])  # the single-mask output token
        mask_features = upscaled * hyper[:, :, None, None]
        out = {"coarse": mask_features.sum(1, keepdim=True), "iou": dec.iou_prediction_head(hs[:, 0])[:, 0],
               "origin": torch.stack([cx * 4 + mx * 4, cy * 4 + my * 4], 1)}
        if self.bgmr is not None:
            idx = image_index.tolist()
            ox, oy = out["origin"][:, 0].tolist(), out["origin"][:, 1].tolist()
            semantic = torch.stack([feats["semantic"][b, :, y : y + m, x : x + m] for b, x, y in zip(idx, ox, oy)])
            edges = torch.stack([feats["edges"][b, :, y : y + m, x : x + m] for b, x, y in zip(idx, ox, oy)])
            out["refined"], out["boundary"] = self.bgmr(semantic, mask_features, edges)
        else:
            out["refined"] = out["coarse"]
        return out

    # -- inference ----------------------------------------------------------------------------------------------------
    def prompts_of(self, images: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        """Per image: the selected prompts {"points", "classes", "scores"} (and "boxes" with box prompts)."""
        h, w = images.shape[-2:]
        ph, pw = -h % 32, -w % 32  # the CNN's stride
        padded = F.pad(images, (0, pw, 0, ph), mode="replicate") if ph or pw else images
        out = self.prompt_learner(padded)
        result = []
        for i in range(len(images)):
            pts, cls, score, index = select_points(out["points"][i].float(), out["logits"][i], h, w,
                                                   self.point_threshold, self.point_min_distance, self.max_prompts)
            item = {"points": pts, "classes": cls, "scores": score}
            if self.prompt == "box":
                sizes = out["sizes"][i, index].float().exp()
                item["boxes"] = torch.cat([pts - sizes / 2, pts + sizes / 2], 1)
            result.append(item)
        return result

    def instances(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Instance maps of a batch: "instance" (ids by decreasing prompt score), "class", "score", each N×1×H×W
        float (the form every nucseg output takes between the engine's stages; never blended). Masks are pasted in
        prompt-score order and de-duplicated (`MaskPaster`)."""
        n, _, h, w = images.shape
        prompts = self.prompts_of(images)
        feats = self.image_features(self._pad(images))
        paster = MaskPaster(n, h, w, images.device, self.dedup_overlap)
        for b, item in enumerate(prompts):
            count = len(item["points"])
            for start in range(0, count, self.prompt_batch):
                sl = slice(start, min(start + self.prompt_batch, count))
                index = torch.full((sl.stop - sl.start,), b, device=images.device, dtype=torch.long)
                if self.prompt == "box":
                    dec = self.decode(feats, index, boxes=item["boxes"][sl])
                else:
                    dec = self.decode(feats, index, points=item["points"][sl])
                logits = dec["refined"][:, 0].float()
                for j, (x0, y0) in enumerate(dec["origin"].tolist()):
                    k = start + j
                    paster.add(b, logits[j], x0, y0, item["classes"][k], item["scores"][k])
        ids, classes, scores = paster.ids, paster.classes, paster.scores
        return {"instance": ids[:, None], "class": classes[:, None], "score": scores[:, None]}

    def forward(self, images: torch.Tensor, task: str = "instances", points: torch.Tensor | None = None,
                image_index: torch.Tensor | None = None, boxes: torch.Tensor | None = None):
        if task == "prompts":
            return self.prompt_learner(images)
        if task == "masks":
            return self.decode(self.image_features(self._pad(images)), image_index, points, boxes)
        if task == "instances":
            return self.instances(images)
        raise ValueError(f"unknown task '{task}' (known: instances, prompts, masks)")


def _attend(attn: nn.Module, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """SAM's `Attention` from its input projections on: q, k, v already projected (B×N×internal)."""
    q, k, v = (attn._separate_heads(t, attn.num_heads) for t in (q, k, v))
    weights = torch.softmax((q @ k.permute(0, 1, 3, 2)) / math.sqrt(q.shape[-1]), dim=-1)
    return attn.out_proj(attn._recombine_heads(weights @ v))


def first_layer_maps(transformer: nn.Module, fused: torch.Tensor) -> dict[str, torch.Tensor]:
    """The projections of the mask decoder's first two-way layer that read the image tokens before any prompt
    touches them, over a whole tile's fused embedding (N×D×H×W -> N×I×H×W each, weights only: the bias and the
    constant part of their inputs are added per window by `two_way_shared`)."""
    layer = transformer.layers[0]
    t2i, i2t = layer.cross_attn_token_to_image, layer.cross_attn_image_to_token
    x = fused.permute(0, 2, 3, 1)
    maps = {"k": F.linear(x, t2i.k_proj.weight), "v": F.linear(x, t2i.v_proj.weight),
            "q": F.linear(x, i2t.q_proj.weight)}
    return {k: v.permute(0, 3, 1, 2) for k, v in maps.items()}


def two_way_shared(transformer: nn.Module, context: torch.Tensor, dense: torch.Tensor, pe: torch.Tensor,
                   tokens: torch.Tensor, crops: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """SAM's `TwoWayTransformer.forward(context + dense, pe, tokens)` for P prompt windows (context P×D×t×t, each
    window's fused embedding; dense and pe 1×D×t×t, the same for every window), with the first layer's image-side
    projections cut from the tile's (`crops`: `first_layer_maps` cropped to the windows) instead of computed per
    window. Those projections are linear in the window's tokens and the dense prompt embedding is one learned vector
    for point and box prompts (no mask prompts), so W(crop + dense + pe) + b = crop(W·fused) + (W(dense + pe) + b):
    the same numbers (tests/methods/test_cfr_sam.py), three projections of t² tokens fewer per prompt. The layers
    after the first update the image tokens per prompt and run as SAM runs them."""
    def flat(x: torch.Tensor) -> torch.Tensor:  # P×C×t×t -> P×t²×C
        return x.flatten(2).permute(0, 2, 1)

    keys, key_pe, dense_t = flat(context + dense), flat(pe), flat(dense)
    layer = transformer.layers[0]
    t2i, i2t = layer.cross_attn_token_to_image, layer.cross_attn_image_to_token
    queries, query_pe = tokens, tokens
    if layer.skip_first_layer_pe:
        queries = layer.self_attn(q=queries, k=queries, v=queries)
    else:
        q = queries + query_pe
        queries = queries + layer.self_attn(q=q, k=q, v=queries)
    queries = layer.norm1(queries)
    k = flat(crops["k"]) + t2i.k_proj(dense_t + key_pe)
    v = flat(crops["v"]) + t2i.v_proj(dense_t)
    queries = layer.norm2(queries + _attend(t2i, t2i.q_proj(queries + query_pe), k, v))
    queries = layer.norm3(queries + layer.mlp(queries))
    q_tokens = queries + query_pe
    q_image = flat(crops["q"]) + i2t.q_proj(dense_t + key_pe)
    keys = layer.norm4(keys + _attend(i2t, q_image, i2t.k_proj(q_tokens), i2t.v_proj(queries)))
    for layer in transformer.layers[1:]:
        queries, keys = layer(queries=queries, keys=keys, query_pe=query_pe, key_pe=key_pe)
    out = transformer.final_attn_token_to_image(q=queries + query_pe, k=keys + key_pe, v=keys)
    return transformer.norm_final_attn(queries + out), keys

class MaskPaster:
    """Pastes per-prompt mask logits into instance maps, best-scored prompt first.

    A pixel goes to the mask with the highest positive logit there. De-duplication: a mask whose pixels one
    already-pasted (better-scored) instance holds for at least `dedup_overlap` of its area is dropped, so two prompts
    on one nucleus give one instance instead of splitting it between them (0 or ≥ 1 keeps every mask). Choice made
    here, where the paper decodes every prompt and says nothing of duplicates: compare against the instance a mask
    overlaps most, by the fraction of the new mask it covers, since the pasted instance may already have lost pixels
    to a neighbour."""

    def __init__(self, n: int, height: int, width: int, device, dedup_overlap: float = 0.5):
        self.ids = torch.zeros(n, height, width, device=device)
        self.classes, self.scores = torch.zeros_like(self.ids), torch.zeros_like(self.ids)
        self.best = torch.full_like(self.ids, -float("inf"))
        self.dedup = float(dedup_overlap)
        self.count = 0
        self.dropped = 0

    def add(self, b: int, logits: torch.Tensor, x0: int, y0: int, cls, score) -> bool:
        """Paste one m×m window of logits at (x0, y0) of image b. Returns whether it was kept."""
        h, w = self.ids.shape[-2:]
        y1, x1 = min(y0 + logits.shape[-2], h), min(x0 + logits.shape[-1], w)
        if y1 <= y0 or x1 <= x0:
            return False
        lg = logits[: y1 - y0, : x1 - x0]
        region = (b, slice(y0, y1), slice(x0, x1))
        mask = lg > 0
        area = int(mask.sum())
        if area == 0:
            return False
        if 0 < self.dedup < 1:
            held = self.ids[region][mask].long()
            held = held[held > 0]
            if held.numel() and int(torch.bincount(held).max()) >= self.dedup * area:
                self.dropped += 1
                return False
        self.count += 1
        take = mask & (lg > self.best[region])
        self.best[region] = torch.where(take, lg, self.best[region])
        self.ids[region] = torch.where(take, float(self.count), self.ids[region])
        self.classes[region] = torch.where(take, torch.as_tensor(cls, dtype=torch.float32), self.classes[region])
        self.scores[region] = torch.where(take, torch.as_tensor(score, dtype=torch.float32), self.scores[region])
        return True


@register_model("cfr-sam", "CFR-SAM: prompt learner + SAM with MALA adapters, HMFM and BGMR (Sec. 3)")
def cfr_sam(**kwargs) -> CFRSAM:
    return CFRSAM(**kwargs)
