"""The base of methods that consume runs (ensembles of finished runs; the run layer,
``lt_bench.runs.ensemble``, combines them)."""

from typing import ClassVar

from lt_bench.errors import InputValidationError
from lt_bench.methods._base import Method


class EnsembleMethod(Method):
    """A method combining finished runs. ``vary``: what its members differ in
    ("backbone", or "seed" for the same-backbone control); ``rules``: the accepted values
    of the ``rule`` hyper-parameter; ``members``: the member runs' method."""

    consumes: ClassVar[str] = "runs"
    vary: ClassVar[str] = "backbone"
    rules: ClassVar[tuple[str, ...]] = ("sum", "prob_mean")

    def validate(self) -> None:
        rule = self.hparams["rule"]
        if rule not in self.rules:
            raise InputValidationError(f"method {self.name!r}: rule = {rule!r}; "
                                       f"valid: {', '.join(self.rules)}")
        members = self.hparams["members"]
        if not isinstance(members, str) or not members:
            raise InputValidationError(f"method {self.name!r}: members must be a method name "
                                       f"(e.g. 'la'), got {members!r}")
