"""Dataset registry.

A dataset knows how to put its split lists (OLTR format) and ``classnames.txt``
into ``resources/data/{name}/`` and where its images live. Importing this package
registers every built-in dataset: the toy world (:mod:`~lt_bench.data.toy`), the
LIFT-list datasets (:mod:`~lt_bench.data.lift`), CIFAR-100-LT
(:mod:`~lt_bench.data.cifar`) and a user's OLTR lists (:mod:`~lt_bench.data.oltr`, the type
of a dataset declared in config.yaml). An import error in any of them surfaces here.
"""

from __future__ import annotations

from lt_bench.data import cifar, lift, oltr, toy  # noqa: F401  (registration side effects)
from lt_bench.data.base import DATASETS, Dataset, dataset_class, get_dataset

__all__ = ["DATASETS", "Dataset", "dataset_class", "get_dataset"]
