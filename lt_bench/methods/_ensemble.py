"""The base of the ensemble methods: the backdoor adjustment and its controls.

An ensemble method owns its behaviour; the run layer (``lt_bench.runs.ensemble``) only
drives it. It declares its members (:class:`~lt_bench.methods._base.RunsMethod`: over
backbones, over seeds of one backbone, of which member method), fits its combiner on the
members' **val** logits (:meth:`EnsembleMethod.fit`: a state, e.g. learned weights;
nothing for a fixed rule) and combines member logits with that state
(:meth:`EnsembleMethod.combine`). The state is what ``predictor.json`` stores beside the
members, so the seam rebuilds the same logits from it. A new control is one file: a
subclass that says what differs (docs/architecture.md, "How to add an ensemble control").
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from lt_bench.errors import InputValidationError
from lt_bench.methods._base import RunsMethod
from lt_bench.methods._combine import combine as combine_by_rule


class EnsembleMethod(RunsMethod):
    """A method combining M finished runs' logits. ``rules``: the accepted values of its
    ``rule`` hyper-parameter (the combining maths of :mod:`lt_bench.methods._combine`)."""

    rules: ClassVar[tuple[str, ...]] = ("sum", "prob_mean")

    def validate(self) -> None:
        super().validate()
        rule = self.hparams["rule"]
        if rule not in self.rules:
            raise InputValidationError(f"method {self.name!r}: rule = {rule!r}; "
                                       f"valid: {', '.join(self.rules)}")

    def fit(self, val_logits: list[np.ndarray], labels: np.ndarray,
            names: list[str] | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
        """(state, info) of the combiner fitted on the members' val logits (``names``:
        the members' labels, for ``info``). ``state`` is JSON, all :meth:`combine` reads;
        ``info`` is what the run records of the fit in metrics.json. Test logits never
        reach it. A fixed rule fits nothing."""
        return {"rule": self.hparams["rule"]}, {}

    @classmethod
    def combine(cls, logits: list[np.ndarray], state: dict[str, Any]) -> np.ndarray:
        """The ensemble's float64 logits from its members' (in order) and the fitted
        ``state``; a class method: the seam rebuilds a run from its predictor.json. Row by
        row (row i from the members' rows i): the run layer calls it on row blocks
        (``lt_bench.runs.ensemble.combine_blocks``)."""
        return combine_by_rule(logits, state["rule"], state.get("weights"))

    def n_params(self, state: dict[str, Any]) -> int:
        """Parameters fitted by :meth:`fit` (added to the members' in the run's compute)."""
        return 0
