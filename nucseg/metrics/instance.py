"""Instance-segmentation metrics, defined exactly as HoVer-Net's reference (`metrics/stats_utils.py`).

All values equal the reference to 1e-6 (checked in tests on real label pairs). Differences, by design:
- any ids are accepted (the reference needs `remap_label` first);
- empty maps: both empty -> every score is 1.0 (a perfect prediction of an empty image); exactly one empty -> 0.0
  (the reference raises or divides by zero there). Hausdorff is NaN when nothing is matched.
- Hungarian matching runs per connected component of the overlap graph (same optimum, milliseconds).
"""

from __future__ import annotations

from functools import cache

import numpy as np

from nucseg.labels import centroids, relabel_sequential, sequential_centroids
from nucseg.metrics.matching import linear_sum_assignment, max_weight_matching
from nucseg.metrics.overlap import Overlap, compute_overlap, sequential_overlap

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
    return _pq_from_matches(tp, ov.n_pred - tp, ov.n_true - tp, float(piou.sum()))


def _pq_from_matches(tp: int, fp: int, fn: int, iou_sum: float) -> dict[str, float]:
    if tp + fp + fn == 0:
        return {"dq": 1.0, "sq": 1.0, "pq": 1.0, "tp": 0, "fp": 0, "fn": 0, "iou_sum": 0.0}
    dq = tp / (tp + 0.5 * fp + 0.5 * fn)
    sq = iou_sum / (tp + _EPS)
    return {"dq": dq, "sq": float(sq), "pq": float(dq * sq), "tp": tp, "fp": fp, "fn": fn, "iou_sum": iou_sum}


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
    # Euclidean distances as scipy's cdist computes them (sum of squares, then the root), without importing
    # scipy.spatial (0.4 s of `nucseg evaluate` in each worker)
    d_row = a[:, None, 0] - b[None, :, 0]
    d_col = a[:, None, 1] - b[None, :, 1]
    dist = np.sqrt(d_row * d_row + d_col * d_col)
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

    All pairs of an image at once, without a loop over pairs. The farthest pixel of A from B is a pixel of A outside
    B (the rest are at 0). For those, lattice offsets are tried in order of increasing length, up to
    `_RING_RADIUS`: the first length at which a pixel lands on its own pair's B is its exact distance. The few
    pixels farther than that are measured against B's 4-connected boundary (the nearest pixel of B to a point
    outside B lies on it: a step from an inner pixel towards the point gets closer).
    """
    pt, pp, _, ov = match_pairs(overlap if overlap is not None else true, pred, iou_threshold)
    if pt.size == 0:
        return float("nan")
    return _sequential_hausdorff(relabel_sequential(true)[0], relabel_sequential(pred)[0], pt, pp, ov)


def _sequential_hausdorff(t: np.ndarray, p: np.ndarray, pt: np.ndarray, pp: np.ndarray, ov: Overlap) -> float:
    """`hausdorff` of sequential maps t and p, given the matched pairs (pt, pp: indices) and their table."""
    n = pt.size
    pair_of_t = np.full(ov.n_true + 1, -1, np.int32)
    pair_of_t[pt + 1] = np.arange(n)
    pair_of_p = np.full(ov.n_pred + 1, -1, np.int32)
    pair_of_p[pp + 1] = np.arange(n)
    # each pixel's pair as a true and as a predicted nucleus (-1: none), on maps padded so that every offset of the
    # ring search stays inside
    pad = max(_RING_RADIUS, 1)  # the boundary search reads each pixel's 4 neighbours
    as_t = np.pad(pair_of_t[t], pad, constant_values=-1).ravel()
    as_p = np.pad(pair_of_p[p], pad, constant_values=-1).ravel()
    width = t.shape[1] + 2 * pad
    d_tp = _directed_pair_distances(as_t, as_p, width, n)
    d_pt = _directed_pair_distances(as_p, as_t, width, n)
    return float(np.maximum(d_tp, d_pt).mean())


# Past this length the ring search stops and the remaining pixels go to the boundary search. Most pixels of matched
# pairs lie within a few pixels of their partner; 8 was fastest on the benchmark's pairs (of 3, 5, 8).
_RING_RADIUS = 8
# Above this many (pixel, boundary pixel) distances the boundary search takes a KD-tree (huge nuclei far from their
# partner: brute force grows as the cube of their size). The benchmark's pairs need at most about 10^5.
_BRUTE_FORCE_LIMIT = 1 << 18
# The ring search hands its pixels to the boundary search early when the lookups left (pixels x offsets) exceed this:
# a nucleus of 10^5 pixels far from its partner costs less in a KD-tree than in 200 passes over its pixels.
_RING_WORK_LIMIT = 1 << 25


@cache
def _offset_rings(radius: int) -> tuple[tuple[float, np.ndarray, int], ...]:
    """Lattice offsets (dr, dc) with 0 < length <= radius, grouped by exact length, shortest first, each ring with
    the number of offsets from it to the last."""
    dr, dc = np.mgrid[-radius : radius + 1, -radius : radius + 1]
    squared = (dr * dr + dc * dc).ravel()
    keep = (squared > 0) & (squared <= radius * radius)
    squared, offsets = squared[keep], np.stack([dr.ravel()[keep], dc.ravel()[keep]], axis=1)
    order = np.argsort(squared, kind="stable")
    squared, offsets = squared[order], offsets[order]
    starts = np.flatnonzero(np.r_[True, squared[1:] != squared[:-1]])
    ends = np.r_[starts[1:], squared.size]
    return tuple((float(np.sqrt(squared[s])), offsets[s:e], squared.size - s) for s, e in zip(starts, ends))


def _directed_pair_distances(pair_a: np.ndarray, pair_b: np.ndarray, width: int, n: int) -> np.ndarray:
    """max over the pixels of A of the distance to B, for each of the n pairs. pair_a / pair_b: every pixel's pair as
    A / as B (-1: none), on the flattened map padded by `_RING_RADIUS`, `width` pixels per row."""
    out = np.zeros(n)
    pos = np.flatnonzero((pair_a >= 0) & (pair_a != pair_b))
    if pos.size == 0:
        return out
    k = pair_a[pos]
    for length, offsets, offsets_left in _offset_rings(_RING_RADIUS):
        if pos.size * offsets_left > _RING_WORK_LIMIT:
            break
        hit = np.zeros(pos.size, bool)
        for dr, dc in offsets:
            hit |= pair_b[pos + (dr * width + dc)] == k
        if hit.any():
            out[k[hit]] = length  # lengths only grow, so the last write per pair is its maximum
            pos, k = pos[~hit], k[~hit]
            if pos.size == 0:
                return out
    np.maximum.at(out, k, _distances_to_boundary(pos, k, pair_b, width))
    return out


def _distances_to_boundary(pos: np.ndarray, k: np.ndarray, pair_b: np.ndarray, width: int) -> np.ndarray:
    """Exact distance from each pixel `pos` (flat, padded) to the 4-connected boundary of its pair `k`'s B."""
    needed = np.zeros(int(pair_b.max()) + 2, bool)  # the last slot stays False: it is where -1 (no pair) reads
    needed[k] = True
    inside = np.flatnonzero(needed[pair_b])
    own = pair_b[inside]
    edge = ((pair_b[inside - 1] != own) | (pair_b[inside + 1] != own) | (pair_b[inside - width] != own)
            | (pair_b[inside + width] != own))
    boundary = inside[edge]
    boundary = boundary[np.argsort(pair_b[boundary], kind="stable")]
    first = np.searchsorted(pair_b[boundary], k, "left")
    count = np.searchsorted(pair_b[boundary], k, "right") - first
    br, bc = np.divmod(boundary, width)
    qr, qc = np.divmod(pos, width)
    if count.sum() > _BRUTE_FORCE_LIMIT:
        from scipy.spatial import cKDTree

        # one tree for all pairs: each pair shifted along the columns further than any distance within the map
        shift = 2.0 * (width + int(pair_b.size // width))
        tree = cKDTree(np.column_stack([br, bc + pair_b[boundary] * shift]))
        return tree.query(np.column_stack([qr, qc + k * shift]))[0]
    query = np.repeat(np.arange(pos.size), count)
    starts = np.cumsum(count) - count
    which = first[query] + (np.arange(query.size) - np.repeat(starts, count))
    squared = (br[which] - qr[query]) ** 2 + (bc[which] - qc[query]) ** 2
    return np.sqrt(np.minimum.reduceat(squared, starts).astype(np.float64))


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
    """Every per-image instance score from one overlap table: the row `nucseg evaluate` prints. Each map is
    relabelled once, for the table, the centroids and the Hausdorff distance alike."""
    true, pred = np.asarray(true), np.asarray(pred)
    if true.shape != pred.shape:
        raise ValueError(f"true and pred differ in size: {true.shape} vs {pred.shape}")
    t, t_ids = relabel_sequential(true)
    p, p_ids = relabel_sequential(pred)
    ov = sequential_overlap(t, t_ids, p, p_ids)
    pt, pp, piou, _ = match_pairs(ov)
    tp, fp, fn = int(pt.size), ov.n_pred - int(pt.size), ov.n_true - int(pt.size)
    q = _pq_from_matches(tp, fp, fn, float(piou.sum()))
    a_in, a_un = aji_parts(ov)
    ap_in, ap_un = aji_plus_parts(ov)
    pairs, unpaired_t, unpaired_p = pair_coordinates(sequential_centroids(t, ov.n_true),
                                                     sequential_centroids(p, ov.n_pred), radius)
    det = _prf(len(pairs), len(unpaired_p), len(unpaired_t))
    det_iou = _prf(tp, fp, fn)
    both_empty = _both_empty(ov)
    row = {
        "aji": 1.0 if both_empty else a_in / a_un,
        "aji_plus": 1.0 if both_empty else ap_in / ap_un,
        "_aji_inter": a_in,
        "_aji_union": a_un,
        "_aji_plus_inter": ap_in,
        "_aji_plus_union": ap_un,
        "_tp": tp,
        "_fp": fp,
        "_fn": fn,
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
        "miou": foreground_miou(ov, t.size),
        "n_true": ov.n_true,
        "n_pred": ov.n_pred,
    }
    if with_hausdorff:
        row["hausdorff"] = _sequential_hausdorff(t, p, pt, pp, ov) if tp else float("nan")
    return row
