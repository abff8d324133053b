"""Plain cross-entropy on a text-initialised cosine head (LIFT's classifier baseline)."""

from lt_bench.methods._base import METHODS
from lt_bench.methods._heads import HeadMethod


@METHODS.register("ce")
class CrossEntropy(HeadMethod):
    name = "ce"
    description = "cosine head, cross-entropy"
