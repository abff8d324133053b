"""Plain cross-entropy on a text-initialised cosine head (LIFT's classifier baseline)."""

from lt_bench.methods._base import METHODS
from lt_bench.methods._heads import HeadMethod


@METHODS.register()
class CrossEntropy(HeadMethod):
    name = "ce"
    display = "CE"
    description = "cosine head, cross-entropy"
