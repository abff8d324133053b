"""Control of the backdoor: a hard majority vote of the members, ties broken by the
backdoor's logit sum. Whether the backdoor's gain needs the members' logit magnitudes (how
sure each one is) or only their decisions.

Its logits are ``log((v + p/2) / (M + 1/2))``, ``v_k`` the number of members whose argmax
is k and ``p = softmax(Σ_c z_c)`` the backdoor's probabilities: a distribution (Σ v = M,
Σ p = 1) whose argmax is the most-voted class (vote counts differ by ≥ 1, the p/2 term by
< 1/2), ties going to the larger logit sum; its ECE is that of this smoothed vote share.
Nothing is fitted on val."""

from typing import Any, ClassVar

import numpy as np

from lt_bench.methods._base import METHODS
from lt_bench.methods._combine import stack
from lt_bench.methods._ensemble import EnsembleMethod


@METHODS.register()
class BackdoorVote(EnsembleMethod):
    name = "backdoor_vote"
    display = "backdoor (majority vote)"
    rules: ClassVar[tuple[str, ...]] = ("vote",)
    defaults: ClassVar[dict[str, Any]] = {"rule": "vote", "members": "la"}
    description = "control: majority vote of the members' argmaxes (ties: the logit sum)"

    @classmethod
    def combine(cls, logits, state):
        from scipy.special import log_softmax

        z = stack(logits)  # (M, N, K) float64
        votes = np.zeros(z.shape[1:])
        for zc in z:
            votes[np.arange(len(zc)), zc.argmax(1)] += 1
        with np.errstate(divide="ignore"):  # log 0 = -inf: a class no member chose
            log_votes = np.log(votes)
        # log(v + p/2) without underflow: p's log is finite where p itself rounds to 0
        return np.logaddexp(log_votes, log_softmax(z.sum(0), axis=1) - np.log(2.0)) \
            - np.log(len(z) + 0.5)
