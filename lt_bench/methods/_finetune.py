"""The base of methods that consume images: a backbone fine-tuned with a PEFT module and a
cosine head (the paper's and LIFT's protocol), trained with a loss of the head track.

A subclass names its PEFT module (``peft``) and its loss (``loss``: the name of a head
method, e.g. ``la``), so one definition of each loss serves both tracks: the run layer
instantiates that head method with ``loss_params`` and trains with its ``loss``. The
engine (``lt_bench.finetune``) and its defaults (LIFT's recipe) are below this floor.
"""

from __future__ import annotations

from typing import Any, ClassVar

from lt_bench.errors import InputValidationError
from lt_bench.finetune.loop import FINETUNE_DEFAULTS
from lt_bench.methods._base import METHODS, Method, RunsMethod

#: keys of a fine-tuned method that are not the engine's
OWN_KEYS = ("loss", "loss_params")


class FinetuneMethod(Method):
    consumes: ClassVar[str] = "images"
    peft: ClassVar[str] = "adaptformer"
    loss: ClassVar[str] = "la"

    def __init_subclass__(cls, **kw):
        super().__init_subclass__(**kw)
        cls.defaults = {**FINETUNE_DEFAULTS, "peft": cls.peft, "loss": cls.loss,
                        "loss_params": {}}

    def validate(self) -> None:
        from lt_bench.finetune.options import resolve_hparams  # no torch: the plan validates
        from lt_bench.methods._heads import HeadMethod

        resolve_hparams(self.engine_hparams())  # refuses bad values with the key's name
        loss = self.hparams["loss"]
        if loss not in METHODS or not issubclass(METHODS.get(loss), HeadMethod):
            heads = [n for n, c in METHODS.items() if issubclass(c, HeadMethod)]
            raise InputValidationError(f"method {self.name!r}: loss = {loss!r} is not a head "
                                       f"method; valid: {', '.join(heads)}")
        if not isinstance(self.hparams["loss_params"], dict):
            raise InputValidationError(f"method {self.name!r}: loss_params must be a mapping")

    def engine_hparams(self) -> dict[str, Any]:
        return {k: v for k, v in self.hparams.items() if k not in OWN_KEYS}

    def loss_method(self):
        """The head method whose loss this run trains with (its own knobs: loss_params)."""
        return METHODS.get(self.hparams["loss"])(**self.hparams["loss_params"])


class FinetunedViewMethod(RunsMethod):
    """A run made from one finished fine-tuning's stored features and head, no training:
    another view of it (the five-crop TTE row) or a k-NN probe of its features.

    It consumes runs with one member: the ``members`` method's run of the same backbone and
    seed (planned like the same-backbone control, ``vary = "seed"`` with ``seed_offsets
    [0]``), so the TTE-off and TTE-on rows come from one fine-tuning.
    """

    vary: ClassVar[str] = "seed"
    min_members: ClassVar[int] = 1
    #: the run layer builds it from its member's stored files (not an ensemble rule)
    derived: ClassVar[bool] = True

    def validate(self) -> None:
        members = self.hparams["members"]
        if not isinstance(members, str) or not members:
            raise InputValidationError(f"method {self.name!r}: members must be a method name "
                                       f"(e.g. 'adaptformer_la'), got {members!r}")
        if list(self.hparams["seed_offsets"]) != [0]:
            raise InputValidationError(f"method {self.name!r}: seed_offsets must be [0] (one "
                                       "member: the fine-tuning of the same seed)")
