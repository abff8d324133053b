"""Dataset registry.

A dataset knows how to put its split lists (OLTR format) and ``classnames.txt``
into ``resources/data/{name}/`` and where its images live. Importing this package
registers every built-in dataset.
"""

from __future__ import annotations

from lt_bench.data.base import DATASETS, Dataset, get_dataset

# Registration side effects: each module adds its datasets to DATASETS.
from lt_bench.data import toy  # noqa: E402,F401  isort: skip

try:  # real datasets arrive with the paper suite; keep the toy world importable alone
    from lt_bench.data import real  # noqa: F401
except ImportError:  # pragma: no cover
    pass

__all__ = ["DATASETS", "Dataset", "get_dataset"]
