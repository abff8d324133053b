"""GLA's estimate of a backbone's pre-training label prior q̂ (Zhu et al. 2023;
docs/architecture.md §1): the maths, on (logits, labels) arrays.

1. zero-shot logits ``z`` on a class-balanced labelled split (val);
2. temperature: ``T`` such that the mean max-softmax confidence of ``z/T`` equals the
   accuracy (a 1-D root find on log T; accuracy does not depend on T);
3. ``q̂ = argmin_{q ∈ simplex} mean CE(z/T − log q, y)`` with ``q = softmax(θ)``, solved
   with L-BFGS in float64 on the CPU (deterministic; the problem is convex in log q).
   ``solver="gla_sgd"`` instead runs GLA's shipped solver (``pp_solver``, below), which
   stops far from that argmin: a like-for-like option, not the default.

At the optimum the debiased model's mean predicted distribution on the balanced split
matches the uniform label marginal, which is what removing the pre-training prior means.
"""

from __future__ import annotations

import math

import numpy as np

from lt_bench.blocks import row_blocks
from lt_bench.errors import InputValidationError

#: the temperature is searched in [1/T_BOUND, T_BOUND]
T_BOUND = 1e3


def mean_confidence(logits: np.ndarray, temperature: float) -> float:
    """Mean over rows of the max softmax probability of ``logits / temperature``; a row block
    of float64 at a time (lt_bench/blocks.py: at iNat2018's val, 24,426 × 8,142, each whole
    softmax held ~3 float64 copies of 1.6 GB, in every step of the temperature's root
    search); row by row, so the bits of one whole call."""
    from scipy.special import softmax

    n, k = np.shape(logits)
    conf = np.empty(n)
    for b in row_blocks(n, k):
        conf[b] = softmax(np.asarray(logits[b], dtype=np.float64) / temperature, axis=1).max(1)
    return float(conf.mean())


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


def fit_prior(logits: np.ndarray, labels: np.ndarray, max_iter: int = 500,
              temperature: float = 1.0) -> np.ndarray:
    """``argmin_q mean CE(z − log q, y)`` over the simplex, ``z = logits / temperature``
    (divided a block at a time: no second N × K copy)."""
    import torch

    logits = np.asarray(logits, dtype=np.float64)
    y = torch.as_tensor(np.asarray(labels, dtype=np.int64))
    k = logits.shape[1]
    missing = np.setdiff1d(np.arange(k), np.unique(labels))
    if len(missing):
        raise InputValidationError(f"prior estimation needs every class in the labelled split; "
                                   f"{len(missing)} class(es) have no sample (e.g. {missing[:5].tolist()})")
    theta = torch.zeros(k, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([theta], lr=1.0, max_iter=max_iter, tolerance_grad=1e-12,
                            tolerance_change=1e-14, history_size=50,
                            line_search_fn="strong_wolfe")
    # the loss and its gradient a row block at a time: the whole split's cross-entropy held
    # ~4 float64 N × K tensors (iNat2018's val: 1.6 GB each; `lt-bench prior` peaked at
    # 10.8 GB where its SLURM job asks 4 GB). A split that fits one block (the toy world's)
    # is the one call as before: the same bits; blocks sum per block (q̂ equal to ~1e-12)
    blocks = row_blocks(len(y), k)
    z = torch.as_tensor(logits / temperature if len(blocks) == 1 else logits)

    def closure():
        opt.zero_grad()
        if len(blocks) == 1:
            loss = torch.nn.functional.cross_entropy(z - torch.log_softmax(theta, 0), y)
            loss.backward()
            return loss
        total = torch.zeros((), dtype=torch.float64)
        for b in blocks:
            loss = torch.nn.functional.cross_entropy(
                z[b] / temperature - torch.log_softmax(theta, 0), y[b],
                reduction="sum") / len(y)
            loss.backward()
            total += loss.detach()
        return total

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
    if solver == "argmin":
        return fit_prior(logits, labels, temperature=t), t
    z = np.asarray(logits, dtype=np.float64) / t
    # GLA uses log q as the loop leaves it; Σq is only near 1, and a common factor is a
    # constant shift of every log q_k, which no logit comparison or CE sees: stored summed to 1
    q = gla_sgd_prior(z, labels)
    return q / q.sum(), t



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
