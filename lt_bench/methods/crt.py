"""Classifier re-training (Kang et al. 2020): a classifier re-initialised and re-trained
with class-balanced sampling on the frozen representation.

classifier-balancing's ``config/ImageNet_LT/stage_2/cls_crt.yaml`` sets
``stage1_weights: false`` for the classifier: stage 2 starts from a fresh classifier, not
from the stage-1 (CE) one. With frozen CLIP features the representation *is* the stage-1
result, so cRT here is a cosine head trained from a random initialisation
(``init: random``, N(0, 0.01²) rows; the cosine head ignores their scale) on class-balanced
batches, with LIFT's head recipe otherwise. ``init: text`` (the CLIP text init) is an
option, recorded as a deviation from the reference in docs/protocol.md.
"""

from typing import Any, ClassVar

from lt_bench.methods._base import METHODS
from lt_bench.methods._heads import HEAD_DEFAULTS, HeadMethod


@METHODS.register("crt")
class ClassifierRetraining(HeadMethod):
    name = "crt"
    defaults: ClassVar[dict[str, Any]] = {**HEAD_DEFAULTS, "init": "random",
                                          "sampler": "class_balanced"}
    description = "classifier re-initialised, re-trained with class-balanced sampling"
