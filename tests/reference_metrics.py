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


# --- typed metrics: straight from the papers' code paths, one mask per nucleus -------------------------------------


def _class_only(labels, classes, c):
    keep = [i for i, k in classes.items() if k == c]
    return np.where(np.isin(labels, keep), labels, 0)


def _pq_stats(true, pred):
    """TP, FP, FN and the IoU sum of PQ's unique matching (IoU > 0.5), on contiguous ids."""
    t_masks, p_masks, inter, union = _pairwise(remap(true), remap(pred))
    iou = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
    r, c = np.nonzero(iou > 0.5)
    return len(r), len(p_masks) - len(r), len(t_masks) - len(r), float(iou[r, c].sum())


def ref_bpq_mpq(images, class_ids):
    """PanNuke: per image, bPQ = binary PQ (NaN for an empty truth) and mPQ = nanmean over the classes present in
    the truth of that class's PQ; both nanmean'd over the images (one tissue)."""
    bpqs, mpqs = [], []
    for true, tc, pred, pc in images:
        if true.any():
            tp, fp, fn, s = _pq_stats(true, pred)
            bpqs.append(tp / (tp + 0.5 * fp + 0.5 * fn) * (s / (tp + 1e-6)) if tp else 0.0)
        per_class = []
        for c in class_ids:
            t, p = _class_only(true, tc, c), _class_only(pred, pc, c)
            if not t.any():
                continue
            tp, fp, fn, s = _pq_stats(t, p)
            per_class.append(tp / (tp + 0.5 * fp + 0.5 * fn) * (s / (tp + 1e-6)) if tp else 0.0)
        if per_class:
            mpqs.append(np.mean(per_class))
    return float(np.mean(bpqs)), float(np.mean(mpqs))


def ref_mpq_plus(images, class_ids):
    """CoNIC: TP/FP/FN/IoU-sum of each class pooled over all images, PQ per class with the 1e-6 terms, averaged."""
    pqs = []
    for c in class_ids:
        tp = fp = fn = s = 0.0
        for true, tc, pred, pc in images:
            a, b, d, e = _pq_stats(_class_only(true, tc, c), _class_only(pred, pc, c))
            tp, fp, fn, s = tp + a, fp + b, fn + d, s + e
        pqs.append(tp / (tp + 0.5 * fp + 0.5 * fn + 1e-6) * (s / (tp + 1e-6)))
    return float(np.mean(pqs))


def ref_type_stats(images, class_ids, radius=12.0):
    """HoVer-Net compute_stats.py type mode: centroids (mean pixel coordinates) paired by the Hungarian algorithm on
    Euclidean distance, pairs farther than `radius` dropped, everything pooled over images; detection F1, type
    accuracy over the pairs, and `_f1_type` per class with w = [2, 2, 1, 1]."""
    from scipy.spatial.distance import cdist

    pt, pp, ut, up = [], [], [], []
    for true, tc, pred, pc in images:
        t_ids = [i for i in np.unique(true) if i]
        p_ids = [i for i in np.unique(pred) if i]
        t_xy = np.array([np.argwhere(true == i).mean(0) for i in t_ids]).reshape(-1, 2)
        p_xy = np.array([np.argwhere(pred == i).mean(0) for i in p_ids]).reshape(-1, 2)
        paired_t, paired_p = [], []
        if len(t_ids) and len(p_ids):
            d = cdist(t_xy, p_xy)
            a, b = linear_sum_assignment(d)
            ok = d[a, b] <= radius
            paired_t, paired_p = list(a[ok]), list(b[ok])
        pt += [tc.get(int(t_ids[k]), 0) for k in paired_t]
        pp += [pc.get(int(p_ids[k]), 0) for k in paired_p]
        ut += [tc.get(int(t_ids[k]), 0) for k in range(len(t_ids)) if k not in set(paired_t)]
        up += [pc.get(int(p_ids[k]), 0) for k in range(len(p_ids)) if k not in set(paired_p)]
    pt, pp, ut, up = map(np.array, (pt, pp, ut, up))
    out = {"f1_det": 2 * len(pt) / (2 * len(pt) + len(up) + len(ut)), "acc_type": float((pt == pp).mean())}
    w = (2, 2, 1, 1)
    for c in class_ids:
        sel = (pt == c) | (pp == c)
        t, p = pt[sel], pp[sel]
        tp_dt, tn_dt = ((t == c) & (p == c)).sum(), ((t != c) & (p != c)).sum()
        fp_dt, fn_dt = ((t != c) & (p == c)).sum(), ((t == c) & (p != c)).sum()
        fp_d, fn_d = (up == c).sum(), (ut == c).sum()
        out[f"f1_type_{c}"] = 2 * (tp_dt + tn_dt) / (2 * (tp_dt + tn_dt) + w[0] * fp_dt + w[1] * fn_dt
                                                     + w[2] * fp_d + w[3] * fn_d)
    return out
