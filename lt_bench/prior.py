"""Estimating a backbone's pre-training label prior q̂ (GLA, Zhu et al. 2023; docs/architecture.md §1).

1. zero-shot logits ``z`` on a class-balanced labelled split (val);
2. temperature: ``T`` such that the mean max-softmax confidence of ``z/T`` equals the
   accuracy (a 1-D root find on log T; accuracy does not depend on T);
3. ``q̂ = argmin_{q ∈ simplex} mean CE(z/T − log q, y)`` with ``q = softmax(θ)``, solved
   with L-BFGS in float64 on the CPU (deterministic; the problem is convex in log q).
   ``solver="gla_sgd"`` instead runs GLA's shipped solver (``pp_solver``, below), which
   stops far from that argmin: a like-for-like option, not the default.

At the optimum the debiased model's mean predicted distribution on the balanced split
matches the uniform label marginal, which is what removing the pre-training prior means.

Output: ``results/prior/{dataset}/{backbone}.parquet`` with ``label``, ``q_hat`` (and
``q_true`` for toy backbones, whose true prior is known); T, accuracy and provenance in
the ``lt_bench`` schema metadata.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lt_bench.errors import InputValidationError
from lt_bench.io import sha256_file

META_KEY = b"lt_bench"  # the schema-metadata key of every lt-bench Parquet file

log = logging.getLogger(__name__)

#: the temperature is searched in [1/T_BOUND, T_BOUND]
T_BOUND = 1e3


def mean_confidence(logits: np.ndarray, temperature: float) -> float:
    from scipy.special import softmax

    return float(softmax(np.asarray(logits, dtype=np.float64) / temperature, axis=1)
                 .max(1).mean())


def calibrate_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """T with mean max-softmax confidence of ``z/T`` equal to the accuracy of ``z``.

    Confidence falls monotonically from 1 (T → 0) to 1/K (T → ∞); where the accuracy is
    outside that range the nearer end of [1/T_BOUND, T_BOUND] is returned.
    """
    from scipy.optimize import brentq

    logits = np.asarray(logits, dtype=np.float64)
    acc = float((logits.argmax(1) == labels).mean())

    def gap(log_t: float) -> float:
        return mean_confidence(logits, math.exp(log_t)) - acc

    lo, hi = -math.log(T_BOUND), math.log(T_BOUND)
    g_lo, g_hi = gap(lo), gap(hi)
    if g_lo <= 0:  # even the sharpest softmax is under-confident
        return math.exp(lo)
    if g_hi >= 0:  # even the flattest is over-confident (accuracy <= 1/K)
        return math.exp(hi)
    return math.exp(brentq(gap, lo, hi, xtol=1e-10, rtol=1e-10, maxiter=200))


def fit_prior(logits: np.ndarray, labels: np.ndarray, max_iter: int = 500) -> np.ndarray:
    """``argmin_q mean CE(z − log q, y)`` over the simplex (``z`` already divided by T)."""
    import torch

    z = torch.as_tensor(np.asarray(logits, dtype=np.float64))
    y = torch.as_tensor(np.asarray(labels, dtype=np.int64))
    k = z.shape[1]
    missing = np.setdiff1d(np.arange(k), np.unique(labels))
    if len(missing):
        raise ValueError(f"prior estimation needs every class in the labelled split; "
                         f"{len(missing)} class(es) have no sample (e.g. {missing[:5].tolist()})")
    theta = torch.zeros(k, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([theta], lr=1.0, max_iter=max_iter, tolerance_grad=1e-12,
                            tolerance_change=1e-14, history_size=50,
                            line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(z - torch.log_softmax(theta, 0), y)
        loss.backward()
        return loss

    opt.step(closure)
    return torch.softmax(theta.detach(), 0).numpy()


#: the q̂ solvers: the argmin of GLA's stated objective, or GLA's shipped SGD loop
SOLVERS = ("argmin", "gla_sgd")
#: GLA's pp_solver: 1,000 steps
GLA_SGD_STEPS = 1000


class PriorSolverDiverged(InputValidationError):
    """GLA's Lagrangian SGD left the simplex (q_k ≤ 0: its CE is NaN), as GLA's own code
    does on such input; no prior file is written."""


def gla_sgd_prior(logits: np.ndarray, labels: np.ndarray,
                  steps: int = GLA_SGD_STEPS) -> np.ndarray:
    """GLA's shipped q̂ solver, transcribed (BeierZhu/GLA, ``GLA.FS.public.zip``:
    ``trainers/util.py::pp_solver``, the same in ``Code.zip``): the constrained problem
    ``min_q CE(z − log q, y)`` s.t. ``1 − Σq = 0``, ``−q ≤ 0`` in cooper's Lagrangian
    formulation, ``q`` itself the parameter (no softmax), from uniform ``q = 1/K``;
    ``steps`` simultaneous gradient steps, plain SGD on both players at
    ``lr = 1e-5 · (N/K) / 50``: primal descent on ``L = CE + λ_eq (1 − Σq) + λ_inᵀ(−q)``,
    dual ascent ``λ += lr · defect`` from 0 (λ_in projected to ≥ 0), both with the defects
    of the same forward pass. float32, as GLA runs it.

    Returns q as the loop leaves it (not renormalised: GLA uses ``log q`` as is). Raises
    :class:`PriorSolverDiverged` where a step leaves q ≤ 0 (GLA would return NaN logits).
    """
    import torch
    import torch.nn.functional as F

    z = torch.as_tensor(np.asarray(logits), dtype=torch.float32)
    y = torch.as_tensor(np.asarray(labels, dtype=np.int64))
    n, k = z.shape
    lr = 1e-5 * (n / k) / 50
    q = (torch.ones(k) / k).requires_grad_(True)
    lam_eq = torch.zeros(())
    lam_in = torch.zeros(k)
    for step in range(steps):
        loss = F.cross_entropy(z - torch.log(q), y)
        eq_defect, in_defect = 1 - q.sum(), -q
        lagrangian = loss + (lam_in * in_defect).sum() + lam_eq * eq_defect
        (grad,) = torch.autograd.grad(lagrangian, q)
        with torch.no_grad():
            q -= lr * grad
            lam_eq = lam_eq + lr * eq_defect.detach()
            lam_in = torch.relu(lam_in + lr * in_defect.detach())
        if not torch.isfinite(q).all() or (q <= 0).any():
            bad = int((~torch.isfinite(q) | (q <= 0)).sum())
            raise PriorSolverDiverged(
                f"prior solver gla_sgd: GLA's Lagrangian SGD left the simplex at step "
                f"{step + 1} of {steps} (q <= 0 or not finite for {bad} of {k} classes, so "
                f"its CE is NaN; lr {lr:.3g} for N = {n}, K = {k}), as GLA's own pp_solver "
                "does on this input; use prior solver argmin (the argmin of GLA's objective)")
    return q.detach().numpy().astype(np.float64)


def estimate_prior(logits: np.ndarray, labels: np.ndarray,
                   temperature: float | None = None,
                   solver: str = "argmin") -> tuple[np.ndarray, float]:
    """(q̂, T): T calibrated on (logits, labels) unless given, then q̂ fitted on ``z/T`` by
    ``solver`` (``argmin``: :func:`fit_prior`; ``gla_sgd``: :func:`gla_sgd_prior`)."""
    if solver not in SOLVERS:
        raise InputValidationError(f"prior solver {solver!r} is unknown; valid: "
                                   f"{', '.join(SOLVERS)}")
    t = calibrate_temperature(logits, labels) if temperature is None else float(temperature)
    z = np.asarray(logits, dtype=np.float64) / t
    if solver == "argmin":
        return fit_prior(z, labels), t
    # GLA uses log q as the loop leaves it; Σq is only near 1, and a common factor is a
    # constant shift of every log q_k, which no logit comparison or CE sees: stored summed to 1
    q = gla_sgd_prior(z, labels)
    return q / q.sum(), t


def zero_shot_logits(features_dir: Path, split: str = "val") -> tuple[np.ndarray, np.ndarray]:
    """(labels, logits) of the CLIP text classifier ``s · cos(e(x), t_k)`` on ``split``
    (``e(x)`` is ``encode_image``: the stored projection maps pre-projection features).
    Where the split has test-time crops (five-crop TTE) the logits are averaged over them,
    as every run's val/test logits are: T and q̂ are fitted on what the runs report."""
    from lt_bench.features.store import read_features, read_text_embeddings

    features_dir = Path(features_dir)
    text = read_text_embeddings(features_dir / "text.parquet")
    if text.embeddings is None or text.logit_scale is None:
        raise InputValidationError(
            f"{features_dir}: backbone {text.meta.get('backbone')!r} has no text tower, so "
            "no zero-shot logits and no prior estimate")
    feats = read_features(features_dir / f"{split}.parquet")
    if feats.crops is not None:
        z = np.asarray(text.zero_shot_logits(feats.crops), dtype=np.float64).mean(1)
        return feats.labels, z
    return feats.labels, np.asarray(text.zero_shot_logits(feats.features), dtype=np.float64)


def read_true_prior(path: Path, num_classes: int) -> np.ndarray:
    import pandas as pd

    df = pd.read_parquet(path)
    if "prior" not in df.columns or "label" not in df.columns:
        raise ValueError(f"{path}: a true-prior file needs columns 'label' and 'prior'")
    q = df.sort_values("label")["prior"].to_numpy(dtype=np.float64)
    if len(q) != num_classes:
        raise ValueError(f"{path}: true prior covers {len(q)} classes, the features have "
                         f"{num_classes}")
    return q


def write_prior(out: Path, q_hat: np.ndarray, meta: dict[str, Any],
                q_true: np.ndarray | None = None) -> None:
    import pyarrow as pa

    from lt_bench.features.store import write_table

    cols = {"label": pa.array(np.arange(len(q_hat), dtype=np.int32)),
            "q_hat": pa.array(np.asarray(q_hat, dtype=np.float64))}
    if q_true is not None:
        cols["q_true"] = pa.array(np.asarray(q_true, dtype=np.float64))
    table = pa.table(cols).replace_schema_metadata(
        {META_KEY: json.dumps(meta, sort_keys=True, default=str)})
    write_table(table, out)


def read_prior_meta(path: Path) -> dict[str, Any]:
    import pyarrow.parquet as pq

    md = pq.read_schema(path).metadata or {}
    return json.loads(md.get(META_KEY, b"{}"))


@dataclass
class PriorFile:
    """A validated prior file: q̂ per class (label order), its temperature, q_true if known."""

    path: Path
    q_hat: np.ndarray
    temperature: float | None
    q_true: np.ndarray | None = None
    meta: dict[str, Any] = field(default_factory=dict)


#: q̂ must sum to 1 within this (it is a softmax, stored as float64)
SUM_TOLERANCE = 1e-6


def read_prior(path: Path | str, num_classes: int | None = None, *,
               dataset: str | None = None, backbone: str | None = None,
               used_with: str | Path | None = None) -> PriorFile:
    """Read and check a prior file (``results/prior/{dataset}/{backbone}.parquet``): one
    entry per class with labels 0..K−1, every q̂ finite and > 0, summing to 1. A prior that
    fails any of these would give a "finished" run at chance (log 0) — refuse it here.
    ``dataset``/``backbone`` (of the features ``used_with``) must be the ones the file
    records (``prior_from_features`` writes them; a file without them is read as before):
    another backbone's q̂ gives a finished run with its P-groups inverted."""
    import pyarrow.parquet as pq

    from lt_bench.features.store import column_numpy

    path = Path(path)
    if not path.is_file():
        raise InputValidationError(f"prior file not found: {path} (made by `lt-bench prior`)")
    try:
        with pq.ParquetFile(path) as f:  # not pandas: this is on every run's start-up path
            t = f.read()
    except Exception as e:  # pyarrow raises several types for a damaged file
        raise InputValidationError(f"prior file {path} is not a readable Parquet file ({e}); "
                                   "delete it and rerun `lt-bench prior`") from e
    if not {"label", "q_hat"} <= set(t.column_names):
        raise InputValidationError(f"prior file {path}: needs columns 'label' and 'q_hat', "
                                   f"has {t.column_names}")
    order = np.argsort(column_numpy(t.column("label")), kind="stable")
    labels = column_numpy(t.column("label"))[order]
    k = t.num_rows if num_classes is None else int(num_classes)
    if t.num_rows != k or not np.array_equal(labels, np.arange(k)):
        raise InputValidationError(
            f"prior file {path}: expected one row per class with labels 0..{k - 1}, got "
            f"{t.num_rows} rows (labels {labels[:3].tolist()}…{labels[-3:].tolist()})")
    q = column_numpy(t.column("q_hat")).astype(np.float64)[order]
    bad = np.flatnonzero(~np.isfinite(q) | (q <= 0))
    if len(bad):
        raise InputValidationError(
            f"prior file {path}: q_hat must be finite and > 0 for every class; "
            f"{len(bad)} class(es) are not, e.g. label {int(bad[0])} = {q[bad[0]]!r}")
    if abs(q.sum() - 1.0) > SUM_TOLERANCE:
        raise InputValidationError(f"prior file {path}: q_hat sums to {q.sum():.9g}, "
                                   f"expected 1 (within {SUM_TOLERANCE:g})")
    meta = read_prior_meta(path)
    for key, want in (("dataset", dataset), ("backbone", backbone)):
        got = meta.get(key)
        if want is not None and got is not None and got != want:
            raise InputValidationError(
                f"prior file {path} was estimated for {key} {got!r}, but "
                f"{used_with or 'the run'} is of {key} {want!r}; use that {key}'s prior "
                f"(results/prior/{dataset or '{dataset}'}/{backbone or '{backbone}'}.parquet)")
    q_true = (column_numpy(t.column("q_true")).astype(np.float64)[order]
              if "q_true" in t.column_names else None)
    return PriorFile(path, q, meta.get("temperature"), q_true, meta)


def prior_from_features(features_dir: Path, out: Path, true_prior: Path | None = None,
                        split: str = "val", solver: str = "argmin") -> dict[str, Any]:
    """Estimate q̂ from a features folder and write the prior file; returns its metadata."""
    features_dir = Path(features_dir)
    labels, logits = zero_shot_logits(features_dir, split)
    from lt_bench.features.store import read_meta

    q_hat, t = estimate_prior(logits, labels, solver=solver)
    val_meta = read_meta(features_dir / f"{split}.parquet")
    acc = float((logits.argmax(1) == labels).mean())
    meta: dict[str, Any] = {
        "temperature": t, "split": split, "zero_shot_top1": acc,
        "mean_confidence_at_T": mean_confidence(logits, t),
        "n_samples": int(len(labels)), "num_classes": int(logits.shape[1]),
        "dataset": val_meta.get("dataset"), "backbone": val_meta.get("backbone"),
        "features_dir": str(features_dir),  # as given (relative to the project root)
        "feature_sha256": sha256_file(features_dir / f"{split}.parquet"),
        "method": "GLA: T by confidence = accuracy; q̂ = argmin CE(z/T − log q, y)",
    }
    if solver != "argmin":  # recorded only off the default, so default files are unchanged
        meta.update(solver=solver, method="GLA: T by confidence = accuracy; q̂ by GLA's "
                    f"pp_solver ({GLA_SGD_STEPS} Lagrangian SGD steps from uniform)")
    q_true = None
    if true_prior is not None:
        q_true = read_true_prior(Path(true_prior), logits.shape[1])
        meta.update(true_prior=str(true_prior), **prior_agreement(q_hat, q_true))
    write_prior(Path(out), q_hat, meta, q_true)
    log.info("prior %s: T %.4g, zero-shot top1 %.4f%s", out, t, acc,
             f", spearman {meta['spearman']:.3f}" if q_true is not None else "")
    return meta


def prior_agreement(q_hat: np.ndarray, q_true: np.ndarray) -> dict[str, float]:
    """How well q̂ tracks a known prior: Spearman and Pearson ρ, KL(q_true ‖ q̂), TV."""
    from scipy.stats import pearsonr, spearmanr

    q_hat = np.asarray(q_hat, dtype=np.float64)
    q_true = np.asarray(q_true, dtype=np.float64)
    return {
        "spearman": float(spearmanr(q_hat, q_true).statistic),
        "pearson": float(pearsonr(q_hat, q_true).statistic),
        "kl_true_hat": float(np.sum(q_true * (np.log(q_true) - np.log(q_hat)))),
        "tv": float(0.5 * np.abs(q_true - q_hat).sum()),
    }
