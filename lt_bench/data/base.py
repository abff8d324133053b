"""The dataset interface and its registry."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from lt_bench.registry import Registry


class Dataset:
    """A long-tailed benchmark dataset.

    ``prepare`` writes ``train.txt``, ``val.txt``, ``test.txt`` (``relative/path label``
    per line) and ``classnames.txt`` into ``split_dir``. ``image_root`` says what the
    paths in those lists are relative to.
    """

    name: ClassVar[str]
    num_classes: ClassVar[int]
    #: splits written by prepare; features are extracted for each
    splits: ClassVar[tuple[str, ...]] = ("train", "val", "test")
    #: the split hyper-parameters are tuned on (never the test split)
    tune_split: ClassVar[str] = "val"
    #: per-dataset overrides of head hyper-parameters (e.g. 20 epochs for iNat2018)
    head_overrides: ClassVar[dict[str, Any]] = {}
    #: True where the tune split overlaps train (iNat2018's default policy): knobs of heads
    #: trained on train must then not be tuned on it (post-hoc methods fall back to defaults)
    val_overlaps_train: ClassVar[bool] = False

    def __init__(self, **params: Any):
        self.params = params

    def prepare(self, split_dir: Path) -> None:
        raise NotImplementedError

    def image_root(self, split_dir: Path, data_root: str | None) -> Path:
        """Directory the split-list paths are relative to."""
        raise NotImplementedError


DATASETS: Registry[type[Dataset]] = Registry("dataset")


def get_dataset(name: str, **params: Any) -> Dataset:
    return DATASETS.get(name)(**params)
