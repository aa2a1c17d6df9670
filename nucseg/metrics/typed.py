"""Multi-class metrics: PanNuke bPQ / mPQ, CoNIC mPQ+, HoVer-Net's type-mode F1 and per-class P/R/F1.

Instance classes come as {instance id: class} dicts (class 0 = unlabelled, ignored as a nucleus class).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np

from nucseg.labels import centroids
from nucseg.metrics.instance import pair_coordinates, pq

_EPS = 1.0e-6


def class_instance_map(labels: np.ndarray, classes: dict[int, int], cls: int) -> np.ndarray:
    """The instance map restricted to nuclei of class `cls`."""
    ids = [i for i, c in classes.items() if c == cls]
    if not ids:
        return np.zeros(labels.shape, np.int32)
    return np.where(np.isin(labels, ids), labels, 0).astype(np.int32)


def image_class_pq(true, true_classes, pred, pred_classes, class_ids) -> dict[int, dict]:
    """PQ statistics per class for one image (match IoU > 0.5)."""
    out = {}
    for c in class_ids:
        t = class_instance_map(true, true_classes, c)
        p = class_instance_map(pred, pred_classes, c)
        s = pq(t, p)
        s["true_present"] = bool(t.any())
        out[c] = s
    return out


@dataclass
class TypedAccumulator:
    """Accumulates images, then `aggregate()` gives bPQ, mPQ (PanNuke), mPQ+ (CoNIC) and type-mode F1 (HoVer-Net).

    PanNuke: per image, class PQ is NaN when the class is absent from the truth; mPQ(image) = nanmean over classes;
    bPQ(image) = binary PQ (NaN when the truth is empty); both are nanmean'd over the images of a tissue, then
    averaged over tissues. CoNIC mPQ+: TP/FP/FN/IoU-sum per class pooled over all images, PQ per class with
    DQ = TP / (TP + FP/2 + FN/2 + 1e-6), SQ = IoU-sum / (TP + 1e-6), averaged over classes.
    HoVer-Net type F1: centroids paired within `radius` per image, pooled, weights w = [2, 2, 1, 1].
    """

    class_ids: list[int]
    radius: float = 12.0
    per_image: dict[str, dict] = field(default_factory=dict)
    _tissue: dict[str, str] = field(default_factory=dict)
    _pooled: dict[int, np.ndarray] = field(default_factory=lambda: defaultdict(lambda: np.zeros(4)))
    _paired_true: list = field(default_factory=list)
    _paired_pred: list = field(default_factory=list)
    _unpaired_true: list = field(default_factory=list)
    _unpaired_pred: list = field(default_factory=list)

    def add(self, stem: str, true, true_classes, pred, pred_classes, tissue: str = "all") -> dict:
        per_class = image_class_pq(true, true_classes, pred, pred_classes, self.class_ids)
        bin_pq = pq(true, pred)["pq"] if np.any(true) else float("nan")
        class_pq = {c: (s["pq"] if s["true_present"] else float("nan")) for c, s in per_class.items()}
        values = [v for v in class_pq.values() if not np.isnan(v)]
        row = {"bpq": bin_pq, "mpq": float(np.mean(values)) if values else float("nan")}
        row.update({f"pq_class{c}": v for c, v in class_pq.items()})
        for c, s in per_class.items():
            self._pooled[c] += [s["tp"], s["fp"], s["fn"], s["iou_sum"]]
        # HoVer-Net type mode: centroid pairing, then pooled over images.
        t_ids, t_cent = centroids(true)
        p_ids, p_cent = centroids(pred)
        t_type = np.array([true_classes.get(int(i), 0) for i in t_ids], dtype=np.int64)
        p_type = np.array([pred_classes.get(int(i), 0) for i in p_ids], dtype=np.int64)
        pairs, ua, ub = pair_coordinates(t_cent, p_cent, self.radius)
        self._paired_true.append(t_type[pairs[:, 0]])
        self._paired_pred.append(p_type[pairs[:, 1]])
        self._unpaired_true.append(t_type[ua])
        self._unpaired_pred.append(p_type[ub])
        self.per_image[stem] = row
        self._tissue[stem] = tissue
        return row

    def aggregate(self) -> dict:
        out: dict = {}
        tissues = sorted(set(self._tissue.values()))
        mpq_t, bpq_t = [], []
        for tissue in tissues:
            stems = [s for s, t in self._tissue.items() if t == tissue]
            mpq_t.append(nanmean([self.per_image[s]["mpq"] for s in stems]))
            bpq_t.append(nanmean([self.per_image[s]["bpq"] for s in stems]))
            out.setdefault("per_tissue", {})[tissue] = {"mpq": mpq_t[-1], "bpq": bpq_t[-1]}
        out["mpq"] = float(np.mean(mpq_t)) if mpq_t else float("nan")
        out["bpq"] = float(np.mean(bpq_t)) if bpq_t else float("nan")
        # CoNIC mPQ+
        per_class = {}
        for c in self.class_ids:
            tp, fp, fn, iou_sum = self._pooled[c]
            dq = tp / (tp + 0.5 * fp + 0.5 * fn + _EPS)
            sq = iou_sum / (tp + _EPS)
            per_class[c] = {"pq_plus": dq * sq, "dq_plus": dq, "sq_plus": sq}
        out["mpq_plus"] = float(np.mean([v["pq_plus"] for v in per_class.values()])) if per_class else float("nan")
        # HoVer-Net type-mode F1 and per-class P/R/F1
        pt = _cat(self._paired_true)
        pp = _cat(self._paired_pred)
        ut = _cat(self._unpaired_true)
        up = _cat(self._unpaired_pred)
        tp_d, fp_d, fn_d = pt.size, up.size, ut.size
        out["f1_det"] = 2 * tp_d / (2 * tp_d + fp_d + fn_d) if tp_d + fp_d + fn_d else 1.0
        out["acc_type"] = float((pt == pp).mean()) if pt.size else float("nan")
        for c in self.class_ids:
            per_class[c]["f1_type"] = _hovernet_type_f1(pt, pp, ut, up, c)
            tp = int(((pt == c) & (pp == c)).sum())
            fp = int(((pp == c) & (pt != c)).sum() + (up == c).sum())
            fn = int(((pt == c) & (pp != c)).sum() + (ut == c).sum())
            per_class[c]["precision"] = tp / (tp + fp) if tp + fp else float("nan")
            per_class[c]["recall"] = tp / (tp + fn) if tp + fn else float("nan")
            per_class[c]["f1"] = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else float("nan")
        out["per_class"] = {str(c): v for c, v in per_class.items()}
        return out


def _hovernet_type_f1(pt, pp, ut, up, c, w=(2, 2, 1, 1)) -> float:
    """HoVer-Net's `_f1_type` (compute_stats.py, exhaustive annotation)."""
    sel = (pt == c) | (pp == c)
    t, p = pt[sel], pp[sel]
    tp_dt = int(((t == c) & (p == c)).sum())
    tn_dt = int(((t != c) & (p != c)).sum())
    fp_dt = int(((t != c) & (p == c)).sum())
    fn_dt = int(((t == c) & (p != c)).sum())
    fp_d = int((up == c).sum())
    fn_d = int((ut == c).sum())
    denom = 2 * (tp_dt + tn_dt) + w[0] * fp_dt + w[1] * fn_dt + w[2] * fp_d + w[3] * fn_d
    return 2 * (tp_dt + tn_dt) / denom if denom else float("nan")


def nanmean(values) -> float:
    """Mean ignoring NaN and None; NaN when nothing is left."""
    arr = np.asarray([np.nan if v is None else v for v in values], dtype=np.float64)
    return float(np.nanmean(arr)) if arr.size and not np.all(np.isnan(arr)) else float("nan")


def _cat(parts) -> np.ndarray:
    return np.concatenate(parts) if parts else np.zeros(0, np.int64)
