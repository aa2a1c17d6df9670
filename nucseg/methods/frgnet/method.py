"""FrGNet (Ling & Xiong 2025) as a Method: a contour proposal network (CPN, Upschulte et al. 2022) with Fourier
guidance (guide head + GARU), guide-based instance-level contrastive learning (GILC) and guide filtering.

Representation (the CPN's): at every pixel the network scores "inside a nucleus" and regresses that nucleus'
contour as elliptic Fourier descriptors (`efd.py`, order `order`), whose constant terms (a0, c0) are the location
offset from the pixel to the contour's centre. A dense refinement field moves each contour point, sampled at the
point, `refine_iterations` times by at most `refine_margin` px per step.

Loss (eq. 1, unweighted sum of three parts): instance + guide BCE (eq. 2) + InfoNCE (eq. 3, τ = 0.1). The instance
part is the CPN's, with the CPN's weights: score BCE, its mean over nucleus pixels plus its mean over background
pixels (1) + location L1 (1) + descriptor L1 with per-harmonic weights
5 → 1 (1) + contour-point L1 (3) + refined-contour L1 (1), on up to `proposals` sampled nucleus pixels per image.
Refinement moves a detached contour, so its loss trains the refinement head only, and training draws 1 to
`refine_iterations` steps per batch (both the CPN's). The CPN compares contours with the ground-truth contour; ours
with the target descriptors decoded at the same points (order 8 reproduces a nucleus mask at IoU ≈ 0.98,
tests/methods/test_frgnet.py), so both sides share the start point and parametrisation. Guide target: clip(Fourier
guide + annotated mask, 0, 1), soft, or the Fourier guide binarised then joined with the mask (hard).

GILC details the paper leaves open, chosen here: positives are pairs of stride-2 positions inside the target guide
(≥ 0.5), negatives the positions outside it; `contrast_samples` of each per image; sim() is the dot product (the
paper's; `similarity: cosine` normalises first).

Inference (Sec. 3.6): proposals at pixels with score > `score_threshold` (every `proposal_stride` px), contours
decoded and refined, box non-maximum suppression at `nms_threshold`, contours filled in score order (the strongest
on top), then every instance whose maximum predicted guide is below `guide_threshold` is dropped.

Switches (Tables 3-4): `guide: soft | hard | none`, `garu`, `gilc`; `weight_*` = 0 turns a loss term off (and
leaves every gradient as if the term were absent: tests/methods/test_frgnet.py).
Partial labels (`data.keep_fraction`): unannotated nuclei and a 2 px rim (batch["valid"] = 0) are left out of every
term: the score and guide losses, proposal sampling and GILC's positives and negatives. The guide target still marks
them through the Fourier guide, but that target is not taught there; the guide head learns nuclei from the
annotated ones and the Fourier prior elsewhere.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from nucseg.methods.base import Method, register_method
from nucseg.methods.frgnet.efd import coefficient_count, decode_torch, descriptor_maps
from nucseg.methods.frgnet.inference import FrGNetConfig, FrGNetInference, box_nms, refine_numpy  # noqa: F401
from nucseg.methods.frgnet.model import FrGNetNet


def info_nce(anchors: torch.Tensor, samples: torch.Tensor, positive: torch.Tensor, temperature: float,
             exclude: torch.Tensor | None = None, similarity: str = "dot") -> torch.Tensor:
    """Eq. 3: mean over anchors i of -log exp(sim(z_i, z_p(i))/τ) / Σ_j exp(sim(z_i, z_j)/τ), j over `samples`
    (which hold each anchor's positive, index `positive[i]`); `exclude[i]` (the anchor itself, when it is among the
    samples) is left out of its sum. `similarity`: "dot" (the paper's) or "cosine" (dot of L2-normalised vectors)."""
    if similarity == "cosine":
        anchors, samples = F.normalize(anchors, dim=-1), F.normalize(samples, dim=-1)
    elif similarity != "dot":
        raise ValueError(f"similarity must be dot or cosine, not '{similarity}'")
    logits = anchors @ samples.T / temperature
    if exclude is not None:
        logits = logits.index_put((torch.arange(len(anchors), device=logits.device), exclude),
                                  torch.tensor(float("-inf"), device=logits.device))
    return F.cross_entropy(logits, positive)


def order_weighting(order: int, high: float = 5.0, low: float = 1.0) -> torch.Tensor:
    """The CPN's per-harmonic weights on the descriptor loss: `high` for the first harmonic falling quadratically to
    `low` for the last (the coarse shape matters most)."""
    x = torch.arange(order, dtype=torch.float32) / max(order - 1, 1)
    return low + (high - low) * (1 - x) ** 2


def sample_at_pixels(lowres: torch.Tensor, xs: torch.Tensor, ys: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """C×h×w map sampled at full-resolution pixels (xs, ys) of an H×W image -> P×C: exactly what bilinear
    `F.interpolate(align_corners=False)` to H×W then indexing gives, without the full-resolution map."""
    h, w = size
    grid = torch.stack([(xs.float() + 0.5) / w * 2 - 1, (ys.float() + 0.5) / h * 2 - 1], -1)
    out = F.grid_sample(lowres[None], grid[None, None], mode="bilinear", padding_mode="border", align_corners=False)
    return out[0, :, 0].T


def sample_grid(field_map: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Bilinear samples of a 2×H×W field at P×Q×2 (x, y) pixel positions -> P×Q×2."""
    h, w = field_map.shape[-2:]
    grid = torch.stack([points[..., 0] / max(w - 1, 1), points[..., 1] / max(h - 1, 1)], -1) * 2 - 1
    # border: outside the map the edge value, as at inference (refine_numpy) and as the CPN's clamped points
    return F.grid_sample(field_map[None], grid[None], padding_mode="border", align_corners=True)[0].permute(1, 2, 0)


@register_method
class FrGNetMethod(FrGNetInference, Method):
    partial_labels = True
    targets_use_image = True

    def build_model(self) -> nn.Module:
        c = self.config
        return FrGNetNet(c.encoder, c.encoder_weights, c.in_channels, tuple(c.decoder_channels),
                         coefficient_count(c.order), self.use_guide, c.garu, c.gilc, c.embedding_dim,
                         c.refine_margin, c.head_kernel, c.head_dropout, c.detach_guide, c.garu_features,
                         c.heads, c.garu_form)

    # --- targets ---------------------------------------------------------------------------------------------

    def _guide(self, image: np.ndarray | None, mask: np.ndarray) -> np.ndarray:
        from nucseg.targets.fourier import guide_target

        c = self.config
        if image is None:
            return mask.astype(np.float32)
        return guide_target(image, mask, c.guide, c.guide_radius, c.guide_polarity, c.hard_threshold)

    def targets(self, labels: np.ndarray, classes: dict[int, int] | None = None,
                image: np.ndarray | None = None) -> dict[str, np.ndarray]:
        out = {"foreground": (labels > 0).astype(np.float32), "fourier": descriptor_maps(labels, self.config.order)}
        if self.use_guide or self.config.gilc:
            out["guide"] = self._guide(image, labels > 0) if self.use_guide else (labels > 0).astype(np.float32)
        return out

    def foreground_targets(self, mask: np.ndarray, image: np.ndarray | None = None) -> dict[str, np.ndarray]:
        # masks cannot give contours: the score, guide and contrast terms learn from them, proposals do not
        out = {"foreground": mask.astype(np.float32),
               "fourier": np.zeros((coefficient_count(self.config.order), *mask.shape), np.float32)}
        if self.use_guide or self.config.gilc:
            out["guide"] = self._guide(image, mask) if self.use_guide else mask.astype(np.float32)
        return out

    # --- loss --------------------------------------------------------------------------------------------------

    def loss(self, outputs: dict[str, torch.Tensor], batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        # fp32 throughout: under bf16 autocast the dot-product logits (τ = 0.1) and the contour decoding would be
        # coarsely rounded (and index_put would mix dtypes)
        with torch.autocast(outputs["score"].device.type, enabled=False):
            return self._loss(outputs, batch)

    def _loss(self, outputs: dict[str, torch.Tensor], batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        c = self.config
        fg = batch["foreground"].float()
        n = fg.shape[0]
        size = tuple(fg.shape[-2:])
        # 0 on unannotated nuclei and their rim (partial labels): no term learns anything there
        valid = batch.get("valid", torch.ones_like(fg)).float()
        # the CPN's score loss: the mean over nucleus pixels plus the mean over background pixels (class-balanced)
        score = F.binary_cross_entropy_with_logits(outputs["score"][:, 0].float(), fg, reduction="none")
        inside, outside = valid * fg, valid * (1 - fg)
        score = (score * inside).sum() / inside.sum().clamp(min=1) + (score * outside).sum() / outside.sum().clamp(min=1)
        labelled = batch.get("labelled", torch.ones(n, device=fg.device)) > 0
        gen = torch.Generator(device="cpu").manual_seed(int(fg.sum().item()) % (2**31))  # fixed per batch
        zero = outputs["score"].sum() * 0.0
        location = fourier = contour = refine = zero
        harmonic_weights = (order_weighting(c.order) if c.order_weights else torch.ones(c.order)).to(fg.device)
        harmonic_weights = harmonic_weights.repeat_interleave(4)
        # the CPN draws how many refinement steps to train, 1..refine_iterations, once per batch
        steps = int(torch.randint(1, c.refine_iterations + 1, (), generator=gen)) if c.refine_iterations else 0
        terms = []
        for b in range(n):
            if not labelled[b]:
                continue
            ys, xs = torch.nonzero((fg[b] > 0) & (valid[b] > 0), as_tuple=True)
            if ys.numel() == 0:
                continue
            pick = torch.randperm(ys.numel(), generator=gen)[: c.proposals].to(ys.device)
            ys, xs = ys[pick], xs[pick]
            shift = torch.stack([xs, ys], 1).float()
            pred = sample_at_pixels(outputs["fourier"][b].float(), xs, ys, size)
            target = batch["fourier"][b, :, ys, xs].T.float()
            location_b = (pred[:, :2] - target[:, :2]).abs().mean()
            fourier_b = ((pred[:, 2:] - target[:, 2:]).abs() * harmonic_weights).mean()
            p_pts = decode_torch(torch.cat([pred[:, :2] + shift, pred[:, 2:]], 1), c.contour_points)
            t_pts = decode_torch(torch.cat([target[:, :2] + shift, target[:, 2:]], 1), c.contour_points)
            # refinement moves detached contours (the CPN's): its loss trains the refinement head alone
            r_pts = p_pts.detach()
            for _ in range(steps):
                r_pts = r_pts.detach() + sample_grid(outputs["refine"][b].float(), r_pts.detach())
            refine_b = (r_pts - t_pts).abs().mean() if steps else zero
            terms.append((location_b, fourier_b, (p_pts - t_pts).abs().mean(), refine_b))
        if terms:
            location, fourier, contour, refine = (torch.stack(t).mean() for t in zip(*terms))
        out = {"score": score, "location": location, "fourier": fourier, "contour": contour, "refine": refine}
        total = c.weight_score * score + c.weight_location * location + c.weight_fourier * fourier \
            + c.weight_contour * contour + c.weight_refine * refine
        if self.use_guide:
            guide = F.binary_cross_entropy_with_logits(outputs["guide"][:, 0].float(), batch["guide"].float(),
                                                       reduction="none")
            out["guide"] = (guide * valid).sum() / valid.sum().clamp(min=1)
            total = total + c.weight_guide * out["guide"]
        if c.gilc and "embedding" in outputs:
            out["contrastive"] = self._contrastive(outputs["embedding"].float(), batch["guide"].float(), valid, gen)
            total = total + c.weight_contrastive * out["contrastive"]
        out["total"] = total
        return out

    def contrast_pairs(self, guide: torch.Tensor, valid: torch.Tensor, size: tuple[int, int],
                       gen: torch.Generator) -> list[tuple[torch.Tensor, torch.Tensor] | None]:
        """GILC's samples per image, as flat indices into the embedding grid (`size`): (nuclei, background) by the
        guide target resized to the grid (≥ 0.5 a nucleus), `contrast_samples` of each; only positions wholly
        clear of unannotated nuclei take part (partial labels); None for an image with too few."""
        c = self.config
        g = F.adaptive_avg_pool2d(guide[:, None], size)[:, 0].flatten(1)
        clear = (-F.adaptive_max_pool2d(-valid[:, None], size))[:, 0].flatten(1) > 0  # min over each cell
        pairs = []
        for b in range(guide.shape[0]):
            pos = torch.nonzero((g[b] >= 0.5) & clear[b])[:, 0]
            neg = torch.nonzero((g[b] < 0.5) & clear[b])[:, 0]
            if pos.numel() < 2 or neg.numel() < 1:
                pairs.append(None)
                continue
            pos = pos[torch.randperm(pos.numel(), generator=gen)[: c.contrast_samples].to(pos.device)]
            neg = neg[torch.randperm(neg.numel(), generator=gen)[: c.contrast_samples].to(neg.device)]
            pairs.append((pos, neg))
        return pairs

    def _contrastive(self, embedding: torch.Tensor, guide: torch.Tensor, valid: torch.Tensor,
                     gen: torch.Generator) -> torch.Tensor:
        """GILC: nuclei attract each other and repel the background (eq. 3)."""
        c = self.config
        losses = []
        for b, pair in enumerate(self.contrast_pairs(guide, valid, tuple(embedding.shape[-2:]), gen)):
            if pair is None:
                continue
            pos, neg = pair
            z = embedding[b].flatten(1).T  # positions × P
            k = pos.numel()
            idx = torch.arange(k, device=pos.device)
            # anchors: the sampled nuclei; each one's positive is the next nucleus; samples: nuclei + background
            losses.append(info_nce(z[pos], z[torch.cat([pos, neg])], (idx + 1) % k, c.temperature, exclude=idx,
                                   similarity=c.similarity))
        return torch.stack(losses).mean() if losses else embedding.sum() * 0.0

    # --- inference ---------------------------------------------------------------------------------------------

    def predict_dense(self, model: nn.Module, images: torch.Tensor) -> dict[str, torch.Tensor]:
        out = model(images)
        fourier = F.interpolate(out["fourier"].float(), size=images.shape[-2:], mode="bilinear", align_corners=False)
        dense = {"score": torch.sigmoid(out["score"].float()), "fourier": fourier, "refine": out["refine"].float()}
        if "guide" in out:
            dense["guide"] = torch.sigmoid(out["guide"].float())
        return dense

    def unflip(self, name: str, value: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor | None:
        """The refinement field is a vector field: flipped back, with dx negated for a left-right flip and dy for an
        up-down one. Descriptors of a mirrored contour start elsewhere and run the other way, so their average with
        the unflipped pass's would mix two parametrisations of one shape (a shrunken contour): they come from the
        unflipped pass alone."""
        if name == "fourier":
            return None
        value = torch.flip(value, dims)
        if name == "refine":
            sign = torch.tensor([-1.0 if -1 in dims else 1.0, -1.0 if -2 in dims else 1.0], device=value.device)
            value = value * sign.view(1, 2, 1, 1)
        return value

