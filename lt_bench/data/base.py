"""The dataset interface and its registry.

Parameters are handled once, here: a dataset class declares the parameters it accepts
and their defaults in :attr:`Dataset.defaults`; ``Dataset.__init__`` refuses any other key
(naming the dataset, the key and the valid keys), fills in the defaults and then calls
:meth:`Dataset.check_params` for per-dataset value checks.
"""

from __future__ import annotations

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


def get_dataset(name: str, **params: Any) -> Dataset:
    return DATASETS.get(name)(**params)
