"""Control of the backdoor: M members of **one** backbone that differ only in training
randomness, so a gain from ensembling at all is told apart from a gain from different
pre-training data. Its member axis is the seed (``vary = "seed"``); its run folder is that
backbone's: ``results/runs/{dataset}/{backbone}/backdoor_same_backbone/seed{s}``.

Member seeds for suite seed s: ``s + o`` for ``o`` in ``seed_offsets`` (default
``[0, 1000, 2000]``, M = 3 as the paper's ensemble): the first member is the suite's own
run of seed s, and the offsets keep every suite seed's extra members apart from the suite
seeds (0..999) and from each other's. The extra member runs are ordinary runs of the
``members`` method at those seeds, planned like every member run (``member_keys``)."""

from typing import Any, ClassVar

from lt_bench.errors import InputValidationError
from lt_bench.methods._base import METHODS
from lt_bench.methods._ensemble import EnsembleMethod


@METHODS.register()
class BackdoorSameBackbone(EnsembleMethod):
    name = "backdoor_same_backbone"
    display = "backdoor (one backbone, M seeds)"
    vary: ClassVar[str] = "seed"
    defaults: ClassVar[dict[str, Any]] = {"rule": "sum", "members": "la",
                                          "seed_offsets": [0, 1000, 2000]}
    description = "control: sum over seeds of one backbone's member runs"

    def validate(self) -> None:
        super().validate()
        off = self.hparams["seed_offsets"]
        ok = (isinstance(off, (list, tuple)) and len(off) >= 2 and off[0] == 0
              and all(isinstance(o, int) and not isinstance(o, bool) and o >= 0 for o in off)
              and len(set(off)) == len(off))
        if not ok:
            raise InputValidationError(
                f"method {self.name!r}: seed_offsets = {off!r}; expected a list of at least "
                "two distinct non-negative integers starting with 0 (member seeds s + o)")
        self.hparams["seed_offsets"] = list(off)
