"""Control of the backdoor: the same M-backbone logit sum over **CE** runs,
so the gain of LA members over CE members is separated from the gain of ensembling."""

from typing import Any, ClassVar

from lt_bench.methods._base import METHODS
from lt_bench.methods._ensemble import EnsembleMethod


@METHODS.register()
class BackdoorCE(EnsembleMethod):
    name = "backdoor_ce"
    display = "backdoor (CE members)"
    defaults: ClassVar[dict[str, Any]] = {"rule": "sum", "members": "ce"}
    description = "control: the backdoor's sum over backbones, of CE member runs"
