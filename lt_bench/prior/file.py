"""The prior file: one schema, one writer, one reader that validates (docs/architecture.md §3).

Written by ``lt-bench prior`` (``results/prior/{dataset}/{backbone}.parquet``, q̂ of a
backbone on a dataset's val split) and by toy pre-training
(``results/backbones/{backbone}/prior.parquet``: the toy CLIP's true prior and its q̂ on
fresh balanced images of the pre-training world). Columns:

- ``label`` int32: one row per class, labels 0..K−1;
- ``q_hat`` float64: the estimated prior, finite, > 0, summing to 1;
- ``q_true`` float64, optional: the known pre-training prior (toy CLIPs), same checks;
- ``q_hat_{view}`` float64, optional: q̂ estimated on another val view of the features
  (``centre`` / ``fivecrop``, ``lt_bench.features.eval_views.split_view``) than ``q_hat``'s,
  where the features hold both (``extract.tte: fivecrop`` or ``both``); its T under
  ``views.{view}.temperature`` in the metadata. A run reads the q̂ of the view it reports
  (:meth:`PriorFile.of_view`).

Schema metadata ``lt_bench`` (JSON): ``temperature`` T, ``dataset``, ``backbone``, ``view``
(of ``q_hat``; files without it were estimated on the features' default view) and how
q̂ was estimated. Runs, the report and toy pre-training read and write it only here.

Older toy CLIPs wrote their true prior alone (``label``, ``classname``, ``prior``); that
file is still read as a true prior (:func:`read_true_prior`), so a results folder made
before the one schema needs no rerun.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lt_bench.errors import InputValidationError

#: q̂ and q_true must sum to 1 within this (a softmax, stored as float64)
SUM_TOLERANCE = 1e-6
#: the true-prior column of toy CLIPs pre-trained before the one schema
LEGACY_TRUE_COLUMN = "prior"
_SCHEMA = "label, q_hat and optionally q_true, as `lt-bench prior` writes"


@dataclass
class PriorFile:
    """A validated prior file: q̂ per class (label order), its temperature, q_true if known."""

    path: Path
    q_hat: np.ndarray
    temperature: float | None
    q_true: np.ndarray | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    #: q̂ and T of the other val views (``q_hat_{view}`` columns), by view
    views: dict[str, tuple[np.ndarray, float | None]] = field(default_factory=dict)

    def of_view(self, view: str, default_view: str, used_with: str = "the run"
                ) -> tuple[np.ndarray, float | None]:
        """(q̂, T) estimated on ``view`` of the val features; ``q_hat`` is of the file's
        ``view`` (``default_view``, the features' own, for files that do not record it).
        One line naming the file and the fix where it holds no estimate of ``view``."""
        if view == self.meta.get("view", default_view):
            return self.q_hat, self.temperature
        if view in self.views:
            return self.views[view]
        raise InputValidationError(
            f"prior file {self.path} holds q̂ of the {self.meta.get('view', default_view)} "
            f"view only; {used_with} reads the {view} view: re-estimate it with `lt-bench "
            "prior` from features with both views (extract.tte: both)")


def check_distribution(q: np.ndarray, what: str, where: str | Path) -> np.ndarray:
    """``q`` as float64 if every entry is finite and > 0 and they sum to 1; else one line
    naming ``where`` and the first offending class (a q̂ of 0 gives log 0: a "finished"
    run at chance)."""
    q = np.asarray(q, dtype=np.float64)
    bad = np.flatnonzero(~np.isfinite(q) | (q <= 0))
    if len(bad):
        raise InputValidationError(
            f"prior file {where}: {what} must be finite and > 0 for every class; "
            f"{len(bad)} class(es) are not, e.g. label {int(bad[0])} = {q[bad[0]]!r}")
    if abs(q.sum() - 1.0) > SUM_TOLERANCE:
        raise InputValidationError(f"prior file {where}: {what} sums to {q.sum():.9g}, "
                                   f"expected 1 (within {SUM_TOLERANCE:g})")
    return q


def write_prior(out: Path | str, q_hat: np.ndarray, meta: dict[str, Any],
                q_true: np.ndarray | None = None,
                views: dict[str, np.ndarray] | None = None) -> None:
    """Write a prior file atomically; refuses what :func:`read_prior` would refuse.
    ``views``: q̂ of other val views (``q_hat_{view}`` columns; their T in
    ``meta["views"]``)."""
    import pyarrow as pa

    from lt_bench.features.store import META_KEY, write_table

    q_hat = check_distribution(q_hat, "q_hat", out)
    cols = {"label": pa.array(np.arange(len(q_hat), dtype=np.int32)), "q_hat": pa.array(q_hat)}
    if q_true is not None:
        q_true = check_distribution(q_true, "q_true", out)
        if len(q_true) != len(q_hat):
            raise InputValidationError(f"prior file {out}: q_true has {len(q_true)} classes, "
                                       f"q_hat {len(q_hat)}")
        cols["q_true"] = pa.array(q_true)
    for name, q in (views or {}).items():
        q = check_distribution(q, f"q_hat_{name}", out)
        if len(q) != len(q_hat):
            raise InputValidationError(f"prior file {out}: q_hat_{name} has {len(q)} classes, "
                                       f"q_hat {len(q_hat)}")
        cols[f"q_hat_{name}"] = pa.array(q)
    table = pa.table(cols).replace_schema_metadata(
        {META_KEY: json.dumps(meta, sort_keys=True, default=str)})
    write_table(table, out)


def read_prior_meta(path: Path | str) -> dict[str, Any]:
    """The ``lt_bench`` schema metadata of a prior file ({} where it has none)."""
    import pyarrow.parquet as pq

    from lt_bench.features.store import META_KEY  # one key for every lt-bench Parquet file

    raw = (pq.read_schema(path).metadata or {}).get(META_KEY)
    if raw is None:
        return {}
    try:
        return json.loads(raw)
    except json.JSONDecodeError as e:
        raise InputValidationError(f"{path}: schema metadata 'lt_bench' is not JSON ({e}); "
                                   "expected the prior file of `lt-bench prior`") from e


def _load(path: Path):
    import pyarrow.parquet as pq

    if not path.is_file():
        raise InputValidationError(f"prior file not found: {path} (made by `lt-bench prior`)")
    try:
        with pq.ParquetFile(path) as f:  # not pandas: this is on every run's start-up path
            return f.read()
    except Exception as e:  # pyarrow raises several types for a damaged file
        raise InputValidationError(f"prior file {path} is not a readable Parquet file ({e}); "
                                   "delete it and rerun `lt-bench prior`") from e


def _label_order(table, path: Path, num_classes: int | None) -> np.ndarray:
    """Row order that sorts the labels, after checking they are exactly 0..K−1."""
    from lt_bench.features.store import column_numpy

    order = np.argsort(column_numpy(table.column("label")), kind="stable")
    labels = column_numpy(table.column("label"))[order]
    k = table.num_rows if num_classes is None else int(num_classes)
    if table.num_rows != k or not np.array_equal(labels, np.arange(k)):
        raise InputValidationError(
            f"prior file {path}: expected one row per class with labels 0..{k - 1}, got "
            f"{table.num_rows} rows (labels {labels[:3].tolist()}…{labels[-3:].tolist()})")
    return order


def _column(table, name: str, order: np.ndarray, path: Path) -> np.ndarray:
    from lt_bench.features.store import column_numpy

    return check_distribution(column_numpy(table.column(name)).astype(np.float64)[order],
                              name, path)


def _check_identity(meta: dict[str, Any], path: Path, dataset: str | None,
                    backbone: str | None, used_with: str | Path | None) -> None:
    for key, want in (("dataset", dataset), ("backbone", backbone)):
        got = meta.get(key)
        if want is not None and got is not None and got != want:
            raise InputValidationError(
                f"prior file {path} was estimated for {key} {got!r}, but "
                f"{used_with or 'the run'} is of {key} {want!r}; use that {key}'s prior "
                f"(results/prior/{dataset or '{dataset}'}/{backbone or '{backbone}'}.parquet)")


def read_prior(path: Path | str, num_classes: int | None = None, *,
               dataset: str | None = None, backbone: str | None = None,
               used_with: str | Path | None = None) -> PriorFile:
    """Read and check a prior file: one entry per class with labels 0..K−1, every q̂ (and
    q_true, where present) finite and > 0, summing to 1. A prior that fails any of these
    would give a "finished" run at chance (log 0) — refuse it here. ``dataset``/``backbone``
    (of the features ``used_with``) must be the ones the file records (a file without them
    is read as before): another backbone's q̂ gives a finished run with its P-groups
    inverted."""
    path = Path(path)
    table = _load(path)
    if not {"label", "q_hat"} <= set(table.column_names):
        raise InputValidationError(f"prior file {path}: columns {table.column_names}; "
                                   f"expected {_SCHEMA}")
    order = _label_order(table, path, num_classes)
    q_hat = _column(table, "q_hat", order, path)
    meta = read_prior_meta(path)
    _check_identity(meta, path, dataset, backbone, used_with)
    q_true = (_column(table, "q_true", order, path) if "q_true" in table.column_names
              else None)
    views = {c.removeprefix("q_hat_"): (_column(table, c, order, path),
                                         (meta.get("views") or {}).get(
                                             c.removeprefix("q_hat_"), {}).get("temperature"))
             for c in table.column_names if c.startswith("q_hat_")}
    return PriorFile(path, q_hat, meta.get("temperature"), q_true, meta, views)


def read_true_prior(path: Path | str, num_classes: int | None = None) -> np.ndarray:
    """The known pre-training prior of a prior file (its ``q_true``), in label order; a toy
    CLIP's file from before the one schema (``label``, ``prior``) is read the same way."""
    path = Path(path)
    table = _load(path)
    cols = set(table.column_names)
    name = "q_true" if "q_true" in cols else LEGACY_TRUE_COLUMN
    if not {"label", name} <= cols:
        raise InputValidationError(f"prior file {path}: columns {table.column_names}; a true "
                                   "prior needs label and q_true (a toy CLIP's prior.parquet)")
    return _column(table, name, _label_order(table, path, num_classes), path)
