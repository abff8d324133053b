"""The dataset interface and its registry.

Parameters are handled once, here: a dataset class declares the parameters it accepts
and their defaults in :attr:`Dataset.defaults`; ``Dataset.__init__`` refuses any other key
(naming the dataset, the key and the valid keys), fills in the defaults and then calls
:meth:`Dataset.check_params` for per-dataset value checks.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, ClassVar

from lt_bench.errors import InputValidationError, UserError
from lt_bench.registry import Registry


class DatasetParamError(InputValidationError):
    """A dataset parameter has a value the dataset cannot use."""


class UnknownParamError(DatasetParamError):
    """A dataset was given a parameter it does not know; the message lists the valid ones."""


class DataRootError(UserError, FileNotFoundError):
    """The image root is not set or does not have the expected layout."""


class Dataset:
    """A long-tailed benchmark dataset.

    ``prepare`` writes ``train.txt``, ``val.txt``, ``test.txt`` (``relative/path label``
    per line) and ``classnames.txt`` into ``split_dir`` and then checks them with
    :func:`lt_bench.data.splits.check_split_integrity`. ``image_root`` says what the
    paths in those lists are relative to.
    """

    name: ClassVar[str]
    num_classes: ClassVar[int]
    #: accepted parameters and their defaults (the only keys ``__init__`` accepts)
    defaults: ClassVar[dict[str, Any]] = {}
    #: parameters set by the registered name, not by the user (CIFAR-100-LT's IR)
    fixed_params: ClassVar[dict[str, Any]] = {}
    #: splits written by prepare; features are extracted for each
    splits: ClassVar[tuple[str, ...]] = ("train", "val", "test")
    #: True where the images live under the user's ``data_root`` (the LIFT-list datasets);
    #: False where ``prepare`` writes them beside the split lists (toy world, CIFAR-100-LT)
    needs_data_root: ClassVar[bool] = False
    #: True where prepare writes group_counts.txt: D-groups defined by other counts than the
    #: train split's (CIFAR-100-LT IR 10/50 use IR 100's, as LIFT does)
    writes_group_counts: ClassVar[bool] = False

    def __init__(self, **params: Any):
        unknown = sorted(set(params) - set(self.defaults))
        if unknown:
            fixed = [k for k in unknown if k in self.fixed_params]
            why = (f" ({', '.join(fixed)} is fixed by the name {self.name!r})" if fixed else "")
            raise UnknownParamError(
                f"dataset {self.name!r}: unknown parameter(s) {', '.join(unknown)}{why}; "
                f"valid: {', '.join(sorted(self.defaults)) or '(none)'}"
            )
        self.params: dict[str, Any] = {**self.defaults, **params, **self.fixed_params}
        self.check_params()

    def check_params(self) -> None:
        """Refuse parameter values the dataset cannot use (raise :class:`DatasetParamError`)."""

    @property
    def val_overlaps_train(self) -> bool:
        """True where val.txt images are also in train.txt *with this instance's parameters*
        (iNat2018's default ``val_policy``): knobs of heads trained on train must then not be
        tuned on val (post-hoc methods fall back to defaults). Read it from an instance."""
        return False

    def prepare(self, split_dir: Path) -> None:
        raise NotImplementedError

    def image_root(self, split_dir: Path, data_root: str | None) -> Path:
        """Directory the split-list paths are relative to."""
        raise NotImplementedError


DATASETS: Registry[type[Dataset]] = Registry("dataset")

#: a declared dataset's name: the workflow's ``dataset`` wildcard (workflow/rules/common.smk)
DECLARED_NAME = re.compile(r"^[a-z0-9][a-z0-9_]*$")


def dataset_class(name: str, params: dict[str, Any] | None = None) -> type[Dataset]:
    """The class of dataset ``name``: the registered one, or — where its parameters (its
    ``datasets.<name>`` config entry) have ``type`` — a dataset declared in the config, an
    instance of the registered type under the user's name (``my_lt: {type: oltr_lists,
    ...}``; lt_bench/data/oltr.py). A declared name may not be a registered one."""
    kind = (params or {}).get("type")
    if kind is None:
        return DATASETS.get(name)
    if name in DATASETS:
        raise DatasetParamError(
            f"datasets.{name}: type {kind!r} declares a new dataset, but {name!r} is a "
            f"registered dataset ({DATASETS.origin(name)}); choose another name, or drop "
            f"type to set {name}'s own parameters")
    if not isinstance(name, str) or not DECLARED_NAME.match(name):
        raise DatasetParamError(f"datasets.{name}: a declared dataset's name is lower-case "
                                "letters, digits and '_' (it names folders and jobs)")
    if not isinstance(kind, str) or kind not in DATASETS:
        raise DatasetParamError(f"datasets.{name}: unknown type {kind!r}; valid types: "
                                f"{', '.join(DATASETS.names())}")
    base = DATASETS.get(kind)
    # the user's name in every message and folder; the type's behaviour
    return type(base.__name__, (base,), {"name": name, "__module__": base.__module__})


def get_dataset(name: str, **params: Any) -> Dataset:
    cls = dataset_class(name, params)
    return cls(**{k: v for k, v in params.items() if k != "type"})
