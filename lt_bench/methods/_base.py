"""The method interface and its registry.

"A run produces logits per split" is the seam between training and evaluation
(docs/architecture.md, "The seam"). A method says what it consumes (``consumes``):

``"features"``
    cached frozen features of one (dataset, backbone): ``fit(ctx)`` returns a predictor
    (a linear map or a k-NN vote over those features) that the run layer saves;
``"runs"``
    finished runs (ensembles such as the backdoor adjustment, views of a fine-tuning):
    a :class:`RunsMethod` declares which (its members), the run layer reads them;
``"images"``
    the images themselves (fine-tuning a backbone): the run layer's fine-tuning driver
    trains it and stores the val/test logits.

The run layer (``lt_bench.runs``) routes on ``consumes`` (one verb each: ``fit``, ``combine``,
``finetune``); the plan asks it only to place a run in a job. This module imports no torch, so planning a workflow and ``lt-bench list
methods`` stay fast.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from lt_bench.errors import InputValidationError
from lt_bench.registry import Registry

if TYPE_CHECKING:
    from lt_bench.features.store import FeatureSplit, TextEmbeddings

CONSUMES = ("features", "runs", "images")


@dataclass
class FitContext:
    """What a features-consuming method may look at. The test split is not here: nothing
    may be tuned on it, so nothing sees it."""

    train: FeatureSplit
    val: FeatureSplit
    text: TextEmbeddings
    train_counts: np.ndarray
    seed: int
    #: the backbone's estimated *pre-training* label prior q̂ (GLA), None where not estimated
    pretrain_prior: np.ndarray | None = None
    #: temperature T that q̂ was fitted at (q̂ fits ``z/T``); None without q̂
    pretrain_prior_temperature: float | None = None
    #: predictors of the finished runs this method builds on, by method name
    base_predictors: dict[str, Any] = field(default_factory=dict)
    #: False where val overlaps train (``Dataset.val_overlaps_train``, iNat2018's default
    #: policy): knobs then keep their defaults, and the run records it
    tune: bool = True
    #: the features folder the splits were read from (k-NN records its train file)
    features_dir: Path | None = None
    #: "cpu", "cuda", "cuda:1": where trained heads run (the run layer picks it)
    device: str = "cpu"
    #: (V, N, D) cached augmented views of the train images (``extract.train_views``), or None
    train_views: np.ndarray | None = None
    #: arrays already moved to ``device``, shared by the runs of one job (id -> (array, tensor))
    device_memo: dict = field(default_factory=dict, repr=False)

    def on_device(self, array: np.ndarray):
        """``array`` as a tensor on ``device``, copied once per job (the heads of one
        dataset/backbone/seed share the features; on a GPU each copy is ~N x D x 4 bytes)."""
        import torch

        hit = self.device_memo.get(id(array))
        if hit is None or hit[0] is not array:
            hit = (array, torch.from_numpy(array).to(self.device))
            self.device_memo[id(array)] = hit
        return hit[1]

    @property
    def num_classes(self) -> int:
        return len(self.train_counts)

    @property
    def log_train_prior(self) -> np.ndarray:
        """log π_k of the *downstream* train split (every class has ≥ 1 image: the data
        stage refuses empty classes)."""
        return np.log(self.train_counts / self.train_counts.sum())


@dataclass
class FitResult:
    predictor: Any
    #: chosen knobs and anything else worth recording in metrics.json under "info"
    info: dict[str, Any] = field(default_factory=dict)
    #: per-epoch records (train loss, val accuracy) for tracking
    history: list[dict[str, Any]] = field(default_factory=list)


class Method:
    #: the registered name, written once (``@METHODS.register()`` reads it)
    name: ClassVar[str]
    #: the name in the tables ("LA"); None: the name itself (a plugin that sets none)
    display: ClassVar[str | None] = None
    #: the registered method a config variant was declared from (lt_bench.methods._variants)
    variant_of: ClassVar[str | None] = None
    #: what the method is computed from: "features", "runs" or "images" (see module doc)
    consumes: ClassVar[str] = "features"
    #: every accepted hyper-parameter with its default; others are config errors
    defaults: ClassVar[dict[str, Any]] = {}
    #: methods whose runs (same dataset, backbone, seed) this one reuses
    requires: ClassVar[tuple[str, ...]] = ()
    needs_prior: ClassVar[bool] = False
    description: ClassVar[str] = ""

    def __init__(self, **hparams: Any):
        unknown = set(hparams) - set(self.defaults)
        if unknown:
            raise InputValidationError(
                f"unknown hyper-parameter(s) {sorted(unknown)} for method {self.name!r}; "
                f"valid: {sorted(self.defaults) or 'none'}")
        self.hparams = {**self.defaults, **hparams}
        self.validate()

    def validate(self) -> None:
        """Check hyper-parameter values (types and ranges); raise an InputValidationError naming the key."""

    def fit(self, ctx: FitContext) -> FitResult:
        raise NotImplementedError


#: the backbone label (and folder) of a run whose members are runs of several backbones
ENSEMBLE_BACKBONE = "ensemble"
#: (dataset, backbone, method, seed): the identity of a run, and of its folder
RunKey = tuple[str, str, str, int]
#: the identity fields of a run; a runs-consuming method's members differ in its ``vary``
IDENTITY = ("method", "backbone", "seed")


class RunsMethod(Method):
    """A method computed from finished runs, its **members**, which it declares: the plan
    plans them and the run layer checks them through :meth:`member_keys` and
    :meth:`run_seed`; nothing else decides which runs a run of it combines.

    ``vary`` is its member axis, the one identity field its members differ in: over
    ``"backbone"`` one run per suite backbone (at least ``min_members``; its own run is
    backbone ``ensemble``), over ``"seed"`` runs of one backbone at seeds ``s + o`` for
    ``o`` in the ``seed_offsets`` hyper-parameter (its run is that backbone's, seed s).
    The ``members`` hyper-parameter names the member runs' method.
    """

    consumes: ClassVar[str] = "runs"
    vary: ClassVar[str] = "backbone"
    #: the fewest member runs a run of it combines
    min_members: ClassVar[int] = 2
    #: made by the fine-tuning's driver from its one member's stored files (a view of a
    #: fine-tuning: lt_bench.runs.finetune), not combined by an ensemble's rule
    derived: ClassVar[bool] = False

    @property
    def member_method(self) -> str:
        return self.hparams["members"]

    def backbones(self, suite_backbones: list[str]) -> list[str]:
        """The backbone labels of its runs in a suite of ``suite_backbones``."""
        if self.vary == "seed":
            return list(suite_backbones)
        return [ENSEMBLE_BACKBONE] if len(suite_backbones) >= self.min_members else []

    def member_keys(self, dataset: str, backbone: str, seed: int,
                    suite_backbones: list[str]) -> list[RunKey]:
        """The member runs, in order, of its run (dataset, backbone, seed) in a suite."""
        m = self.member_method
        if self.vary == "seed":
            return [(dataset, backbone, m, int(seed) + int(o))
                    for o in self.hparams["seed_offsets"]]
        return [(dataset, b, m, int(seed)) for b in suite_backbones]

    def run_seed(self, member_seeds: list[int]) -> int:
        """Its run's seed, from its members' seeds in order: their common seed (over
        backbones) or the first's, ``s``, where the others must be ``s + o`` (over seeds)."""
        if self.vary != "seed":
            return member_seeds[0]
        offsets = list(self.hparams["seed_offsets"])
        base = member_seeds[0]
        want = [base + int(o) for o in offsets] if isinstance(base, int) else None
        if want != list(member_seeds):
            raise InputValidationError(
                f"method {self.name!r}: member seeds {list(member_seeds)} do not follow "
                f"seed_offsets {offsets}; expected seeds {want or '[s + o ...]'} with s the "
                "first member's seed")
        return base

    def validate(self) -> None:
        members = self.hparams.get("members")
        if not isinstance(members, str) or not members:
            raise InputValidationError(f"method {self.name!r}: members must be a method name "
                                       f"(e.g. 'la'), got {members!r}")
        if self.vary not in IDENTITY:
            raise InputValidationError(f"method {self.name!r}: vary = {self.vary!r}; "
                                       f"valid: {', '.join(IDENTITY)}")


METHODS: Registry[type[Method]] = Registry("method")


def get_method(name: str, **hparams: Any) -> Method:
    return METHODS.get(name)(**hparams)


def display_of(cls: type[Method]) -> str:
    """The name of a method's rows in the tables: its ``display``, else its name."""
    return cls.display if isinstance(cls.display, str) and cls.display else cls.name


#: the largest integer hyper-parameter (epochs, batch sizes, k) accepted without a bound of
#: its own: above it a value is a typo, not a setting
INT_MAXIMUM = 1_000_000


def check_number(method: str, key: str, value: Any, *, minimum: float | None = None,
                 above: float | None = None, maximum: float | None = None,
                 integer: bool = False, allow_none: bool = False) -> None:
    """One message for every bad hyper-parameter value: names method, key, value, range."""
    if value is None and allow_none:
        return
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if integer:
        # an integer is an int: JSON's 1e12 is a float, and range(1e12) is a TypeError
        ok = ok and isinstance(value, int)
        maximum = INT_MAXIMUM if maximum is None else maximum
    if ok:
        ok = ((minimum is None or value >= minimum) and (above is None or value > above)
              and (maximum is None or value <= maximum) and np.isfinite(value))
    if not ok:
        want = ["an integer" if integer else "a number"]
        if above is not None:
            want.append(f"> {above}")
        if minimum is not None:
            want.append(f">= {minimum}")
        if maximum is not None:
            want.append(f"<= {maximum}")
        if allow_none:
            want.append("or null")
        raise InputValidationError(f"method {method!r}: hyper-parameter {key} = {value!r} is invalid; "
                        f"expected {' '.join(want)}")
