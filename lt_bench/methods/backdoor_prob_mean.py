"""Control of the backdoor: the mean of the members' probabilities,
``log((1/M) Σ_c softmax(z_c))`` (the formula read literally), beside the authors' logit
sum, as its own row."""

from typing import Any, ClassVar

from lt_bench.methods._base import METHODS
from lt_bench.methods._ensemble import EnsembleMethod


@METHODS.register()
class BackdoorProbMean(EnsembleMethod):
    name = "backdoor_prob_mean"
    display = "backdoor (prob. mean)"
    rules: ClassVar[tuple[str, ...]] = ("prob_mean",)  # the sum is `backdoor` itself
    defaults: ClassVar[dict[str, Any]] = {"rule": "prob_mean", "members": "la"}
    description = "control: mean over backbones of the member runs' probabilities"
