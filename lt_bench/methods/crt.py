"""Classifier re-training (Kang et al. 2020): a classifier re-initialised and re-trained
with class-aware sampling on the frozen representation.

classifier-balancing's ``config/ImageNet_LT/cls_crt.yaml`` sets ``stage1_weights: false``
for the classifier (stage 2 starts from a fresh classifier, not from the stage-1 CE one)
and ``sampler: ClassAwareSampler, num_samples_cls: 4`` (``data/ClassAwareSampler.py``: an
epoch of ``max_c n_c × K`` draws, 4 consecutive images of a class at a time). With frozen
CLIP features the representation *is* the stage-1 result, so cRT here is a cosine head
trained from LIFT's random initialisation (``init: random``: U(−1, 1) rows scaled to unit
norm, LIFT ``models/classifiers.py``) with that sampler (``sampler: class_aware``), and
LIFT's head recipe otherwise (lr 0.01, batch 128, cosine head, 10 epochs; the reference's
lr 0.2 / batch 512 linear + bias classifier is listed in docs/protocol.md).

The initial rows' norm is not irrelevant to a cosine head: its logits ignore it, but the
gradient of ``w/‖w‖`` scales with ``1/‖w‖``, so rows of norm ≈ 0.28 (N(0, 0.01²) at
D = 768) turn ≈ 13× further in one SGD step than unit-norm rows.
``init: text`` (the CLIP text init) and ``sampler: class_balanced`` (i.i.d. class-balanced
draws, N per epoch: our earlier recipe) are options, recorded as deviations.
"""

from typing import Any, ClassVar

from lt_bench.methods._base import METHODS
from lt_bench.methods._heads import HEAD_DEFAULTS, HeadMethod


@METHODS.register()
class ClassifierRetraining(HeadMethod):
    name = "crt"
    display = "cRT"
    defaults: ClassVar[dict[str, Any]] = {**HEAD_DEFAULTS, "init": "random",
                                          "sampler": "class_aware", "num_samples_cls": 4}
    description = "classifier re-initialised, re-trained with class-aware sampling"
