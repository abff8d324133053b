"""The combining maths of the ensemble methods: member logits in, the ensemble's logits out.

``Σ_c z_c`` (``sum``: the authors' code sums the raw logits of the M fine-tuned models),
``log((1/M) Σ_c softmax(z_c))`` (``prob_mean``: the backdoor formula
``P(y | do(x)) = Σ_c P(y | f_c(x), c) · P(c)`` read literally, ``P(c) = 1/M``) and
``Σ_c w_c z_c`` (``weighted_sum``, one ``w_c ≥ 0`` per member fitted on **val** by
:func:`fit_member_weights`). Every sum is in float64 over the members stacked in their
order, whatever the stored dtype, so a run and its rebuild give the same logits.

scipy is imported inside the functions: planning imports the methods and stays
scipy-free.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from lt_bench.errors import InputValidationError

log = logging.getLogger(__name__)

#: the rules :func:`combine` knows
RULES = ("sum", "prob_mean", "weighted_sum")
#: the default upper bound of a fitted member weight (backdoor_learned's ``max_weight``)
MAX_WEIGHT = 100.0


def stack(logits: list[np.ndarray]) -> np.ndarray:
    """(M, N, K) float64: the members' logits in their order."""
    return np.stack([np.asarray(z, dtype=np.float64) for z in logits])


def combine(logits: list[np.ndarray], rule: str = "sum",
            weights: np.ndarray | list[float] | None = None) -> np.ndarray:
    """Combine member logits by ``rule`` (one of :data:`RULES`; ``weights``: one
    ``w_c ≥ 0`` per member, for ``weighted_sum`` only)."""
    from scipy.special import logsumexp

    if rule not in RULES:
        raise InputValidationError(f"unknown ensemble rule {rule!r}; valid: {', '.join(RULES)}")
    z = stack(logits)
    if rule == "weighted_sum":
        w = np.asarray(weights if weights is not None else [], dtype=np.float64)
        if w.shape != (len(logits),) or not np.isfinite(w).all() or (w < 0).any():
            raise InputValidationError(
                f"ensemble rule 'weighted_sum': weights {w.tolist()} are invalid; expected "
                f"{len(logits)} finite non-negative numbers (one per member)")
        return np.tensordot(w, z, axes=1)
    if weights is not None:
        raise InputValidationError(f"ensemble rule {rule!r} takes no weights "
                                   "(only 'weighted_sum' does)")
    if rule == "sum":
        return z.sum(0)
    logp = z - logsumexp(z, axis=2, keepdims=True)
    return logsumexp(logp, axis=0) - np.log(len(logits))


def fit_member_weights(val_logits: list[np.ndarray], labels: np.ndarray,
                       max_weight: float = MAX_WEIGHT) -> tuple[np.ndarray, dict[str, Any]]:
    """Weights ``w ∈ [0, max_weight]^M`` minimising the mean val NLL of ``Σ_c w_c z_c``.

    The NLL is convex in w (log-sum-exp of a linear map minus a linear term), so L-BFGS-B
    on w itself (not log w, which would break convexity and could not reach w_c = 0) finds
    the minimum from any start: deterministic. It starts from w = 1, the backdoor. Where
    val is separable the NLL falls forever as w grows: the fit then stops at the box
    ``max_weight`` (``at_max_weight`` in the returned info) or where the NLL no longer
    falls by the tolerance; either way the weights stay finite.
    """
    from scipy.optimize import minimize
    from scipy.special import logsumexp

    # float32 as stored (iNat2018's val is 24k x 8142 per member); sums in float64
    z = np.stack([np.asarray(v, dtype=np.float32) for v in val_logits])  # (M, N, K)
    y = np.asarray(labels, dtype=np.int64)
    if z.ndim != 3 or z.shape[1] != len(y) or len(y) == 0:
        raise InputValidationError(f"fitting ensemble weights: member val logits of shape "
                                   f"{z.shape} for {len(y)} labels; expected (M, N, K), N > 0")
    rows = np.arange(len(y))
    z_true = z[:, rows, y].astype(np.float64)  # (M, N): each member's true-class logit

    def nll_and_grad(w):
        s = np.zeros(z.shape[1:])
        for wc, zc in zip(w, z, strict=True):
            s += wc * zc
        lse = logsumexp(s, axis=1)
        p = np.exp(s - lse[:, None])
        nll = float(np.mean(lse - s[rows, y]))
        # d NLL / d w_c = mean_i (E_p[z_c,i] − z_c,i,y_i)
        grad = np.array([np.sum(p * zc) for zc in z]) - z_true.sum(1)
        return nll, grad / len(y)

    res = minimize(nll_and_grad, np.ones(len(z)), jac=True, method="L-BFGS-B",
                   bounds=[(0.0, float(max_weight))] * len(z),
                   options={"maxiter": 1000, "ftol": 1e-13, "gtol": 1e-9})
    w = np.clip(res.x, 0.0, float(max_weight))
    at_max = bool(np.any(w >= max_weight * (1 - 1e-9)))
    if at_max:
        log.warning("ensemble weights reached max_weight %s (val nearly separable): %s",
                    max_weight, w.tolist())
    return w, {"val_nll": float(res.fun), "val_nll_equal_weights": nll_and_grad(
        np.ones(len(z)))[0], "converged": bool(res.success), "n_iter": int(res.nit),
        "at_max_weight": at_max}
