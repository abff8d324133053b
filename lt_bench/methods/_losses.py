"""Loss functions and class weights of the re-balancing baselines (docs/architecture.md §1 table).

Pure functions of logits, labels and train counts, so each is tested on a hand-worked
case (tests/test_losses.py) apart from the head-training loop. Logits are the cosine
head's ``z = s · cos(f, w_k)``.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # torch is imported by the functions that need it (a light registry)
    import torch


def _counts(train_counts) -> np.ndarray:
    # a class absent from train would give infinite weights/margins: count it as 1
    return np.maximum(np.asarray(train_counts, dtype=np.float64), 1.0)


def focal_loss(logits: torch.Tensor, y: torch.Tensor, gamma: float = 2.0) -> torch.Tensor:
    """Focal loss (Lin et al. 2017): mean of ``−(1 − p_y)^γ · log p_y``.

    The modulating factor is not detached (the original formulation).
    """
    import torch.nn.functional as F

    logp = F.log_softmax(logits, dim=-1).gather(1, y[:, None]).squeeze(1)
    return (-(1 - logp.exp()) ** gamma * logp).mean()


def ldam_margins(train_counts, max_margin: float = 0.5) -> np.ndarray:
    """LDAM margins (Cao et al. 2019): ``m_y ∝ n_y^(−1/4)``, the largest equal to ``max_margin``."""
    m = _counts(train_counts) ** -0.25
    return m * (max_margin / m.max())


def ldam_loss(logits: torch.Tensor, y: torch.Tensor, margins: torch.Tensor, scale: float,
              weight: torch.Tensor | None = None) -> torch.Tensor:
    """``CE(z − s · m_y · onehot(y), y)``: the true class's logit lowered by ``s · m_y``.

    ``z = s · cos`` already, so this is LDAM's ``s · (cos_y − m_y)``. ``weight`` (DRW)
    gives each sample its class weight, normalised by the batch's ``Σ w_y`` (LIFT).
    """
    import torch.nn.functional as F

    onehot = F.one_hot(y, logits.shape[1]).to(logits.dtype)
    return weighted_ce(logits - scale * margins[y][:, None] * onehot, y, weight)


def class_balanced_weights(train_counts, beta: float = 0.9999) -> np.ndarray:
    """Class-balanced weights (Cui et al. 2019): ``(1 − β) / (1 − β^{n_k})``, mean 1."""
    n = _counts(train_counts)
    w = (1.0 - beta) / (1.0 - np.power(beta, n))
    return w / w.mean()


def inverse_frequency_weights(train_counts, exponent: float = 1.0) -> np.ndarray:
    """Generalised re-weighting: ``w_k ∝ π_k^(−exponent)``, mean 1 (1 = inverse frequency)."""
    n = _counts(train_counts)
    w = (n / n.sum()) ** -exponent
    return w / w.mean()


def weighted_ce(logits: torch.Tensor, y: torch.Tensor,
                weight: torch.Tensor | None = None) -> torch.Tensor:
    """Class-weighted CE as LIFT computes it (``utils/losses.py``: ``F.cross_entropy(z, y,
    weight=w)``): ``Σ_i w_{y_i} CE_i / Σ_i w_{y_i}`` — normalised by the batch's weights,
    so the step size does not shrink with the re-weighting (LDAM-DRW uses the same)."""
    import torch.nn.functional as F

    return F.cross_entropy(logits, y,
                           weight=None if weight is None else weight.to(logits.dtype))


def lade_regulariser(logits: torch.Tensor, y: torch.Tensor, prior: torch.Tensor,
                     remine_lambda: float = 0.1) -> torch.Tensor:
    """LADE regulariser (Hong et al. 2021, Eq. 9–12; hyperconnect/LADE ``LADELoss``).

    With a batch of N samples, ``n_c`` of class c, uniform target prior 1/K:

    - ``first_c  = (1 / n_c) Σ_{i: y_i = c} z_ic`` (0 when c is absent from the batch),
    - ``second_c = logsumexp_i (z_ic − log π_c + log 1/K) − log N``,
    - ``estim_c  = first_c − second_c − λ · second_c²`` (the regularised DV bound, ReMINE),
    - loss ``= −Σ_c π_c · estim_c``.

    Maximising the bound makes ``z`` estimate ``log P_t(x|y)/P_t(x)`` for the balanced
    target distribution, disentangling the train label distribution from the logits.
    The ``1e-9`` and ``1e-8`` guards of the official code are kept.
    """
    import torch

    k = logits.shape[1]
    n = logits.shape[0]
    member = (y[None, :] == torch.arange(k, device=y.device)[:, None]).to(logits.dtype)  # K x N
    n_c = member.sum(1)
    first = (logits.T * member).sum(1) / (n_c + 1e-8)
    spread = (logits - torch.log(prior + 1e-9) + math.log(1.0 / k + 1e-9)).T  # K x N
    second = torch.logsumexp(spread, dim=1) - math.log(n)
    estim = first - second - remine_lambda * second**2
    return -(estim * prior).sum()
