"""Classifier re-training (Kang et al. 2020): the CE head re-trained with class-balanced
sampling, starting from the ``ce`` run's weights (LIFT's head recipe otherwise).

The frozen features are the representation; only the classifier is re-learned, on
batches where every class is equally likely. The start is always the CE head, so ``init``
is not a hyper-parameter of crt.
"""

from typing import Any, ClassVar

import numpy as np

from lt_bench.methods._base import METHODS, FitContext
from lt_bench.methods._heads import HEAD_DEFAULTS, HeadMethod
from lt_bench.methods._reuse import base_linear


@METHODS.register("crt")
class ClassifierRetraining(HeadMethod):
    name = "crt"
    defaults: ClassVar[dict[str, Any]] = {
        **{k: v for k, v in HEAD_DEFAULTS.items() if k != "init"}, "sampler": "class_balanced"}
    requires = ("ce",)
    description = "CE head re-trained with class-balanced sampling (init: the ce run)"

    def init_weight(self, ctx: FitContext, rng: np.random.Generator) -> np.ndarray:
        ce = base_linear(ctx, self.name, "ce")
        if len(ce.terms) != 1:
            raise ValueError(f"crt: the ce run's predictor has {len(ce.terms)} terms; "
                             "expected one cosine head")
        return ce.terms[0].weight.astype(np.float32).copy()
