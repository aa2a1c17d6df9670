"""The overlap (contingency) table of two instance maps, computed in one pass over the pixels.

Every instance metric (AJI, AJI+, PQ, detection) is derived from this table: per-instance areas and the
intersection of every overlapping (true, pred) pair. Like StarDist's `matching.py`, and unlike the HoVer-Net
reference, no per-nucleus full-image mask is ever built.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from nucseg.labels import relabel_sequential

# Above this many (true+1)×(pred+1) cells the table is built from a sort of the pair codes instead of a dense bincount.
_DENSE_CELLS = 1 << 23


@dataclass(frozen=True)
class Overlap:
    """Sparse contingency table. Index k in 0..n-1 refers to the k-th smallest original id."""

    true_ids: np.ndarray  # (n_true,) original ids, sorted
    pred_ids: np.ndarray  # (n_pred,)
    true_area: np.ndarray  # (n_true,) float64 pixel counts
    pred_area: np.ndarray  # (n_pred,)
    pair_true: np.ndarray  # (k,) index into true_ids, sorted by (true, pred)
    pair_pred: np.ndarray  # (k,) index into pred_ids
    inter: np.ndarray  # (k,) float64 intersection in pixels (> 0)

    @property
    def n_true(self) -> int:
        return int(self.true_ids.size)

    @property
    def n_pred(self) -> int:
        return int(self.pred_ids.size)

    @property
    def union(self) -> np.ndarray:
        return self.true_area[self.pair_true] + self.pred_area[self.pair_pred] - self.inter

    def iou(self) -> np.ndarray:
        """Exact IoU of every overlapping pair (as HoVer-Net's PQ: inter / union)."""
        return self.inter / self.union

    def dense(self, values: np.ndarray) -> np.ndarray:
        """Scatter per-pair values into an n_true × n_pred matrix (zeros elsewhere)."""
        out = np.zeros((self.n_true, self.n_pred), dtype=np.float64)
        out[self.pair_true, self.pair_pred] = values
        return out


def compute_overlap(true: np.ndarray, pred: np.ndarray) -> Overlap:
    """Build the table of two H×W instance maps with any non-negative integer ids."""
    true = np.asarray(true)
    pred = np.asarray(pred)
    if true.shape != pred.shape:
        raise ValueError(f"true and pred differ in size: {true.shape} vs {pred.shape}")
    t, t_ids = relabel_sequential(true)
    p, p_ids = relabel_sequential(pred)
    return sequential_overlap(t, t_ids, p, p_ids)


def sequential_overlap(t: np.ndarray, t_ids: np.ndarray, p: np.ndarray, p_ids: np.ndarray) -> Overlap:
    """The table of two maps already relabelled 1..N (`relabel_sequential`'s output), for callers that need those
    maps again."""
    if t.shape != p.shape:
        raise ValueError(f"true and pred differ in size: {t.shape} vs {p.shape}")
    n_t, n_p = t_ids.size, p_ids.size
    width = n_p + 1
    cells = (n_t + 1) * width
    if cells <= _DENSE_CELLS:
        codes = t.ravel().astype(np.int64) * width + p.ravel()
        table = np.bincount(codes, minlength=cells).reshape(n_t + 1, width)
        true_area = table[1:].sum(axis=1).astype(np.float64)
        pred_area = table[:, 1:].sum(axis=0).astype(np.float64)
        flat = table.ravel()
        idx = np.flatnonzero(flat)  # on the contiguous table: much faster than nonzero of a strided view
        pt, pp = np.divmod(idx, width)
        keep = (pt > 0) & (pp > 0)
        pt, pp = pt[keep] - 1, pp[keep] - 1
        inter = flat[idx[keep]].astype(np.float64)
    else:
        true_area = np.bincount(t.ravel(), minlength=n_t + 1)[1:].astype(np.float64)
        pred_area = np.bincount(p.ravel(), minlength=n_p + 1)[1:].astype(np.float64)
        both = (t > 0) & (p > 0)
        codes = t[both].astype(np.int64) * width + p[both]
        uniq, counts = np.unique(codes, return_counts=True)
        pt, pp = uniq // width - 1, uniq % width - 1
        inter = counts.astype(np.float64)
    return Overlap(t_ids, p_ids, true_area, pred_area, pt.astype(np.int64), pp.astype(np.int64), inter)
