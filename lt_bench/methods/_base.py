"""The method interface: a method turns features into a predictor of logits.

"A run produces test logits" is the seam between training and evaluation: whatever a
method does (train a head, adjust another run post hoc, vote with neighbours), it
returns a predictor that maps a split's features to logits, saved in the run folder so
the logits can be rebuilt without retraining.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from lt_bench.features.store import FeatureSplit, TextEmbeddings
from lt_bench.registry import Registry


@dataclass
class FitContext:
    train: FeatureSplit
    val: FeatureSplit
    test: FeatureSplit
    text: TextEmbeddings
    train_counts: np.ndarray
    hparams: dict[str, Any]
    seed: int
    #: estimated pre-training prior q̂ of the backbone (None where not estimated)
    prior: np.ndarray | None = None
    #: predictors of the runs this method builds on, by method name
    base: dict[str, Any] = field(default_factory=dict)
    #: the split knobs are tuned on ("val"; never the test split)
    tune_split: str = "val"
    #: False where the tune split overlaps train (``Dataset.val_overlaps_train``, iNat2018's
    #: default policy): post-hoc knobs then keep their defaults, and the run records it
    tune: bool = True
    #: the features folder the splits were read from (k-NN records its train file)
    features_dir: Path | None = None
    #: temperature T the prior q̂ was estimated at (``q̂`` fits ``z/T``); None without q̂
    prior_temperature: float | None = None

    @property
    def num_classes(self) -> int:
        return len(self.train_counts)

    @property
    def log_prior(self) -> np.ndarray:
        """log π_k of the downstream train split."""
        return np.log(self.train_counts / self.train_counts.sum())

    def split(self, name: str) -> FeatureSplit:
        return {"train": self.train, "val": self.val, "test": self.test}[name]


@dataclass
class FitResult:
    predictor: Any
    #: chosen knobs and anything else worth recording in metrics.json under "info"
    info: dict[str, Any] = field(default_factory=dict)
    #: per-epoch records (train loss, val accuracy) for tracking
    history: list[dict[str, Any]] = field(default_factory=list)


class Method:
    name: ClassVar[str]
    #: every accepted hyper-parameter with its default; others are config errors
    defaults: ClassVar[dict[str, Any]] = {}
    #: methods whose runs (same dataset, backbone, seed) this one reuses
    requires: ClassVar[tuple[str, ...]] = ()
    needs_text: ClassVar[bool] = False
    needs_prior: ClassVar[bool] = False
    description: ClassVar[str] = ""

    def __init__(self, **hparams: Any):
        unknown = set(hparams) - set(self.defaults)
        if unknown:
            raise ValueError(
                f"unknown hyper-parameter(s) {sorted(unknown)} for method {self.name!r}; "
                f"valid: {sorted(self.defaults) or 'none'}")
        self.hparams = {**self.defaults, **hparams}

    def fit(self, ctx: FitContext) -> FitResult:
        raise NotImplementedError


METHODS: Registry[type[Method]] = Registry("method")


def get_method(name: str, **hparams: Any) -> Method:
    return METHODS.get(name)(**hparams)
