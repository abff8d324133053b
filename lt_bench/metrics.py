"""Evaluation metrics of one run (docs/architecture.md §1 "Metrics").

All accuracies are fractions in [0, 1]. Group accuracy is the mean of the per-class
accuracies of the classes in the group (not a pooled accuracy), as in OLTR/LIFT.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.special import softmax

from lt_bench.blocks import row_blocks
from lt_bench.errors import InputValidationError

#: D-group thresholds on train counts, the one definition: Many = more than MANY_ABOVE,
#: Few = fewer than FEW_BELOW, Medium = FEW_BELOW..MANY_ABOVE inclusive (100 is Medium)
MANY_ABOVE, FEW_BELOW = 100, 20
D_GROUPS = ("many", "medium", "few")
P_GROUPS = ("p_many", "p_medium", "p_few")


def d_groups(train_counts: np.ndarray) -> np.ndarray:
    """Group name per class from train counts (>100 many, 20–100 medium, <20 few)."""
    c = np.asarray(train_counts)
    return np.where(c > MANY_ABOVE, "many", np.where(c < FEW_BELOW, "few", "medium"))


def p_groups(prior: np.ndarray) -> np.ndarray:
    """Thirds of classes by estimated pre-training prior q̂ (P-Many = top third).

    Ties are broken by class index (stable sort) so the split is deterministic; the
    three groups differ in size by at most one class (np.array_split).
    """
    order = np.argsort(-np.asarray(prior, dtype=float), kind="stable")
    out = np.empty(len(order), dtype=object)
    for name, idx in zip(P_GROUPS, np.array_split(order, 3), strict=True):
        out[idx] = name
    return out.astype(str)


def per_class_accuracy(pred: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Accuracy per class; NaN for classes absent from ``labels``."""
    support = np.bincount(labels, minlength=num_classes).astype(float)
    correct = np.bincount(labels, weights=(pred == labels), minlength=num_classes)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(support > 0, correct / np.maximum(support, 1), np.nan)


def _row_maxima(logits: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per row, in row blocks of float64 (lt_bench/blocks.py; at iNat2018's 24,426 × 8,142
    a float64 copy and a softmax of the whole split were ~5 GB): the logits' argmax, and
    the max and argmax of their softmax (row by row, so the same bits as computed at once)."""
    n, k = logits.shape
    pred, conf, p_arg = np.empty(n, np.intp), np.empty(n), np.empty(n, np.intp)
    for b in row_blocks(n, k):
        z = np.asarray(logits[b], dtype=np.float64)
        pred[b] = z.argmax(1)
        p = softmax(z, axis=1)
        conf[b], p_arg[b] = p.max(1), p.argmax(1)
    return pred, conf, p_arg


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, n_bins: int = 15) -> float:
    """ECE with equal-width confidence bins on the max softmax probability."""
    return _ece(probs.max(1), probs.argmax(1) == labels, n_bins)


def _ece(conf: np.ndarray, correct: np.ndarray, n_bins: int) -> float:
    edges = np.linspace(0, 1, n_bins + 1)
    # bins are (lo, hi]; confidence 0 cannot occur for a softmax
    idx = np.clip(np.searchsorted(edges, conf, side="left") - 1, 0, n_bins - 1)
    ece = 0.0
    for b in range(n_bins):
        m = idx == b
        if m.any():
            ece += m.mean() * abs(correct[m].mean() - conf[m].mean())
    return float(ece)


def macro_f1(pred: np.ndarray, labels: np.ndarray, num_classes: int) -> float:
    """Mean over classes present in ``labels`` of F1 = 2TP / (2TP + FP + FN)."""
    tp = np.bincount(labels, weights=pred == labels, minlength=num_classes)
    fp = np.bincount(pred, minlength=num_classes) - tp
    fn = np.bincount(labels, minlength=num_classes) - tp
    present = np.bincount(labels, minlength=num_classes) > 0
    denom = 2 * tp + fp + fn
    f1 = np.where(denom > 0, 2 * tp / np.maximum(denom, 1), 0.0)
    return float(f1[present].mean())


def _group_mean(acc: np.ndarray, mask: np.ndarray) -> float | None:
    vals = acc[mask & ~np.isnan(acc)]
    return float(vals.mean()) if len(vals) else None


def evaluate(logits: np.ndarray, labels: np.ndarray, train_counts: np.ndarray,
             prior: np.ndarray | None = None, n_bins: int = 15) -> tuple[dict, dict]:
    """Metrics dict (JSON-able, None where undefined) and per-class arrays."""
    logits = np.asarray(logits)  # float64 a row block at a time (_row_maxima)
    labels = np.asarray(labels)
    k = logits.shape[1]
    if len(train_counts) != k:
        raise InputValidationError(f"train counts cover {len(train_counts)} classes, logits have {k}")
    pred, conf, p_arg = _row_maxima(logits)
    acc = per_class_accuracy(pred, labels, k)
    present = ~np.isnan(acc)
    accp = acc[present]
    dg = d_groups(train_counts)
    m: dict = {
        "top1": float((pred == labels).mean()),
        "ece": _ece(conf, p_arg == labels, n_bins),
        "ece_bins": n_bins,
        "macro_f1": macro_f1(pred, labels, k),
        "worst_class": float(accp.min()),
        "hmean": 0.0 if (accp == 0).any() else float(len(accp) / np.sum(1.0 / accp)),
        "gmean": 0.0 if (accp == 0).any() else float(math.exp(np.log(accp).mean())),
        "n_test": int(len(labels)),
        "n_classes": int(k),
    }
    for g in D_GROUPS:
        m[g] = _group_mean(acc, dg == g)
        m[f"n_{g}_classes"] = int((dg == g).sum())
    per_class = {"label": np.arange(k), "train_count": np.asarray(train_counts),
                 "d_group": dg, "accuracy": acc}
    if prior is not None:
        pg = p_groups(prior)
        for g in P_GROUPS:
            m[g] = _group_mean(acc, pg == g)
        for d in D_GROUPS:
            for p in P_GROUPS:
                # key e.g. "dp_many_p_few": D-group many, P-group few
                m[f"dp_{d}_{p}"] = _group_mean(acc, (dg == d) & (pg == p))
                m[f"n_dp_{d}_{p}_classes"] = int(((dg == d) & (pg == p)).sum())
        per_class.update(q_hat=np.asarray(prior, dtype=float), p_group=pg)
    return m, per_class
