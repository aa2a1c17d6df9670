"""CFR-SAM (Cooperative Fine-grained Refinement of SAM) as a Method, registered `cfr-sam`.

Two training stages, as the paper trains them (Sec. 4.3: point selection is not differentiable):
    prompts   the prompt learner alone (eq. 2): Hungarian-matched anchors, classes, positions, foreground mask
    masks     SAM with its frozen encoder: MALA adapters, HMFM, prompt encoder, mask decoder and BGMR train (eqs.
              15-16) on up to `train_prompts` ground-truth nuclei per image, prompted at their centroids
`train.stage_steps: {prompts: N, masks: M}` sets their lengths; validation (whole images, the whole pipeline) runs in
the second stage.

Loss (eqs. 15-16): L_mask(coarse) + L_mask(refined) + `weight_boundary` · L_boundary, with L_mask = `weight_focal` ·
focal + `weight_dice` · dice + `weight_iou` · MSE(predicted IoU, IoU). Values the paper elides, chosen here: focal
20 : dice 1 (SAM's ratio, the paper's "overall loss weight 20"), IoU 1, boundary 1; the boundary target is the
nucleus' 3×3 morphological gradient, its loss a binary cross-entropy weighted by the inverse boundary frequency
("weighted boundary loss"); SAM's IoU prediction is supervised with the final (refined) mask's IoU, the score an
instance is ranked by.

Classes: each instance takes its prompt's class (Sec. 3.2); with `num_classes` > 1 the training sets' type maps
supply them (sets without types train the nucleus/background decision only).

Inference returns instance maps (`CFRSAM.instances`), never blended: the engine's blocks (large images, slides) keep
each instance in the block whose core holds its centroid, as for every method.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from nucseg.labels import bounding_boxes, centroids, remove_small_instances
from nucseg.methods.base import Method, Stage, register_method
from nucseg.methods.cfr_sam.model import CFRSAM
from nucseg.methods.cfr_sam.prompts import prompt_detection, prompt_learner_loss
from nucseg.models.sam import _is_adapter
from nucseg.structures import Instances


@dataclass
class CFRSAMConfig:
    in_channels: int = 3
    num_classes: int = 1  # nucleus classes (types 1..K); 1: nucleus vs background
    # prompt learner (Sec. 3.3): the paper's ConvNeXt-S (weights from a path) and FPN
    prompt_encoder: str = "convnext_small"
    prompt_encoder_weights: str | None = None
    fpn_channels: int = 256
    fpn_levels: int = 3
    anchor_stride: int = 8
    prompt_hidden: int = 256
    prompt_dropout: float = 0.1
    prompt: str = "point"  # point | box (Table 11)
    # SAM: litemedsam (packaged weights) | vit_b / vit_l / vit_h (official weights from a path) | vit_test
    sam: str = "litemedsam"
    sam_weights: str | None = "litemedsam"
    sam_chunk: int = 256
    # the encoder's runtime at inference (nucseg.models.sam): auto keeps an encoder with trainable adapters on torch
    # (BatchNorm folded, channels_last); openvino exports it (again whenever the adapters' weights change)
    sam_runtime: str = "auto"
    adapter: str = "mala"  # mala | mala_static | adapter | lora | none (Tables 7-8)
    adapter_rank: int = 64
    kernel_sizes: list[int] = field(default_factory=lambda: [3, 5, 7])
    hmfm: str = "hmfm"  # hmfm | add | concat | average | none (Table 7)
    hmfm_levels: list[int] = field(default_factory=lambda: [0, 1, 2])  # TinyViT layers; ViT-B: e.g. [2, 5, 8]
    train_decoder: bool = True  # SAM's prompt encoder and mask decoder train in stage 2 (the paper's "head")
    bgmr: bool = True
    mcbe: bool = True
    bgff: bool = True
    refine_channels: int = 32
    edge_channels: int = 16
    context_tokens: int = 0  # 0: SAM's whole grid (64 tokens, 256 px) around each prompt
    mask_window: int = 0  # px decoded around each prompt; 0: the whole context (the paper)
    # a mask one better-scored instance already holds for this fraction of its pixels is a duplicate, dropped
    # (model.MaskPaster; the paper is silent on duplicates); 0 keeps every mask
    dedup_overlap: float = 0.5
    # the mask decoder's first-layer image projections computed once per tile and cropped per prompt, instead of
    # once per prompt window (model.two_way_shared: the same numbers)
    share_projections: bool = True
    # stage 1 loss (eq. 2)
    alpha: float = 0.1
    weight_negative: float = 0.4  # λ1: the paper's classification coefficient (Sec. 4.3, PanNuke; P2PNet: 0.5)
    weight_regression: float = 2e-4  # λ2 on squared pixels, P2PNet's (with its ×100 regression output)
    regression_scale: float = 100.0  # the regression head's output × this is the offset in px (P2PNet's 100)
    weight_foreground: float = 1.0
    weight_size: float = 0.1
    # stage 2 loss (eqs. 15-16)
    train_prompts: int = 25  # nuclei sampled per image (Table 10)
    # px of uniform noise on training prompts: at inference the prompt learner's points miss centroids by a few px,
    # so exact centroids in training would teach a prompt position never seen after (the paper is silent)
    prompt_jitter: float = 2.0
    weight_focal: float = 20.0
    weight_dice: float = 1.0
    weight_iou: float = 1.0
    weight_boundary: float = 1.0
    # inference
    point_threshold: float = 0.5
    point_min_distance: float = 3.0
    max_prompts: int = 4096
    prompt_batch: int = 32
    min_area: int = 12


def _image_nuclei(labels: np.ndarray, types: np.ndarray) -> dict[str, np.ndarray]:
    """Centroids (x, y, continuous px), classes (0 = unknown), ids and log box sizes of one label map."""
    ids, rc = centroids(labels)
    cls = np.zeros(int(labels.max()) + 1, np.int64)
    cls[labels.ravel()] = types.ravel()
    boxes = bounding_boxes(labels)
    sizes = np.array([[boxes[i][3] - boxes[i][1], boxes[i][2] - boxes[i][0]] for i in ids.tolist()], np.float32)
    return {"ids": ids, "points": (rc[:, ::-1] + 0.5).astype(np.float32), "classes": cls[ids],
            "sizes": np.log(np.maximum(sizes.reshape(-1, 2), 1.0))}


def sigmoid_focal(logits: torch.Tensor, target: torch.Tensor, gamma: float = 2.0, alpha: float = 0.25) -> torch.Tensor:
    """SAM's focal loss, per mask (mean over pixels)."""
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    p = torch.sigmoid(logits)
    pt = p * target + (1 - p) * (1 - target)
    weight = alpha * target + (1 - alpha) * (1 - target)
    return (weight * (1 - pt) ** gamma * bce).flatten(1).mean(1)


def dice_per_mask(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    p = torch.sigmoid(logits).flatten(1)
    t = target.flatten(1)
    return 1 - (2 * (p * t).sum(1) + 1) / (p.sum(1) + t.sum(1) + 1)


def mask_iou(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    pred = (logits > 0).float().flatten(1)
    t = target.flatten(1)
    inter = (pred * t).sum(1)
    return inter / (pred.sum(1) + t.sum(1) - inter).clamp(min=1)


def morphological_gradient(mask: torch.Tensor) -> torch.Tensor:
    """3×3 dilation minus erosion of P×1×m×m binary masks: a 2 px band on the outline."""
    dilated = F.max_pool2d(mask, 3, 1, 1)
    eroded = -F.max_pool2d(-mask, 3, 1, 1)
    return dilated - eroded


@register_method
class CFRSAMMethod(Method):
    name = "cfr-sam"
    config_class = CFRSAMConfig
    optimizer_names = ("prompts", "masks")
    targets_use_classes = True
    blendable = False
    tunable = {"min_area": [0, 8, 12, 20, 30]}
    inference_options = ("sam_runtime", "point_threshold", "point_min_distance", "max_prompts", "prompt_batch",
                         "dedup_overlap", "share_projections")
    defaults_before = {"regression_scale": 1.0}  # models trained before the P2PNet scaling regressed raw pixels

    def build_model(self) -> nn.Module:
        c = self.config
        return CFRSAM(
            in_channels=c.in_channels, num_classes=c.num_classes, prompt_encoder=c.prompt_encoder,
            prompt_encoder_weights=c.prompt_encoder_weights, fpn_channels=c.fpn_channels, fpn_levels=c.fpn_levels,
            anchor_stride=c.anchor_stride, prompt_hidden=c.prompt_hidden, prompt_dropout=c.prompt_dropout,
            regression_scale=c.regression_scale, dedup_overlap=c.dedup_overlap,
            share_projections=c.share_projections,
            prompt=c.prompt, sam=c.sam, sam_weights=c.sam_weights, sam_chunk=c.sam_chunk, sam_runtime=c.sam_runtime,
            adapter=c.adapter,
            adapter_rank=c.adapter_rank, kernel_sizes=tuple(c.kernel_sizes), hmfm=c.hmfm,
            hmfm_levels=tuple(c.hmfm_levels), bgmr=c.bgmr, mcbe=c.mcbe, bgff=c.bgff,
            refine_channels=c.refine_channels, edge_channels=c.edge_channels, context_tokens=c.context_tokens,
            mask_window=c.mask_window, point_threshold=c.point_threshold, point_min_distance=c.point_min_distance,
            max_prompts=c.max_prompts, prompt_batch=c.prompt_batch)

    def stages(self) -> list[Stage]:
        return [Stage("prompts", ("prompts",), validate=False), Stage("masks", ("masks",))]

    def optimizer_groups(self, model: nn.Module) -> dict[str, list[nn.Parameter]]:
        sam_parts = [p for n, p in model.sam.named_parameters() if _is_adapter(n) or (
            self.config.train_decoder and n.startswith(("prompt_encoder.", "mask_decoder.")))]
        refine = [p for part in (model.hmfm, model.bgmr) if part is not None for p in part.parameters()]
        return {"prompts": list(model.prompt_learner.parameters()), "masks": sam_parts + refine}

    def targets(self, labels: np.ndarray, classes: dict[int, int] | None = None) -> dict[str, np.ndarray]:
        types = np.zeros(labels.shape, np.int16)
        if classes and self.config.num_classes > 1:
            lookup = np.zeros(int(labels.max()) + 1, np.int16)
            for i, c in classes.items():
                if 0 < i < lookup.size and 0 < c <= self.config.num_classes:
                    lookup[i] = c
            types = lookup[labels]
        return {"labels": labels.astype(np.int32), "types": types}

    # -- training ---------------------------------------------------------------------------------------------------
    def training_step(self, model, images, batch, stage):
        labels = batch["labels"].cpu().numpy()
        types = batch["types"].cpu().numpy()
        nuclei = [_image_nuclei(lab, typ) for lab, typ in zip(labels, types)]
        if stage == "prompts":
            c = self.config
            yield "prompts", prompt_learner_loss(model(images, "prompts"), nuclei, batch["labels"] > 0, c.alpha,
                                                 c.weight_negative, c.weight_regression, c.weight_foreground,
                                                 c.weight_size)
            return
        yield "masks", self.mask_loss(model, images, batch["labels"], nuclei)

    def mask_loss(self, model, images: torch.Tensor, labels: torch.Tensor, nuclei: list[dict]) -> dict:
        c = self.config
        index, points, boxes, ids = [], [], [], []
        for b, item in enumerate(nuclei):
            chosen = torch.randperm(len(item["ids"]))[: c.train_prompts].numpy()
            index += [b] * len(chosen)
            points.append(item["points"][chosen])
            size = np.exp(item["sizes"][chosen])
            boxes.append(np.concatenate([item["points"][chosen] - size / 2, item["points"][chosen] + size / 2], 1))
            ids.append(item["ids"][chosen])
        if not index:  # no nucleus in the batch: a zero loss that still touches the trained parameters
            return {"total": sum(p.sum() * 0 for p in self.optimizer_groups(_unwrap(model))["masks"])}
        dev = images.device
        points_t = torch.as_tensor(np.concatenate(points), device=dev)
        if c.prompt_jitter > 0:
            points_t = points_t + (torch.rand_like(points_t) * 2 - 1) * c.prompt_jitter
        index_t = torch.as_tensor(index, device=dev)
        if c.prompt == "box":
            out = model(images, "masks", boxes=torch.as_tensor(np.concatenate(boxes), device=dev),
                        image_index=index_t)
        else:
            out = model(images, "masks", points=points_t, image_index=index_t)
        target = _window_targets(labels, index_t, torch.as_tensor(np.concatenate(ids), device=dev), out["origin"],
                                 out["coarse"].shape[-1])
        losses = {}
        final = out["refined"].float()
        for name in ("coarse", "refined") if "boundary" in out else ("coarse",):
            logits = out[name].float()
            losses[f"focal_{name}"] = c.weight_focal * sigmoid_focal(logits, target).mean()
            losses[f"dice_{name}"] = c.weight_dice * dice_per_mask(logits, target).mean()
        losses["iou"] = c.weight_iou * F.mse_loss(out["iou"].float(), mask_iou(final.detach(), target))
        if "boundary" in out and c.weight_boundary > 0:
            edge = morphological_gradient(target)
            pos_weight = ((edge.numel() - edge.sum()) / edge.sum().clamp(min=1)).clamp(max=50)
            losses["boundary"] = c.weight_boundary * F.binary_cross_entropy_with_logits(
                out["boundary"].float(), edge, pos_weight=pos_weight)
        losses["total"] = sum(losses.values())
        losses["mask_iou"] = mask_iou(final.detach(), target).mean()
        return losses

    def stage_validation(self, model, stage, val_sets, device, input_scale="imagenet") -> dict[str, float]:
        """Stage 1: prompt recall, precision and duplicates (`prompts.prompt_detection`) per validation set and over
        all images, from the prompts inference would give (`CFRSAM.prompts_of`)."""
        if stage != "prompts":
            return {}
        out: dict[str, float] = {}
        rows = []
        for name, samples in val_sets.items():
            set_rows = [self.image_diagnostics(model, s.image, s.instances, device, input_scale) for s in samples]
            for k in set_rows[0] if set_rows else ():
                out[f"{name}/{k}"] = float(np.nanmean([r[k] for r in set_rows]))
            rows += set_rows
        for k in rows[0] if rows else ():
            out[k] = float(np.nanmean([r[k] for r in rows]))
        return out

    def image_diagnostics(self, model, image, labels, device, input_scale="imagenet") -> dict[str, float]:
        """Prompt recall, precision, duplicates and prompts per nucleus of one image (`prompts.prompt_detection`),
        from the prompts inference gives on the whole image."""
        from nucseg.data.prepare import to_channels, to_uint8
        from nucseg.engine.infer import normalize

        array = to_channels(to_uint8(image), self.config.in_channels)
        tensor = torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1)))[None].to(device)
        with torch.no_grad():
            points = _unwrap(model).prompts_of(normalize(tensor, input_scale))[0]["points"]
        return prompt_detection(points.cpu().numpy(), labels)

    # -- inference --------------------------------------------------------------------------------------------------
    def predict_dense(self, model: nn.Module, images: torch.Tensor) -> dict[str, torch.Tensor]:
        return model(images, "instances")

    def postprocess(self, dense: dict[str, np.ndarray]) -> Instances:
        labels = np.rint(dense["instance"][0]).astype(np.int32)
        labels = remove_small_instances(labels, self.config.min_area)
        ids, first = np.unique(labels.ravel(), return_index=True)
        keep = ids > 0
        ids, first = ids[keep], first[keep]
        scores = {int(i): float(dense["score"][0].ravel()[f]) for i, f in zip(ids, first)}
        classes = {}
        if self.config.num_classes > 1:
            classes = {int(i): int(round(float(dense["class"][0].ravel()[f]))) for i, f in zip(ids, first)}
        return Instances(labels, classes, scores)


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if hasattr(model, "module") else model


def _window_targets(labels: torch.Tensor, index: torch.Tensor, ids: torch.Tensor, origin: torch.Tensor,
                    size: int) -> torch.Tensor:
    """P×1×m×m: nucleus `ids[p]` of image `index[p]` inside the window at `origin[p]` (x0, y0); 0 beyond the
    image."""
    h, w = labels.shape[-2:]
    out = torch.zeros(len(ids), 1, size, size, device=labels.device)
    for p, (b, i, (x0, y0)) in enumerate(zip(index.tolist(), ids.tolist(), origin.tolist())):
        y1, x1 = min(y0 + size, h), min(x0 + size, w)
        out[p, 0, : y1 - y0, : x1 - x0] = (labels[b, y0:y1, x0:x1] == i).float()
    return out
