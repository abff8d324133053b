"""The combining maths of the ensemble methods: member logits in, the ensemble's logits out.

``Σ_c z_c`` (``sum``: the authors' code sums the raw logits of the M fine-tuned models),
``log((1/M) Σ_c softmax(z_c))`` (``prob_mean``: the backdoor formula
``P(y | do(x)) = Σ_c P(y | f_c(x), c) · P(c)`` read literally, ``P(c) = 1/M``) and
``Σ_c w_c z_c`` (``weighted_sum``, one ``w_c ≥ 0`` per member fitted on **val** by
:func:`fit_member_weights`). Every sum is in float64 over the members in their order,
whatever the stored dtype, so a run and its rebuild give the same logits. Each rule is row
by row (row i of the result from row i of the members, element by element or along K
only), so the run layer combines in row blocks (``lt_bench.runs.ensemble.combine_blocks``)
and gets the same bits as one call: ``weighted_sum`` accumulates ``w_c z_c`` member after
member rather than through BLAS (whose gemv rounds a row differently with the matrix's
length and thread count), as the fit's NLL does.

scipy is imported inside the functions: planning imports the methods and stays
scipy-free.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from lt_bench.blocks import row_blocks
from lt_bench.errors import InputValidationError

log = logging.getLogger(__name__)

#: the rules :func:`combine` knows
RULES = ("sum", "prob_mean", "weighted_sum")
#: the default upper bound of a fitted member weight (backdoor_learned's ``max_weight``)
MAX_WEIGHT = 100.0


def stack(logits: list[np.ndarray]) -> np.ndarray:
    """(M, N, K) float64: the members' logits in their order."""
    return np.stack([np.asarray(z, dtype=np.float64) for z in logits])


def weighted_sum(logits, weights: np.ndarray) -> np.ndarray:
    """``Σ_c w_c z_c`` in float64, accumulated member after member (``w_0 z_0 + w_1 z_1 +
    …``): element by element, so a row's value does not depend on the other rows."""
    s = np.zeros(np.shape(logits[0]))
    for wc, zc in zip(weights, logits, strict=True):
        s += wc * np.asarray(zc, dtype=np.float64)
    return s


def combine(logits: list[np.ndarray], rule: str = "sum",
            weights: np.ndarray | list[float] | None = None) -> np.ndarray:
    """Combine member logits by ``rule`` (one of :data:`RULES`; ``weights``: one
    ``w_c ≥ 0`` per member, for ``weighted_sum`` only)."""
    from scipy.special import logsumexp

    if rule not in RULES:
        raise InputValidationError(f"unknown ensemble rule {rule!r}; valid: {', '.join(RULES)}")
    if rule == "weighted_sum":
        w = np.asarray(weights if weights is not None else [], dtype=np.float64)
        if w.shape != (len(logits),) or not np.isfinite(w).all() or (w < 0).any():
            raise InputValidationError(
                f"ensemble rule 'weighted_sum': weights {w.tolist()} are invalid; expected "
                f"{len(logits)} finite non-negative numbers (one per member)")
        return weighted_sum(logits, w)
    if weights is not None:
        raise InputValidationError(f"ensemble rule {rule!r} takes no weights "
                                   "(only 'weighted_sum' does)")
    z = stack(logits)
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

    # float32 as stored (iNat2018's val is 24k x 8142 per member: 0.8 GB each), not stacked
    # (a second copy); sums in float64. Whatever is element by element or along K goes in
    # row blocks (its temporaries are then one block, not N x K); the two sums over all N x K
    # (np.mean, np.sum: pairwise, so a blocked sum would round differently) stay whole, so
    # the weights are the same bits as summed at once
    zs = [np.asarray(v, dtype=np.float32) for v in val_logits]
    y = np.asarray(labels, dtype=np.int64)
    shape = (len(zs), *np.shape(zs[0])) if zs else (0,)
    if (len(shape) != 3 or shape[1] != len(y) or len(y) == 0
            or any(zc.shape != shape[1:] for zc in zs)):
        raise InputValidationError(
            f"fitting ensemble weights: member val logits of shapes "
            f"{[tuple(np.shape(zc)) for zc in zs]} for {len(y)} labels; expected M of (N, K), "
            "N > 0")
    rows = np.arange(len(y))
    # (M, N): each member's true-class logit
    z_true = np.stack([zc[rows, y] for zc in zs]).astype(np.float64)
    blocks = row_blocks(len(y), shape[2])

    def nll_and_grad(w):
        s = np.zeros(shape[1:])
        lse = np.empty(len(y))
        for b in blocks:
            for wc, zc in zip(w, zs, strict=True):
                s[b] += wc * zc[b]
            lse[b] = logsumexp(s[b], axis=1)
        nll = float(np.mean(lse - s[rows, y]))
        for b in blocks:  # p = softmax(s), in place of s
            s[b] -= lse[b, None]
            np.exp(s[b], out=s[b])
        # d NLL / d w_c = mean_i (E_p[z_c,i] − z_c,i,y_i)
        tmp = np.empty(shape[1:])
        grad = np.array([np.sum(np.multiply(s, zc, out=tmp)) for zc in zs]) - z_true.sum(1)
        return nll, grad / len(y)

    res = minimize(nll_and_grad, np.ones(len(zs)), jac=True, method="L-BFGS-B",
                   bounds=[(0.0, float(max_weight))] * len(zs),
                   options={"maxiter": 1000, "ftol": 1e-13, "gtol": 1e-9})
    w = np.clip(res.x, 0.0, float(max_weight))
    at_max = bool(np.any(w >= max_weight * (1 - 1e-9)))
    if at_max:
        log.warning("ensemble weights reached max_weight %s (val nearly separable): %s",
                    max_weight, w.tolist())
    return w, {"val_nll": float(res.fun), "val_nll_equal_weights": nll_and_grad(
        np.ones(len(zs)))[0], "converged": bool(res.success), "n_iter": int(res.nit),
        "at_max_weight": at_max}
