"""A straightforward per-instance implementation of the HoVer-Net metric definitions (one full-image mask per
nucleus, dense IoU matrices, full Hungarian matching). Slow by design: the yardstick that nucseg.metrics must equal
to 1e-6 and beat in speed (tests/metrics, benchmarks/metrics.py). Needs contiguous ids, as the reference does.
"""

import numpy as np
from scipy.optimize import linear_sum_assignment


def remap(labels):
    out = np.zeros(labels.shape, np.int32)
    for k, i in enumerate(u for u in np.unique(labels) if u != 0):
        out[labels == i] = k + 1
    return out


def _pairwise(true, pred):
    t_ids = [i for i in np.unique(true) if i]
    p_ids = [i for i in np.unique(pred) if i]
    t_masks = [(true == i).astype(np.uint8) for i in t_ids]
    p_masks = [(pred == i).astype(np.uint8) for i in p_ids]
    inter = np.zeros((len(t_ids), len(p_ids)))
    union = np.zeros((len(t_ids), len(p_ids)))
    for a, tm in enumerate(t_masks):
        for pid in np.unique(pred[tm > 0]):
            if pid == 0:
                continue
            b = p_ids.index(pid)
            pm = p_masks[b]
            i = (tm * pm).sum()
            inter[a, b] = i
            union[a, b] = (tm + pm).sum() - i
    return t_masks, p_masks, inter, union


def ref_aji(true, pred):
    t_masks, p_masks, inter, union = _pairwise(true, pred)
    iou = inter / (union + 1e-6)
    best = np.argmax(iou, axis=1)
    paired = np.nonzero(iou.max(axis=1) > 0)[0]
    best = best[paired]
    total_i = inter[paired, best].sum()
    total_u = union[paired, best].sum()
    total_u += sum(m.sum() for k, m in enumerate(t_masks) if k not in set(paired))
    total_u += sum(m.sum() for k, m in enumerate(p_masks) if k not in set(best))
    return total_i / total_u


def ref_aji_plus(true, pred):
    t_masks, p_masks, inter, union = _pairwise(true, pred)
    iou = inter / (union + 1e-6)
    r, c = linear_sum_assignment(-iou)
    ok = iou[r, c] > 0
    r, c = r[ok], c[ok]
    total_i = inter[r, c].sum()
    total_u = union[r, c].sum()
    total_u += sum(m.sum() for k, m in enumerate(t_masks) if k not in set(r))
    total_u += sum(m.sum() for k, m in enumerate(p_masks) if k not in set(c))
    return total_i / total_u


def ref_pq(true, pred, match_iou=0.5):
    t_masks, p_masks, inter, union = _pairwise(true, pred)
    iou = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
    if match_iou >= 0.5:
        r, c = np.nonzero(iou > match_iou)
    else:
        r, c = linear_sum_assignment(-iou)
        ok = iou[r, c] > match_iou
        r, c = r[ok], c[ok]
    tp = len(r)
    fp = len(p_masks) - tp
    fn = len(t_masks) - tp
    dq = tp / (tp + 0.5 * fp + 0.5 * fn)
    sq = iou[r, c].sum() / (tp + 1e-6)
    return dq, sq, dq * sq


def ref_dice(true, pred):
    t = (true > 0).astype(np.int64)
    p = (pred > 0).astype(np.int64)
    return 2.0 * (t * p).sum() / (t + p).sum()


def hausdorff_per_pair(true, pred, pairs) -> float:
    """Mean over (true id, pred id) pairs of the symmetric Hausdorff distance of their pixel sets (scipy)."""
    from scipy.spatial.distance import directed_hausdorff

    dists = []
    for i, j in pairs:
        a, b = np.argwhere(true == i), np.argwhere(pred == j)
        dists.append(max(directed_hausdorff(a, b)[0], directed_hausdorff(b, a)[0]))
    return float(np.mean(dists))
