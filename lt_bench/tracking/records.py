"""What MLflow gets from one finished run folder: pure record building, no ``mlflow`` import.

A run folder ``results/runs/{dataset}/{backbone}/{method}/seed{seed}/`` (``config.json``,
``history.json``, ``per_class.parquet``, ``metrics.json`` written last) becomes one
:class:`RunRecord`: params, metrics, tags, the training's start/end time, a short name, a
description and the artifact files. :mod:`lt_bench.tracking.store` writes records to MLflow.

Identity (tags):

* ``run_key`` = ``stable_hash({"suite", "dataset", "backbone", "method", "seed"})``: the run
  folder's coordinates plus the suite (= the experiment), so a key is unique across a whole
  tracking server. Re-ingestion finds the MLflow run by it and never creates a second one.
* ``group_key`` = ``stable_hash({"dataset", "backbone", "method", "hparams"})``: runs that
  differ only by seed share it (exact matching); ``group`` is the same setting spelled for a
  reader (``toy/toyclip0/la τ=0.5``: dataset/backbone/method and the non-default
  hyper-parameters), which is what the UI's "Group by" shows.

What a researcher sees first (decided on screenshots of the MLflow UI, whose run-name column
shows ~20 characters): run names ``la toyclip0 s0 τ=0.5``: the method first (long method
names compacted: ``bd_same`` for ``backdoor_same_backbone``), backbone and seed, then the
dataset (only in an experiment of several datasets) and the non-default knobs, so the part
that tells runs apart is not the part the column cuts; the long form is the tag ``long_name``. The headline
numbers repeated, in percent with one decimal, under names that sort before every other
metric (:data:`HEADLINE`: ``0_top1``, ``1_many`` ...) and in the run's description (the
original metric names keep the exact values); a shared view of the experiment
(:data:`HEADLINE_VIEW`) opens the runs table on those columns, sorted by top-1.
Undefined values (``null`` in ``metrics.json``; a NaN from an older run) are not logged, so
the compare view has no NaN rows.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from lt_bench.errors import InputValidationError
from lt_bench.io import read_json, sha256_file, stable_hash
from lt_bench.runs.layout import (  # noqa: F401  (find_run_dirs re-exported: the one glob)
    CONFIG_JSON,
    METRICS_JSON,
    RUN_DIR,
    find_run_dirs,
    metrics_path,
)

# naming and keys have their own module; re-exported for the callers that import them here
from lt_bench.tracking.names import (  # noqa: F401
    EXPERIMENT_PREFIX,
    compact_backbone,
    compact_method,
    experiment_name,
    group_key,
    knob_label,
    non_default_hparams,
    run_key,
    run_name,
    setting_label,
    setting_stats,
)

DEFAULT_DB = Path("results/mlflow/mlflow.db")
DEFAULT_MANIFEST = Path("results/mlflow/ingested.json")
#: bump when what is logged for a run changes, so that re-ingestion refreshes every run
SCHEMA_VERSION = 3
TAG_FINGERPRINT = "lt_bench.fingerprint"
TAG_HISTORY = "lt_bench.history_hash"
TAG_PARAMS = "lt_bench.params_hash"
TAG_TIMES = "lt_bench.times"
#: tags that say where a folder was ingested from, not what it holds: a moved checkout does not
#: make an unchanged run folder "changed" (a train-time commit is in config.json's digest)
VOLATILE_TAGS = ("run_dir", "git_commit", "mlflow.source.git.commit")
MAX_PARAM_LEN = 6000
ARTIFACT_FILES = (CONFIG_JSON, METRICS_JSON, "history.json", "per_class.parquet")
#: the tag ``kind`` of an MLflow run: one per run folder, one per setting (its seeds' mean ±
#: sd, the seed runs nested under it), one per suite (suite-wide figures and the settings table)
KIND_SEED, KIND_SETTING, KIND_SUMMARY = "seed", "setting", "summary"
#: the tag ``state``: a run folder retrained or re-configured gets a new MLflow run; the old
#: one stays, ``state=superseded`` with ``lt_bench.superseded_by`` = the new run's id
STATE_CURRENT, STATE_SUPERSEDED = "current", "superseded"
TAG_SUPERSEDED_BY = "lt_bench.superseded_by"
#: MLflow 3 opens an experiment in its GenAI layout (Overview/Traces) unless told otherwise.
#: The UI of the pinned 3.17 takes the layout from the URL's ``workflowType`` (else the
#: browser's last choice, default GenAI: ``WorkflowTypeProvider`` in mlflow/server/js,
#: ``useExperimentKind`` ignores the tag while ``shouldEnableWorkflowBasedNavigation`` is
#: on); the experiment tag ``mlflow.experimentKind`` is what the UI reads where that switch
#: is off and what MLflow's own clients set. Both are set: every link the project prints
#: carries the parameter, and the experiment the tag.
EXPERIMENT_KIND_TAG = ("mlflow.experimentKind", "custom_model_development")
UI_QUERY = "workflowType=machine_learning"
FIGURE_SUFFIXES = (".png", ".pdf", ".svg")
#: headline metrics: (name in metrics.json, name in MLflow that sorts first, label)
HEADLINE = (("top1", "0_top1", "top-1"), ("many", "1_many", "many"),
            ("medium", "2_medium", "medium"), ("few", "3_few", "few"),
            ("p_few", "4_p_few", "P-few"))
#: the experiment's saved view: the runs table with the headline columns, best top-1 first.
#: MLflow's UI reads ``mlflow.sharedViewState.<key>`` (plain JSON is accepted) and opens it at
#: ``#/experiments/<id>/runs?viewStateShareKey=<key>``.
HEADLINE_VIEW_KEY = "headline"
HEADLINE_VIEW = {"selectedColumns": [f"metrics.`{a}`" for _, a, _ in HEADLINE] + ["tags.`group`"],
                 "orderByKey": f"metrics.`{HEADLINE[0][1]}`", "orderByAsc": False,
                 "searchFilter": f"tags.kind = '{KIND_SEED}' AND tags.state = '{STATE_CURRENT}'"}
#: the grouped view: one row per setting, mean and sample sd over its seeds, best first
#: (MLflow's own "Group by" shows unrounded means and no spread)
SETTINGS_VIEW_KEY = "settings"
SD_SUFFIX = "_sd"
SETTINGS_VIEW = {
    "selectedColumns": [c for _, a, _ in HEADLINE
                        for c in (f"metrics.`{a}`", f"metrics.`{a}{SD_SUFFIX}`")]
    + ["metrics.`n_seeds`", "tags.`group`"],
    "orderByKey": f"metrics.`{HEADLINE[0][1]}`", "orderByAsc": False,
    "searchFilter": f"tags.kind = '{KIND_SETTING}' AND tags.state = '{STATE_CURRENT}'"}
VIEWS = {HEADLINE_VIEW_KEY: HEADLINE_VIEW, SETTINGS_VIEW_KEY: SETTINGS_VIEW}
#: metrics.json entries that are not metrics (identity, wall-clock times)
NOT_METRICS = {"seed", "started_at", "finished_at"}


def view_url(tracking_ui: str, experiment_id: str, view: str = HEADLINE_VIEW_KEY) -> str:
    """A saved view of the experiment's runs table, in MLflow's model-training layout."""
    return (f"{tracking_ui.rstrip('/')}/#/experiments/{experiment_id}/runs"
            f"?{UI_QUERY}&viewStateShareKey={view}")


def default_tracking_uri(root: Path | str = ".") -> str:
    """``MLFLOW_TRACKING_URI`` if set, else the project's SQLite store (absolute path)."""
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    return "sqlite:///" + str((Path(root) / DEFAULT_DB).resolve())


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI (None for other stores)."""
    if not uri.startswith("sqlite:"):
        return None
    path = uri.split(":///", 1)[1] if ":///" in uri else ""
    if not path or path.startswith(":memory:"):
        raise InputValidationError(f"tracking URI {uri!r}: need a SQLite file, e.g. "
                                   "sqlite:///results/mlflow/mlflow.db")
    return Path(path.split("?", 1)[0])


def redact_uri(uri: str) -> str:
    """The URI without a password (manifests and logs must not hold secrets)."""
    parts = urlsplit(uri)
    if parts.password:
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
        return urlunsplit(parts._replace(netloc=netloc))
    return uri


# --- reading a run folder ---------------------------------------------------------------

@dataclass
class RunRecord:
    run_dir: Path
    run_key: str
    run_name: str
    params: dict[str, str]
    #: (key, value, step)
    metrics: list[tuple[str, float, int]]
    tags: dict[str, str]
    artifacts: list[Path]
    figures: list[Path] = field(default_factory=list)
    #: training start/end, Unix time in ms (None: the run folder does not say)
    start_ms: int | None = None
    end_ms: int | None = None
    description: str = ""

    @property
    def fingerprint(self) -> str:
        return self.tags[TAG_FINGERPRINT]




def _number(v: Any) -> float | None:
    """A loggable value: finite numbers and booleans; None (JSON null) and NaN/inf are not."""
    if isinstance(v, bool):
        return float(v)
    if isinstance(v, int | float) and math.isfinite(v):
        return float(v)
    return None


def _flat_numbers(d: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat_numbers(v, f"{prefix}{k}."))
        elif (x := _number(v)) is not None:
            out[f"{prefix}{k}"] = x
    return out


def _param_value(v: Any) -> str:
    s = v if isinstance(v, str) else json.dumps(v, sort_keys=True)
    return s if len(s) <= MAX_PARAM_LEN else s[: MAX_PARAM_LEN - 3] + "..."


def _file_digest(paths: list[Path]) -> str:
    h = hashlib.sha256()
    for p in paths:
        h.update(p.name.encode() + b"\0" + sha256_file(p).encode())
    return h.hexdigest()[:16]


def _time_ms(metrics: Mapping[str, Any], key: str, path: Path) -> int | None:
    v = metrics.get(key)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v) or v < 0:
        raise InputValidationError(f"{path}: {key!r} is {v!r}; expected Unix time in seconds")
    return int(round(v * 1000))


def _pct(v: float | None) -> str:
    return "–" if v is None else f"{100 * v:.1f}"


def describe(ident: Mapping[str, Any], label: str, metrics: Mapping[str, Any],
             seconds: float | None) -> str:
    """The run description (Markdown): the headline numbers first, then what the run is."""
    heads = [(lab, _number(metrics.get(k))) for k, _, lab in HEADLINE]
    first = " · ".join(f"{lab} {_pct(v)}" for lab, v in heads if lab == "top-1" or v is not None)
    what = f"{ident['dataset']} / {ident['backbone']} / {label}, seed {ident['seed']}"
    took = f"; trained in {seconds:.1f} s" if seconds is not None else ""
    return f"**{first}** (% accuracy)\n\n{what}{took}."


def suite_figures(figures_root: Path | str | None) -> list[tuple[Path, str]]:
    """The report's figures ``{figures_root}/{dataset}/*.png`` as (file, artifact folder): they
    concern a whole suite (every method of a dataset), so the suite's summary run holds them
    once, not every run a copy (320 copies were 63 of the demo store's 84 MB)."""
    if figures_root is None or not Path(figures_root).is_dir():
        return []
    return [(p, f"figures/{p.parent.name}")
            for p in sorted(Path(figures_root).glob("*/*.png")) if p.is_file()]


def _rel(p: Path) -> str:
    """``p`` relative to the working folder (the project root) when below it."""
    try:
        return str(p.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(p.resolve())


def finished_folder(run_dir):
    """The finished run folder at ``run_dir`` (a ``RunFolder``; one given is kept); an
    error naming it where it is not finished."""
    from lt_bench.runs.run_folder import RunFolder

    if not metrics_path(run_dir).is_file():
        raise InputValidationError(f"{run_dir}: not a finished run (no {METRICS_JSON})")
    return RunFolder.open(run_dir)


def read_run_folder(run_dir, suite: str, commit: str | None = None,
                    defaults: Mapping[str, Any] | None = None,
                    name_dataset: bool = True) -> RunRecord:
    """Everything MLflow gets from one finished run folder.

    ``commit``: the git commit to record when ``config.json`` has none (runs from before
    ``git_commit`` was recorded at train time); ``defaults``: the method's default
    hyper-parameters (None: unknown, then names and groups show no knobs);
    ``name_dataset``: whether the run name spells the dataset (an experiment of several).
    """
    folder = finished_folder(run_dir)
    run_dir, mpath = folder.path, metrics_path(folder.path)
    metrics, config = folder.metrics, folder.config
    hpath = run_dir / "history.json"
    history = read_json(hpath) if hpath.is_file() else []

    ident = folder.identity
    for k, v in ident.items():
        if v is None:
            raise InputValidationError(f"{mpath}: no {k!r} in metrics.json or config.json")
    ident["seed"] = int(ident["seed"])
    key = run_key(suite, ident["dataset"], ident["backbone"], ident["method"], ident["seed"])
    hparams = config.get("hparams") or {}

    params: dict[str, str] = {"suite": suite, **{k: str(v) for k, v in ident.items()}}
    for k, v in hparams.items():
        params[k if k not in params else f"hparams.{k}"] = _param_value(v)
    for k, v in config.items():
        if k in ("hparams", "feature_sha256", "split_sha256", "platform", "git_commit") \
                or k in ident:
            continue
        if isinstance(v, dict):
            for kk, vv in v.items():
                params[f"{k}.{kk}"] = _param_value(vv)
        elif v is not None and not (isinstance(v, list | str) and not v):
            params[k if k not in params else f"config.{k}"] = _param_value(v)

    epochs = [h for h in history if isinstance(h, dict)]
    series = []
    for i, h in enumerate(epochs):
        step = int(h.get("epoch", i))
        for k, v in h.items():
            if k != "epoch" and (x := _number(v)) is not None:
                series.append((k, x, step))
    final_step = max([len(epochs)] + [s + 1 for _, _, s in series])
    flat = {k: v for k, v in _flat_numbers(metrics).items() if k not in NOT_METRICS}
    scalars = [(k, v, final_step) for k, v in sorted(flat.items())]
    # the headline copies are percent with one decimal: the table then shows "69.8", not
    # "0.698333…" cut by the column width (the exact fraction stays under the real name)
    scalars += [(alias, round(100 * flat[k], 1), final_step) for k, alias, _ in HEADLINE
                if k in flat]

    start_ms = _time_ms(metrics, "started_at", mpath)
    end_ms = _time_ms(metrics, "finished_at", mpath)
    if start_ms is not None and end_ms is not None and end_ms < start_ms:
        raise InputValidationError(f"{mpath}: finished_at is before started_at")

    figures = sorted(p for p in run_dir.iterdir() if p.suffix in FIGURE_SUFFIXES and p.is_file())
    artifacts = [run_dir / f for f in ARTIFACT_FILES if (run_dir / f).is_file()]

    knobs = knob_label(non_default_hparams(hparams, defaults))
    shown_dataset = ident["dataset"] if name_dataset else None
    label = f"{ident['method']} {knobs}" if knobs else ident["method"]
    path_name = RUN_DIR.format(**ident)
    tags = {
        **{k: str(v) for k, v in ident.items()},
        "suite": suite,
        "run_key": key,
        "run_path": path_name,
        "group": f"{ident['dataset']}/{ident['backbone']}/{label}",
        "long_name": f"{label} · {ident['dataset']}/{ident['backbone']} · seed {ident['seed']}",
        "kind": KIND_SEED,
        "state": STATE_CURRENT,
        "setting_name": run_name(ident["method"], knobs, shown_dataset, ident["backbone"],
                                 None),
        "group_key": group_key({**config, **ident}),
        "run_dir": _rel(run_dir),
        # the commit the run was trained at (config.json), not the one it is ingested at
        "git_commit": str(config.get("git_commit") or commit or "unknown"),
    }
    tags["mlflow.source.git.commit"] = tags["git_commit"]
    from lt_bench.methods._variants import base_of

    if (base := base_of(ident["method"])) is not None:  # a config's variant of ``base``
        tags["base_method"] = base
    if config.get("weights"):  # "sha256:<hex>" of the backbone's weights file, or the tag
        tags["weights"] = str(config["weights"])
    for kind in ("feature_sha256", "split_sha256"):
        hashes = config.get(kind) or {}
        for split, h in sorted(hashes.items()):
            if h:
                tags[f"{kind}.{split}"] = str(h)
        if hashes:
            tags[kind.replace("_sha256", "_hash")] = stable_hash(hashes, n=16)
    seconds = (end_ms - start_ms) / 1000 if start_ms is not None and end_ms is not None else None
    description = describe(ident, label, metrics, seconds)
    tags["mlflow.note.content"] = description
    tags[TAG_PARAMS] = stable_hash(params, n=16)
    tags[TAG_HISTORY] = stable_hash(series, n=16)
    # MLflow cannot change a run's start time: other times mean a new run (replaced)
    tags[TAG_TIMES] = f"{start_ms}-{end_ms}"
    content_tags = {k: v for k, v in tags.items() if k not in VOLATILE_TAGS}
    tags[TAG_FINGERPRINT] = stable_hash(
        {"v": SCHEMA_VERSION, "params": params, "tags": content_tags,
         "files": _file_digest(artifacts + figures)}, n=16)
    name = run_name(ident["method"], knobs, shown_dataset, ident["backbone"], ident["seed"])
    return RunRecord(run_dir=run_dir, run_key=key, run_name=name, params=params,
                     metrics=series + scalars, tags=tags, artifacts=artifacts, figures=figures,
                     start_ms=start_ms, end_ms=end_ms, description=description)
