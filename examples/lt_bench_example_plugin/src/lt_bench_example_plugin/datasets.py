"""``toy_tiny``: the toy world at a size that runs in seconds (10 classes, 40 → 4 images).

A plugin dataset is a registered ``Dataset`` subclass (lt_bench/data/base.py): ``defaults``
(its accepted parameters), ``prepare`` (write checked split lists) and ``image_root``. This
one only changes the toy world's defaults; a user's own split lists need no plugin: declare
them in config.yaml's ``datasets:`` with ``type: oltr_lists``.
"""

from typing import Any, ClassVar

from lt_bench.data.base import DATASETS
from lt_bench.data.toy import ToyDataset


@DATASETS.register("toy_tiny")
class ToyTiny(ToyDataset):
    """The toy world with 10 classes and 40 → 4 training images (example plugin)."""

    name = "toy_tiny"
    defaults: ClassVar[dict[str, Any]] = {**ToyDataset.defaults, "num_classes": 10,
                                          "max_per_class": 40, "imbalance": 10,
                                          "val_per_class": 4, "test_per_class": 8}
