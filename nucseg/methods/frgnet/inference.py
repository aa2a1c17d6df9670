"""FrGNet's inference half, torch-free: its config, the contours from its dense maps (proposals on a grid,
Fourier decoding, refinement, box NMS, the guide filter) and the numpy flips. `FrGNetMethod` trains over it."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from nucseg.methods.frgnet.efd import decode
from nucseg.methods.inference import MethodInference, register_inference
from nucseg.structures import Instances


@dataclass
class FrGNetConfig:
    encoder: str = "efficientnet_lite0"  # the paper: a ResNet (CPN's backbone); any timm encoder by name
    encoder_weights: str | None = None
    in_channels: int = 3
    decoder_channels: list[int] = field(default_factory=lambda: [128, 64, 48, 32, 16])
    order: int = 8  # elliptic Fourier harmonics per contour
    contour_points: int = 64
    heads: str = "cpn"  # cpn: the CPN's read-out heads | shared: the earlier 3×3 block + 1×1 heads (model.py)
    head_kernel: int = 7  # the CPN's location, descriptor and refinement heads
    head_dropout: float = 0.1  # the CPN's read-out heads
    refine_iterations: int = 4  # the CPN's; training draws 1..this many per batch, as the CPN does
    refine_margin: float = 3.0
    guide: str = "soft"  # soft (the paper's best, Table 4) | hard | none (no guide head, GARU or filtering)
    guide_radius: float = 1.0
    # the side of the high-passed image that marks nuclei: auto (dark on brightfield, bright on fluorescence) | abs
    # (the magnitude) | dark | bright; the paper does not say (nucseg.targets.fourier)
    guide_polarity: str = "auto"
    hard_threshold: float | None = None  # the hard guide's threshold on the Fourier guide; None: Otsu's, per image
    garu: bool = True
    garu_form: str = "tanh"  # tanh: a gain in (0, 2) that can suppress | gain: the earlier [1, 2] (model.py)
    garu_features: bool = False  # GARU's gate from the guide alone (False) or from [features, guide]
    detach_guide: bool = True  # the guide entering GARU carries no instance gradient back to the guide head
    gilc: bool = True
    embedding_dim: int = 64
    similarity: str = "dot"  # eq. 3's sim(): dot (the paper's) | cosine (dot of L2-normalised embeddings)
    temperature: float = 0.1
    contrast_samples: int = 64
    proposals: int = 128  # sampled nucleus pixels per image for the contour losses
    order_weights: bool = True  # the CPN's weights on the descriptor loss, 5 (first harmonic) falling to 1 (last)
    # eq. 1 sums its three parts unweighted; the instance part is the CPN's: score 1, location 1, descriptors 1,
    # contour 3, refinement 1
    weight_score: float = 1.0
    weight_location: float = 1.0
    weight_fourier: float = 1.0
    weight_contour: float = 3.0
    weight_refine: float = 1.0
    weight_guide: float = 1.0
    weight_contrastive: float = 1.0
    # inference
    score_threshold: float = 0.8
    proposal_stride: int = 3  # 2 doubles the proposals (and NMS time) for no gain on perfect maps (tests)
    nms_threshold: float = 0.4
    # False: refine every proposal, then NMS (the CPN's order). True: NMS on the unrefined contours first, refine the
    # survivors, NMS again: ~30x fewer contours to refine (refinement is most of FrGNet's post-processing time) at the
    # cost of boxes compared before refinement moved them (benchmarks/frgnet_postprocess.py measures both)
    nms_before_refine: bool = False
    guide_threshold: float = 0.5  # Sec. 3.6
    min_area: int = 12


def refine_numpy(field_map: np.ndarray, points: np.ndarray, iterations: int) -> np.ndarray:
    """`iterations` steps of points += field(points) (bilinear; outside the map the edge value), numpy."""
    from scipy.ndimage import map_coordinates

    pts = points.copy()
    flat = pts.reshape(-1, 2)
    for _ in range(iterations):
        coords = [flat[:, 1], flat[:, 0]]
        step = np.stack([map_coordinates(field_map[k], coords, order=1, mode="nearest") for k in (0, 1)], 1)
        flat += step
    return flat.reshape(pts.shape)


def box_nms(boxes: np.ndarray, scores: np.ndarray, threshold: float) -> np.ndarray:
    """Greedy non-maximum suppression of N×4 (x0, y0, x1, y1) boxes: indices kept, strongest first. numpy, so
    post-processing workers need not import torchvision (seconds of start-up)."""
    order = np.argsort(-scores, kind="stable")
    area = np.maximum(boxes[:, 2] - boxes[:, 0], 0) * np.maximum(boxes[:, 3] - boxes[:, 1], 0)
    keep = []
    while order.size:
        i, rest = order[0], order[1:]
        keep.append(i)
        w = np.clip(np.minimum(boxes[i, 2], boxes[rest, 2]) - np.maximum(boxes[i, 0], boxes[rest, 0]), 0, None)
        h = np.clip(np.minimum(boxes[i, 3], boxes[rest, 3]) - np.maximum(boxes[i, 1], boxes[rest, 1]), 0, None)
        inter = w * h
        iou = inter / np.maximum(area[i] + area[rest] - inter, 1e-9)
        order = rest[iou <= threshold]
    return np.asarray(keep, np.int64)


def _boxes(contours: np.ndarray) -> np.ndarray:
    """N×4 (x0, y0, x1, y1) bounding boxes of N×Q×2 contours."""
    return np.concatenate([contours.min(1), contours.max(1)], 1)


@register_inference
class FrGNetInference(MethodInference):
    name = "frgnet"
    config_class = FrGNetConfig
    tunable = {
        # the grid reaches 0.95 / 0.1 / 0.9: a step-1,000 model's best values lay at the old grid's edges
        # (benchmarks/frgnet_postprocess.py on the H&E protocol's MoNuSeg tiles)
        "score_threshold": [0.5, 0.6, 0.7, 0.8, 0.9, 0.95],
        "proposal_stride": [2, 3, 4],
        "nms_threshold": [0.1, 0.2, 0.3, 0.4, 0.5],
        "guide_threshold": [0.0, 0.3, 0.5, 0.7, 0.8, 0.9],
        "min_area": [6, 12, 20, 30, 45, 60, 80],
    }

    def __init__(self, config=None, **overrides):
        super().__init__(config, **overrides)
        if self.config.guide not in ("soft", "hard", "none"):
            raise ValueError(f"frgnet guide must be soft, hard or none, not '{self.config.guide}'")
        if self.config.similarity not in ("dot", "cosine"):
            raise ValueError(f"frgnet similarity must be dot or cosine, not '{self.config.similarity}'")

    @property
    def use_guide(self) -> bool:
        return self.config.guide != "none"

    def unflip_array(self, name: str, value: np.ndarray, dims: tuple[int, ...]) -> np.ndarray | None:
        """As `FrGNetMethod.unflip`, in numpy: descriptors from the unflipped pass alone; the refinement field
        flipped back with dx negated for a left-right flip and dy for an up-down one."""
        if name == "fourier":
            return None
        value = np.flip(value, dims)
        if name == "refine":
            sign = np.array([-1.0 if -1 in dims else 1.0, -1.0 if -2 in dims else 1.0], np.float32)
            value = value * sign.reshape(1, 2, 1, 1)
        return value

    def contours(self, dense: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """(P×Q×2 refined contours (x, y) of the proposals that survive NMS, strongest first; their scores)."""
        c = self.config
        score = dense["score"][0]
        s = max(int(c.proposal_stride), 1)
        grid = np.zeros(score.shape, bool)
        grid[s // 2 :: s, s // 2 :: s] = True
        ys, xs = np.nonzero(grid & (score > c.score_threshold))
        if ys.size == 0:
            return np.zeros((0, c.contour_points, 2)), np.zeros(0)
        coef = dense["fourier"][:, ys, xs].T.astype(np.float64)
        coef[:, 0] += xs
        coef[:, 1] += ys
        pts, scores = decode(coef, c.contour_points), score[ys, xs]
        if c.nms_before_refine:
            keep = box_nms(_boxes(pts), scores, c.nms_threshold)
            pts, scores = pts[keep], scores[keep]
        pts = refine_numpy(dense["refine"], pts, c.refine_iterations)
        keep = box_nms(_boxes(pts), scores, c.nms_threshold)
        return pts[keep], scores[keep]

    def postprocess(self, dense: dict[str, np.ndarray]) -> Instances:
        import cv2

        from nucseg.labels import relabel_sequential, remove_small_instances

        c = self.config
        h, w = dense["score"].shape[-2:]
        pts, scores = self.contours(dense)
        labels = np.zeros((h, w), np.int32)
        # weakest first, so where contours overlap the strongest is painted last and keeps the pixels
        for k in range(len(pts) - 1, -1, -1):
            cv2.fillPoly(labels, [np.round(pts[k]).astype(np.int32)], int(k + 1))
        if "guide" in dense and c.guide_threshold > 0 and labels.any():
            from scipy import ndimage as ndi

            ids = np.unique(labels)[1:]
            peak = ndi.maximum(dense["guide"][0], labels, ids)
            labels[np.isin(labels, ids[np.asarray(peak) < c.guide_threshold])] = 0
        labels = remove_small_instances(labels, c.min_area)
        labels, old = relabel_sequential(labels)
        return Instances(labels, scores={k + 1: float(scores[int(o) - 1]) for k, o in enumerate(old)})
