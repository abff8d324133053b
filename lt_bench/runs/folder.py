"""The run folder's files: the one writer every run finishes with, and their readers.

A run folder (laid out by :mod:`lt_bench.runs.layout`; read as a whole through
:class:`lt_bench.runs.run_folder.RunFolder`) holds ``config.json`` (resolved method,
hyper-parameters, inputs with their hashes, git commit), ``history.json``,
``per_class.parquet``, what rebuilds the logits (``predictor.json``, written through
``lt_bench.predictor_spec``, + ``predictor.safetensors``; fine-tuning: the stored pre-head
``features_{split}.parquet`` and the head in ``trainable.safetensors``, ``runs.stored``)
and, written last, ``metrics.json``: its presence marks a finished run
(docs/architecture.md, "File contracts").
"""

from __future__ import annotations

import logging
import os
import platform
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np

from lt_bench.errors import InputValidationError, MissingInputError
from lt_bench.io import atomic_path, read_json, write_json

# the layout, the runs index and the stored files have their own modules; re-exported
# here for the callers that import them from this module
from lt_bench.runs.index import (  # noqa: F401
    RUNS_INDEX,
    report_run_dirs,
    selected_run_dirs,
    write_runs_index,
)
from lt_bench.runs.layout import (  # noqa: F401
    CONFIG_JSON,
    METRICS_JSON,
    find_run_dirs,
    logits_path,
    predictions_path,
    project_root_of,
    resolve_recorded,
    run_dir,
    run_features_path,
)
from lt_bench.runs.stored import (  # noqa: F401
    FEATURE_VIEWS,
    arrow_column,
    read_logits,
    read_predictions,
    read_run_features,
    write_logits,
    write_predictions,
    write_run_features,
)

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
#: the splits a run is evaluated on (val for tuning checks, test for the tables)
EVAL_SPLITS = ("val", "test")


def git_commit(where: str | os.PathLike | None = None) -> str | None:
    """The commit of the checkout this code runs from (provenance), None outside git."""
    where = where or Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "-C", str(where), "rev-parse", "HEAD"], text=True,
                             capture_output=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def check_logits(name: str, split: str, labels: np.ndarray, logits: np.ndarray,
                 num_classes: int) -> None:
    check_labels(labels, num_classes, f"{name}: {split} labels")
    if logits.ndim != 2 or logits.shape != (len(labels), num_classes):
        raise InputValidationError(f"{name}: {split} logits have shape {logits.shape}, "
                                   f"expected ({len(labels)}, {num_classes})")
    bad = ~np.isfinite(logits).all(1)
    if bad.any():
        raise InputValidationError(
            f"{name}: {int(bad.sum())} {split} row(s) have non-finite logits (first row "
            f"{int(np.flatnonzero(bad)[0])}); check the features and the prior for NaN/inf/0")


def check_labels(labels, num_classes: int, where: str) -> None:
    """Every label in ``0..K-1`` (K classes of text.parquet / classnames.txt): a split list
    edited after `prepare` gives features whose labels index past the classes."""
    labels = np.asarray(labels, dtype=np.int64)
    bad = np.flatnonzero((labels < 0) | (labels >= num_classes))
    if bad.size:
        raise InputValidationError(
            f"{where}: label {int(labels[bad[0]])} (row {int(bad[0])}; {bad.size} row(s) in "
            f"all) is out of range [0, {num_classes}) for the {num_classes} classes; was the "
            "split list edited after `lt-bench prepare`? Prepare and extract again")


def train_counts_of(labels, classnames: list[str], where: str) -> np.ndarray:
    """Per-class train counts; every class must have an image (log π would be −∞)."""
    check_labels(labels, len(classnames), where)
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=len(classnames))
    empty = np.flatnonzero(counts == 0)
    if len(empty):
        raise InputValidationError(
            f"{where}: {len(empty)} class(es) have no training image "
            f"(e.g. {[(int(c), classnames[c]) for c in empty[:5]]}); log π would be −∞")
    return counts


def write_run(out_dir: Path, logits_by_split: dict[str, tuple[np.ndarray, np.ndarray]], *,
              train_counts: np.ndarray, config: dict[str, Any], info: dict[str, Any],
              history: list[dict[str, Any]] | None = None, pretrain_prior=None,
              group_counts: np.ndarray | None = None, started_at: float | None = None,
              extra_metrics: dict[str, Any] | None = None) -> dict[str, Any]:
    """Finish a run of any kind: evaluate the val and test logits, write config.json,
    history.json, per_class.parquet, the val/test predictions (``predictions_{split}``:
    the arg-max of exactly these logits, read by significance instead of rebuilding them)
    and, last, metrics.json. ``group_counts`` define the D-groups where they differ from
    the train counts (CIFAR-100-LT IR 10/50: IR-100's)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from lt_bench.metrics import evaluate

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    k = len(train_counts)
    for split in EVAL_SPLITS:
        labels, z = logits_by_split[split]
        check_logits(str(out_dir), split, np.asarray(labels), np.asarray(z), k)
    config = {**config, "git_commit": git_commit(), "platform": platform.platform()}
    write_json(out_dir / "config.json", config)
    write_json(out_dir / "history.json", history or [])
    groups = train_counts if group_counts is None else group_counts
    for split in EVAL_SPLITS:
        write_predictions(*logits_by_split[split], predictions_path(out_dir, split))
    y_val, z_val = logits_by_split["val"]
    y_test, z_test = logits_by_split["test"]
    val_m, _ = evaluate(z_val, y_val, groups, pretrain_prior)
    test_m, per_class = evaluate(z_test, y_test, groups, pretrain_prior)
    per_class["train_count"] = np.asarray(train_counts)
    with atomic_path(out_dir / "per_class.parquet") as tmp:
        pq.write_table(pa.Table.from_arrays([arrow_column(v) for v in per_class.values()],
                                            names=list(per_class)), tmp)
    finished = time.time()
    metrics = {**test_m, "val_top1": val_m["top1"], "n_train": int(np.sum(train_counts)),
               "train_seconds": float(info.get("train_seconds", info.get("fit_seconds", 0.0))),
               **(extra_metrics or {}),
               "info": info, "method": config["method"], "dataset": config["dataset"],
               "backbone": config["backbone"], "seed": config["seed"],
               "started_at": float(started_at if started_at is not None else finished),
               "finished_at": finished}
    write_json(out_dir / "metrics.json", metrics)
    knobs = {k: info[k] for k in ("tau", "k", "temperature_la", "weights") if k in info}
    # the one-line summary that ends the rule's log
    log.info("%s done in %.1f s: val top1 %.4f, test top1 %.4f (many %s, medium %s, few %s)%s",
             out_dir, finished - metrics["started_at"], metrics["val_top1"], metrics["top1"],
             metrics["many"], metrics["medium"], metrics["few"],
             f", chosen on val: {knobs}" if knobs else "")
    return metrics


#: every file a run of any kind writes into its folder (features, ensembles,
#: fine-tuning with its resume state); with hidden ``.*.part`` temp files, the entries a
#: folder may hold and still be one of our run folders (:func:`is_run_folder`)
RUN_FILES = frozenset({
    "config.json", "history.json", "metrics.json", "per_class.parquet", "predictor.json",
    "predictor.safetensors", "trainable.safetensors", "finetune_state.pt",
    *(f"logits_{s}.parquet" for s in SPLITS),
    # a fine-tuning's stored pre-head features (runs.stored) and every run's predictions
    *(f"features_{s}.parquet" for s in EVAL_SPLITS),
    *(f"predictions_{s}.parquet" for s in EVAL_SPLITS)})


def is_run_folder(folder: Path) -> bool:
    """A folder lt-bench wrote a run into (finished or not): its config.json is a run's,
    or (a run stopped before writing it) every entry is a run file or a hidden temp file."""
    folder = Path(folder)
    cfg = folder / "config.json"
    if cfg.is_file():
        try:
            c = read_json(cfg)
        except InputValidationError:
            return False
        if not (isinstance(c, dict) and {"method", "dataset"} <= set(c)):
            return False
    return all(p.name in RUN_FILES or (p.name.startswith(".") and p.name.endswith(".part"))
               for p in folder.iterdir())


def check_run_outs(outs: list[str | os.PathLike]) -> None:
    """The run folders a command is about to write, checked before anything is computed:
    none a user's non-empty folder (their config.json would be overwritten), no two runs
    sharing one folder (the second would replace the first)."""
    from lt_bench.io import check_output_folder

    seen: dict[Path, int] = {}
    for i, out in enumerate(outs):
        key = Path(os.path.abspath(out)).resolve()
        if key in seen:
            raise InputValidationError(
                f"--runs[{seen[key]}] and --runs[{i}] share the out folder {out}; expected "
                "one folder per run (the second would replace the first)")
        seen[key] = i
        check_output_folder(out, is_run_folder, "run folder")


def unfinish(out_dir: Path) -> None:
    """A rerun is unfinished until it ends: drop the old metrics.json first (never in a
    folder that is not one of our run folders: :func:`check_run_outs`)."""
    check_run_outs([out_dir])
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    (Path(out_dir) / "metrics.json").unlink(missing_ok=True)


def read_run_config(run_path: Path) -> dict[str, Any]:
    cfg = Path(run_path) / "config.json"
    if not cfg.is_file():
        raise MissingInputError(f"{run_path}: not a run folder (no config.json)")
    return read_json(cfg)


class UnfinishedRunError(InputValidationError, FileNotFoundError):
    """A run folder without metrics.json where a finished run was expected."""


def read_metrics(run_path: Path, role: str = "run folder") -> dict[str, Any]:
    """The ``metrics.json`` of a finished run, the one reader of its contract: an error
    naming the file where it is missing (an unfinished run), empty, not JSON, or not the
    object of metrics write_run makes (a numeric ``top1``)."""
    path = Path(run_path) / "metrics.json"
    if not path.is_file():
        raise UnfinishedRunError(f"{role} {run_path} is not a finished run (no "
                                 "metrics.json); finish it (rerun its job) first")
    m = read_json(path)
    top1 = m.get("top1", "") if isinstance(m, dict) else ""
    if isinstance(top1, bool) or not isinstance(top1, int | float | None):  # None: NaN
        got = type(m).__name__ if not isinstance(m, dict) else f"top1 = {m.get('top1')!r}"
        raise InputValidationError(f"{path}: expected the JSON object of a finished run's "
                                   f"metrics with a numeric top1, got {got}; rerun the run")
    return m


def require_finished(run_path: Path, role: str) -> dict[str, Any]:
    """config.json of a finished run, or an error saying which role it was to play."""
    read_metrics(run_path, role)
    return read_run_config(run_path)
