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
from lt_bench.methods._base import METHODS, Method

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
        from lt_bench.finetune.loop import resolve_hparams
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
