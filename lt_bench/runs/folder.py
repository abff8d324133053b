"""The run folder: its layout, where it is found, and the one writer every run finishes with.

``results/runs/{dataset}/{backbone}/{method}/seed{seed}/`` (ensembles: backbone
``ensemble``) holds ``config.json`` (resolved method, hyper-parameters, inputs with their
hashes, git commit), ``history.json``, ``per_class.parquet``, what rebuilds the logits
(``predictor.json`` + ``predictor.safetensors``; fine-tuning: the stored pre-head
``features_{split}.parquet`` and the head in ``trainable.safetensors``)
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

from lt_bench.errors import InputValidationError
from lt_bench.io import atomic_path, read_json, write_json

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
#: the splits a run is evaluated on (val for tuning checks, test for the tables)
EVAL_SPLITS = ("val", "test")


def run_dir(dataset: str, backbone: str, method: str, seed: int | str,
            root: str | os.PathLike = "results/runs") -> Path:
    return Path(root) / dataset / backbone / method / f"seed{seed}"


def find_run_dirs(runs_root: str | os.PathLike) -> list[Path]:
    """Every finished run folder under ``runs_root`` (those with a metrics.json), sorted."""
    return sorted(p.parent for p in Path(runs_root).glob("*/*/*/seed*/metrics.json"))


#: the workflow's list of a dataset's runs (rule runs_index): runs_root/{dataset}/index.txt
RUNS_INDEX = "index.txt"


def write_runs_index(metrics_files: list[str], out: str | os.PathLike) -> None:
    """``{runs_root}/{dataset}/index.txt``: the suite's runs of a dataset, one metrics.json
    per line (lt_bench.plan.Plan.dataset_runs; the workflow's rule runs_index)."""
    from lt_bench.io import write_text

    write_text(out, "".join(f"{f}\n" for f in metrics_files))


def report_run_dirs(runs_root: str | os.PathLike) -> list[Path]:
    """The finished runs the report stands on when no list is given: per dataset, the runs
    of the workflow's ``index.txt`` where there is one, else every finished run.

    The one decision that makes `lt-bench tables` (significance, figures, ingest) by hand
    agree with the workflow: the suite's runs only. The same-backbone control's member
    runs at extra seeds (la at s + 1000, s + 2000) are finished runs too, but inputs of that
    ensemble, not rows of the tables (they would triple the LA row's seeds)."""
    runs_root = Path(runs_root)
    by_dataset: dict[str, list[Path]] = {}
    for d in find_run_dirs(runs_root):
        by_dataset.setdefault(d.parts[-4], []).append(d)
    out: list[Path] = []
    for dataset, dirs in sorted(by_dataset.items()):
        index = runs_root / dataset / RUNS_INDEX
        if not index.is_file():
            out += dirs
            continue
        finished = set(dirs)
        # lines are results/runs/{dataset}/{backbone}/{method}/seed{s}/metrics.json as the
        # workflow names them: found again under runs_root wherever the project is now
        listed = [runs_root.joinpath(*Path(line.strip()).parts[-5:-1])
                  for line in index.read_text(encoding="utf-8").splitlines() if line.strip()]
        missing = [d for d in listed if d not in finished]
        if missing:
            log.warning("%s lists %d run(s) that are not finished, e.g. %s; the tables by "
                        "hand leave them out", index, len(missing), missing[0])
        out += [d for d in listed if d in finished]
    return out


def selected_run_dirs(metrics: list[str] | None, runs_root: str | os.PathLike,
                      dataset: str | None = None) -> list[Path]:
    """The runs a verb acts on: explicit ``metrics.json`` files (the workflow lists them), or
    the report's runs under ``runs_root`` (of ``dataset``; :func:`report_run_dirs`); an
    error when there is none."""
    if metrics:
        return [Path(m).parent for m in metrics]
    dirs = [d for d in report_run_dirs(runs_root) if dataset is None or d.parts[-4] == dataset]
    if not dirs:
        raise FileNotFoundError(
            f"no finished runs (metrics.json) under {runs_root}"
            + (f" for dataset {dataset!r}" if dataset else "")
            + "; expected run folders {dataset}/{backbone}/{method}/seed{seed}")
    return dirs


def project_root_of(run_path: Path) -> Path | None:
    """The folder holding ``results/`` for a run folder laid out as ``run_dir`` says."""
    p = Path(run_path).absolute()
    if len(p.parts) > 6 and p.parents[3].name == "runs" and p.parents[4].name == "results":
        return p.parents[5]
    return None


def resolve_recorded(path: str | os.PathLike, run_path: Path) -> Path:
    """A path recorded in a run's config.json, found again: as recorded where absolute;
    a relative one is relative to the run's own project root (the folder holding its
    ``results/runs``, the workflow's working directory), else to the working directory —
    so ``lt-bench logits`` works from any folder and after the project folder moved, and
    never picks up another project's files that happen to sit at the same relative path
    under the working directory."""
    p = Path(path)
    if p.is_absolute():
        return p
    root = project_root_of(run_path)
    return root / p if root is not None else p


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


def arrow_column(values):
    """A 1-d numpy array (numbers or str) as an Arrow array, built from its buffers:
    pa.array()/pa.table() import pandas on first use (0.4-1 s of every run's start-up)."""
    import pyarrow as pa

    x = np.ascontiguousarray(values)
    if x.dtype.kind in "US":
        data = [s.encode() for s in x.tolist()]
        offsets = np.zeros(len(data) + 1, np.int32)
        np.cumsum([len(s) for s in data], out=offsets[1:])
        return pa.StringArray.from_buffers(len(data), pa.py_buffer(offsets),
                                           pa.py_buffer(b"".join(data)))
    if x.dtype.kind not in "iuf":  # bools are bit-packed in Arrow, objects have no buffer
        return pa.array(x.tolist())
    return pa.Array.from_buffers(pa.from_numpy_dtype(x.dtype), len(x), [None, pa.py_buffer(x)])


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
    history.json, per_class.parquet and, last, metrics.json. ``group_counts`` define the
    D-groups where they differ from the train counts (CIFAR-100-LT IR 10/50: IR-100's)."""
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
    *(f"logits_{s}.parquet" for s in SPLITS)})


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
        raise FileNotFoundError(f"{run_path}: not a run folder (no config.json)")
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


# --- stored logits (runs that cannot rebuild them cheaply: fine-tuning) --------------------

def logits_path(run_path: Path, split: str) -> Path:
    return Path(run_path) / f"logits_{split}.parquet"


def write_logits(labels: np.ndarray, logits: np.ndarray, out: Path) -> None:
    """Contract: ``label`` int32, ``logits`` fixed_size_list<float32, K>, split-list order."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    logits = np.ascontiguousarray(logits, dtype=np.float32)
    table = pa.table({
        "label": pa.array(np.asarray(labels, dtype=np.int32)),
        "logits": pa.FixedSizeListArray.from_arrays(pa.array(logits.reshape(-1)),
                                                    logits.shape[1]),
    })
    with atomic_path(out) as tmp:
        pq.write_table(table, tmp)


def read_logits(path: Path) -> tuple[np.ndarray, np.ndarray]:
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    col = table.column("logits").combine_chunks()
    return (table.column("label").to_numpy().astype(np.int64),
            col.flatten().to_numpy().reshape(-1, col.type.list_size))


# --- stored pre-head features (fine-tuning: the seam applies the stored head to them) ---

#: view -> column of a run's features file: "centre" the pre-head feature of the test
#: transform, "tte" the mean of the five test-time crops' unit-normalised features
FEATURE_VIEWS = {"centre": "feature", "tte": "feature_tte"}


def run_features_path(run_path: Path, split: str) -> Path:
    return Path(run_path) / f"features_{split}.parquet"


def write_run_features(labels: np.ndarray, views: dict[str, np.ndarray], out: Path) -> Path:
    """Contract: ``label`` int32 and, per view, ``feature`` / ``feature_tte``
    fixed_size_list<float16, D>, split-list order (float16 as the feature store: D = 768
    makes a row 1.5 kB where K = 8,142 float32 logits were 32 kB). Whatever is computed
    from the file is computed from these rounded values, so the run's metrics and
    ``lt-bench logits`` agree exactly."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    unknown = set(views) - set(FEATURE_VIEWS)
    if unknown or not views:
        raise ValueError(f"feature views {sorted(views)}; valid: {sorted(FEATURE_VIEWS)}")
    cols = {"label": arrow_column(np.asarray(labels, dtype=np.int32))}
    for view, x in views.items():
        x = np.ascontiguousarray(x, dtype=np.float16)
        if x.ndim != 2 or len(x) != len(labels) or not np.isfinite(x).all():
            raise InputValidationError(f"{out}: {view} features of shape {x.shape} for "
                                       f"{len(labels)} labels, or not finite in float16")
        cols[FEATURE_VIEWS[view]] = pa.FixedSizeListArray.from_arrays(
            arrow_column(x.reshape(-1)), x.shape[1])
    with atomic_path(Path(out)) as tmp:
        pq.write_table(pa.Table.from_arrays(list(cols.values()), names=list(cols)), tmp,
                       compression="zstd")
    return Path(out)


def read_run_features(path: Path, view: str = "centre") -> tuple[np.ndarray, np.ndarray]:
    """(labels int64, features float32 (N, D)) of one view of a run's features file."""
    import pyarrow.parquet as pq

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path.parent}: no stored {path.stem} "
                                "(a fine-tuning run stores val and test features only)")
    column = FEATURE_VIEWS[view]
    names = pq.read_schema(path).names
    if column not in names:
        stored = [v for v, c in FEATURE_VIEWS.items() if c in names]
        raise InputValidationError(
            f"{path}: no {view!r} view stored (stored: {stored}); fine-tune with "
            "tte: both to store the centre and the five-crop views")
    table = pq.read_table(path, columns=["label", column])
    col = table.column(column).combine_chunks()
    feats = col.flatten().to_numpy().reshape(-1, col.type.list_size).astype(np.float32)
    return table.column("label").to_numpy().astype(np.int64), feats
