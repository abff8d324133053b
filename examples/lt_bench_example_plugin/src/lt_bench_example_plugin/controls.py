"""``backdoor_max_confidence``: an ensemble control not in lt-bench's grid. Per test image,
the one member that is most confident (the largest maximum softmax probability) decides;
its log-probabilities are the ensemble's logits.

It asks whether the backdoor's gain (the sum of the members' logits, Chen et al. 2025)
comes from pooling evidence over backbones or only from deferring, image by image, to the
backbone that is sure of itself: if this row matched ``backdoor``, pooling would add
nothing. Nothing is fitted on val. Written as lt-bench's own controls are
(lt_bench/methods/backdoor_vote.py): the members, the val/test reading, the checks and the
run folder come from ``EnsembleMethod``; the control only says how it combines.
"""

from typing import Any, ClassVar

import numpy as np

from lt_bench.methods._base import METHODS
from lt_bench.methods._ensemble import EnsembleMethod


@METHODS.register("backdoor_max_confidence")
class BackdoorMaxConfidence(EnsembleMethod):
    name = "backdoor_max_confidence"
    rules: ClassVar[tuple[str, ...]] = ("max_confidence",)
    defaults: ClassVar[dict[str, Any]] = {"rule": "max_confidence", "members": "la"}
    description = "control: per image, the most confident member's probabilities"

    @classmethod
    def combine(cls, logits, state):
        from scipy.special import log_softmax

        # float64 over the members in their order, as every lt-bench rule (methods/_combine.py)
        logp = np.stack([log_softmax(np.asarray(z, dtype=np.float64), axis=1)
                         for z in logits])  # (M, N, K)
        sure = logp.max(axis=2).argmax(axis=0)  # (N,) the member with the largest max p
        return logp[sure, np.arange(logp.shape[1])]
