"""Instance-segmentation metrics, defined exactly as HoVer-Net's reference (`metrics/stats_utils.py`).

All values equal the reference to 1e-6 (checked in tests on real label pairs). Differences, by design:
- any ids are accepted (the reference needs `remap_label` first);
- empty maps: both empty -> every score is 1.0 (a perfect prediction of an empty image); exactly one empty -> 0.0
  (the reference raises or divides by zero there). Hausdorff is NaN when nothing is matched.
- Hungarian matching runs per connected component of the overlap graph (same optimum, milliseconds).
"""

from __future__ import annotations

import numpy as np
from scipy.spatial.distance import cdist

from nucseg.labels import centroids
from nucseg.metrics.matching import linear_sum_assignment, max_weight_matching
from nucseg.metrics.overlap import Overlap, compute_overlap

_EPS = 1.0e-6


def _both_empty(ov: Overlap) -> bool:
    return ov.n_true == 0 and ov.n_pred == 0


def _as_overlap(true_or_overlap, pred=None) -> Overlap:
    if isinstance(true_or_overlap, Overlap):
        return true_or_overlap
    return compute_overlap(true_or_overlap, pred)


def aji(true, pred=None) -> float:
    """Aggregated Jaccard Index (MoNuSeg's, as HoVer-Net's get_fast_aji).

    Each true nucleus takes the prediction of highest IoU (ties: the smallest pred id); a prediction may serve
    several nuclei; unmatched true and pred areas join the union. Pass two maps or an `Overlap`.
    """
    ov = _as_overlap(true, pred)
    if _both_empty(ov):
        return 1.0
    inter, union = aji_parts(ov)
    return float(inter / union)


def aji_parts(ov: Overlap) -> tuple[float, float]:
    """(overall intersection, overall union) of AJI, for pooling over images."""
    if ov.n_true == 0 or ov.n_pred == 0:
        return 0.0, float(ov.true_area.sum() + ov.pred_area.sum())
    union = ov.union
    iou = ov.inter / (union + _EPS)
    # Best pair per true: sort by true, then IoU descending, then pred id ascending (argmax's tie rule).
    order = np.lexsort((ov.pair_pred, -iou, ov.pair_true))
    first = np.ones(order.size, bool)
    first[1:] = ov.pair_true[order][1:] != ov.pair_true[order][:-1]
    return _aggregate(ov, order[first], union)


def _aggregate(ov: Overlap, chosen: np.ndarray, union: np.ndarray) -> tuple[float, float]:
    """AJI's totals for chosen pairs (indices into the pair arrays): their intersections, and their unions plus the
    areas of every true and predicted nucleus in no chosen pair. A pred chosen by several trues counts each time."""
    paired_t = np.zeros(ov.n_true, bool)
    paired_t[ov.pair_true[chosen]] = True
    paired_p = np.zeros(ov.n_pred, bool)
    paired_p[ov.pair_pred[chosen]] = True
    overall_union = union[chosen].sum() + ov.true_area[~paired_t].sum() + ov.pred_area[~paired_p].sum()
    return float(ov.inter[chosen].sum()), float(overall_union)


def aji_plus(true, pred=None) -> float:
    """AJI+ (as HoVer-Net's get_fast_aji_plus): one-to-one Hungarian matching on IoU, unmatched areas join the union."""
    ov = _as_overlap(true, pred)
    if _both_empty(ov):
        return 1.0
    inter, union = aji_plus_parts(ov)
    return float(inter / union)


def aji_plus_parts(ov: Overlap) -> tuple[float, float]:
    """(overall intersection, overall union) of AJI+, for pooling over images."""
    if ov.n_true == 0 or ov.n_pred == 0:
        return 0.0, float(ov.true_area.sum() + ov.pred_area.sum())
    union = ov.union
    iou = ov.inter / (union + _EPS)
    return _aggregate(ov, max_weight_matching(ov.pair_true, ov.pair_pred, iou, ov.n_true, ov.n_pred), union)


def match_pairs(true, pred=None, iou_threshold: float = 0.5) -> tuple[np.ndarray, np.ndarray, np.ndarray, Overlap]:
    """PQ's pairing: (true index, pred index, IoU) of matched pairs with IoU > threshold, and the table.

    At threshold >= 0.5 such pairs are unique by construction; below it Hungarian matching on IoU is used first.
    """
    if iou_threshold < 0:
        raise ValueError("iou_threshold can't be negative")
    ov = _as_overlap(true, pred)
    iou = ov.iou()
    if iou_threshold >= 0.5:
        sel = np.flatnonzero(iou > iou_threshold)
    else:
        sel = max_weight_matching(ov.pair_true, ov.pair_pred, iou, ov.n_true, ov.n_pred)
        sel = sel[iou[sel] > iou_threshold]
    return ov.pair_true[sel], ov.pair_pred[sel], iou[sel], ov


def pq(true, pred=None, iou_threshold: float = 0.5) -> dict[str, float]:
    """Panoptic quality (as HoVer-Net's get_fast_pq): {"dq", "sq", "pq", "tp", "fp", "fn", "iou_sum"}."""
    pt, pp, piou, ov = match_pairs(true, pred, iou_threshold)
    tp = int(pt.size)
    fp = ov.n_pred - tp
    fn = ov.n_true - tp
    if tp + fp + fn == 0:
        return {"dq": 1.0, "sq": 1.0, "pq": 1.0, "tp": 0, "fp": 0, "fn": 0, "iou_sum": 0.0}
    dq = tp / (tp + 0.5 * fp + 0.5 * fn)
    sq = piou.sum() / (tp + _EPS)
    return {"dq": dq, "sq": float(sq), "pq": float(dq * sq), "tp": tp, "fp": fp, "fn": fn, "iou_sum": float(piou.sum())}


def dice(true, pred=None) -> float:
    """Binary (foreground) Dice, as HoVer-Net's get_dice_1. 1.0 when both are empty. Two maps or an `Overlap`."""
    if isinstance(true, Overlap):
        total = true.true_area.sum() + true.pred_area.sum()
        return float(2.0 * true.inter.sum() / total) if total else 1.0
    t = np.asarray(true) > 0
    p = np.asarray(pred) > 0
    denom = int(t.sum()) + int(p.sum())
    if denom == 0:
        return 1.0
    return 2.0 * int(np.count_nonzero(t & p)) / denom


def pair_coordinates(a: np.ndarray, b: np.ndarray, radius: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """HoVer-Net's pair_coordinates: Hungarian matching of two point sets on Euclidean distance over all points,
    then pairs farther than `radius` are dropped. Returns (pairs K×2, unpaired a, unpaired b) as indices."""
    a = np.asarray(a, dtype=np.float64).reshape(-1, 2)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 2)
    if a.shape[0] == 0 or b.shape[0] == 0:
        return np.zeros((0, 2), np.int64), np.arange(a.shape[0]), np.arange(b.shape[0])
    dist = cdist(a, b)
    ia, ib = linear_sum_assignment(dist)
    ok = dist[ia, ib] <= radius
    pairs = np.stack([ia[ok], ib[ok]], axis=1)
    unpaired_a = np.setdiff1d(np.arange(a.shape[0]), pairs[:, 0])
    unpaired_b = np.setdiff1d(np.arange(b.shape[0]), pairs[:, 1])
    return pairs, unpaired_a, unpaired_b


def detection_by_centroid(true, pred, radius: float = 12.0) -> dict[str, float]:
    """Detection precision / recall / F1 with centroids paired within `radius` pixels (HoVer-Net's type mode: 12)."""
    _, ct = centroids(true)
    _, cp = centroids(pred)
    pairs, ua, ub = pair_coordinates(ct, cp, radius)
    return _prf(len(pairs), len(ub), len(ua))


def detection_by_iou(true, pred=None, iou_threshold: float = 0.5) -> dict[str, float]:
    """Detection precision / recall / F1 with PQ's IoU pairing (F1 equals DQ)."""
    s = pq(true, pred, iou_threshold)
    return _prf(s["tp"], s["fp"], s["fn"])


def _prf(tp: int, fp: int, fn: int) -> dict[str, float]:
    if tp + fp + fn == 0:
        return {"precision": 1.0, "recall": 1.0, "f1": 1.0, "tp": 0, "fp": 0, "fn": 0}
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * tp / (2 * tp + fp + fn)
    return {"precision": precision, "recall": recall, "f1": f1, "tp": tp, "fp": fp, "fn": fn}


def hausdorff(true, pred, iou_threshold: float = 0.5, overlap: Overlap | None = None) -> float:
    """Mean object-level Hausdorff distance (pixels) over PQ-matched pairs (IoU > threshold).

    Per pair: the symmetric Hausdorff distance between the two nuclei's pixel sets (as
    `skimage.metrics.hausdorff_distance` on the pair's masks; the per-pair scipy reference in tests agrees exactly).
    NaN when no pair is matched.

    All pairs of an image in two KD-tree queries. The farthest pixel of A from B is a pixel of A outside B (the rest
    are at 0), and the nearest pixel of B to a pixel outside B is on B's 4-connected boundary (a step from an inner
    pixel towards the query point always gets closer). So each direction queries A minus B against B's boundary,
    with every pair shifted to its own stretch of the x axis, further from the others than any distance inside a
    pair, so that one tree serves all pairs.
    """
    from nucseg.labels import relabel_sequential

    pt, pp, _, ov = match_pairs(overlap if overlap is not None else true, pred, iou_threshold)
    if pt.size == 0:
        return float("nan")
    t, _ = relabel_sequential(true)
    p, _ = relabel_sequential(pred)
    h, w = t.shape
    n = pt.size
    # Only pixels of some matched nucleus matter: gather them once, then work on these 1-D arrays
    pair_of_t = np.full(ov.n_true + 1, -1, np.int32)
    pair_of_t[pt + 1] = np.arange(n)
    pair_of_p = np.full(ov.n_pred + 1, -1, np.int32)
    pair_of_p[pp + 1] = np.arange(n)
    t_flat, p_flat = t.ravel(), p.ravel()
    idx = np.flatnonzero((pair_of_t[t_flat] >= 0) | (pair_of_p[p_flat] >= 0))
    rows, cols = np.divmod(idx, w)
    as_t, as_p = pair_of_t[t_flat[idx]], pair_of_p[p_flat[idx]]
    spacing = 2.0 * (h + w)
    d_tp = _directed_pair_distances(rows, cols, as_t, as_p, p, pair_of_p, spacing, n)
    d_pt = _directed_pair_distances(rows, cols, as_p, as_t, t, pair_of_t, spacing, n)
    return float(np.maximum(d_tp, d_pt).mean())


_NEIGHBOURS_4 = ((-1, 0), (1, 0), (0, -1), (0, 1))
_NEIGHBOURS_DIAGONAL = ((-1, -1), (-1, 1), (1, -1), (1, 1))


def _directed_pair_distances(rows, cols, pair_a, pair_b, labels_b, pair_of_b, spacing: float, n: int) -> np.ndarray:
    """max over pixels of A of the distance to B, per pair. rows / cols: the pixels to consider; pair_a / pair_b:
    each one's pair as A / as B (-1: none); labels_b: B's label map and pair_of_b its ids' pairs (-1: none).

    Pixels of A outside B with a 4-neighbour in B are at exactly 1, those with only a diagonal one at exactly
    sqrt(2) (no lattice distance lies between); only the rest, usually a minority, go to the KD-tree."""
    from scipy.spatial import cKDTree

    out = np.zeros(n)
    outside = np.flatnonzero((pair_a >= 0) & (pair_a != pair_b))
    if outside.size == 0:
        return out
    h, w = labels_b.shape
    r, c, k = rows[outside], cols[outside], pair_a[outside]

    def touches(offsets) -> np.ndarray:
        hit = np.zeros(r.size, bool)
        for dr, dc in offsets:
            rr, cc = r + dr, c + dc
            inside = (rr >= 0) & (rr < h) & (cc >= 0) & (cc < w)
            hit[inside] |= pair_of_b[labels_b[rr[inside], cc[inside]]] == k[inside]
        return hit

    near4 = touches(_NEIGHBOURS_4)
    near8 = ~near4 & touches(_NEIGHBOURS_DIAGONAL)
    np.maximum.at(out, k[near4], 1.0)
    np.maximum.at(out, k[near8], np.sqrt(2.0))
    far = ~(near4 | near8)
    if not far.any():
        return out
    outside, which = outside[far], k[far]
    needed = np.zeros(n, bool)
    needed[which] = True
    # B's boundary: B pixels with a 4-neighbour of another id, or on the image edge
    in_b = np.flatnonzero(pair_b >= 0)
    r, c = rows[in_b], cols[in_b]
    own = labels_b[r, c]
    edge = (r == 0) | (c == 0) | (r == h - 1) | (c == w - 1)
    inner = ~edge
    ri, ci, oi = r[inner], c[inner], own[inner]
    edge[inner] = ((labels_b[ri - 1, ci] != oi) | (labels_b[ri + 1, ci] != oi) | (labels_b[ri, ci - 1] != oi)
                   | (labels_b[ri, ci + 1] != oi))
    boundary = in_b[edge]
    boundary = boundary[needed[pair_b[boundary]]]  # only the pairs that still have far pixels
    tree = cKDTree(np.column_stack([rows[boundary], cols[boundary] + pair_b[boundary] * spacing]))
    dist, _ = tree.query(np.column_stack([rows[outside], cols[outside] + which * spacing]))
    np.maximum.at(out, which, dist)
    return out


def semantic_scores(true, pred, num_classes: int | None = None) -> dict[str, float]:
    """Pixel-level Dice and mIoU of two semantic maps (0 = background), the SAM-fusion paper's metrics.

    mIoU averages the IoU of every class present in either map, background included; with instance maps this is
    the mean of background and foreground IoU. `dice` is the foreground (non-zero) Dice.
    """
    t = np.asarray(true).astype(np.int64)
    p = np.asarray(pred).astype(np.int64)
    if num_classes is None:
        num_classes = int(max(t.max(initial=0), p.max(initial=0))) + 1
    conf = np.bincount(t.ravel() * num_classes + p.ravel(), minlength=num_classes**2).reshape(num_classes, -1)
    inter = np.diag(conf).astype(np.float64)
    union = conf.sum(0) + conf.sum(1) - inter
    present = union > 0
    miou = float((inter[present] / union[present]).mean()) if present.any() else 1.0
    return {"dice": dice(t, p), "miou": miou}


def foreground_miou(ov: Overlap, n_pixels: int) -> float:
    """`semantic_scores(true > 0, pred > 0)["miou"]` from the overlap table alone (no pass over the pixels): the
    pairs' intersections sum to the pixels that are nucleus in both maps."""
    inter = float(ov.inter.sum())
    fg_union = float(ov.true_area.sum() + ov.pred_area.sum()) - inter
    bg_inter, bg_union = n_pixels - fg_union, n_pixels - inter
    ious = [i / u for i, u in ((inter, fg_union), (bg_inter, bg_union)) if u > 0]
    return float(np.mean(ious)) if ious else 1.0


def instance_scores(true: np.ndarray, pred: np.ndarray, radius: float = 12.0, with_hausdorff: bool = True) -> dict:
    """Every per-image instance score from one overlap table: the row `nucseg evaluate` prints."""
    ov = compute_overlap(true, pred)
    q = pq(ov)
    a_in, a_un = aji_parts(ov)
    ap_in, ap_un = aji_plus_parts(ov)
    det = detection_by_centroid(true, pred, radius)
    det_iou = _prf(q["tp"], q["fp"], q["fn"])
    row = {
        "aji": aji(ov),
        "aji_plus": aji_plus(ov),
        "_aji_inter": a_in,
        "_aji_union": a_un,
        "_aji_plus_inter": ap_in,
        "_aji_plus_union": ap_un,
        "_tp": q["tp"],
        "_fp": q["fp"],
        "_fn": q["fn"],
        "_iou_sum": q["iou_sum"],
        "_fg_inter": float(ov.inter.sum()),
        "_fg_total": float(ov.true_area.sum() + ov.pred_area.sum()),
        "dice": dice(ov),
        "dq": q["dq"],
        "sq": q["sq"],
        "pq": q["pq"],
        "f1_det": det["f1"],
        "precision_det": det["precision"],
        "recall_det": det["recall"],
        "f1_iou": det_iou["f1"],
        "precision_iou": det_iou["precision"],
        "recall_iou": det_iou["recall"],
        "miou": foreground_miou(ov, np.asarray(true).size),
        "n_true": ov.n_true,
        "n_pred": ov.n_pred,
    }
    if with_hausdorff:
        row["hausdorff"] = hausdorff(true, pred, overlap=ov) if ov.n_true and ov.n_pred else float("nan")
    return row
