"""MLflow tracking: ingest finished run folders as MLflow runs (DESIGN §3 stage 6).

Files are the source of truth; MLflow is the index and the view. One MLflow experiment
per suite (``lt-bench/<suite>``), one MLflow run per run folder
``results/runs/{dataset}/{backbone}/{method}/seed{seed}/`` that holds ``metrics.json``.

Identity of a run (MLflow tags):

* ``run_key`` = ``stable_hash({"suite", "dataset", "backbone", "method", "seed"})`` — the
  coordinates of the run folder plus the suite (= the experiment). Re-ingestion finds
  the MLflow run by this tag and updates it; it never creates a second one. The suite is
  in the key so that a key is unique across a whole (team) tracking server, not only
  within one experiment.
* ``group_key`` = ``stable_hash({"dataset", "backbone", "method", "hparams"})`` — the
  resolved configuration without the seed: runs that differ only by seed share it
  (group by it in the UI to see mean ± spread).

What is logged: params = suite, dataset, backbone, method, seed and every
hyper-parameter of ``config.json`` ``hparams`` (under its own name), plus the other
scalar entries of ``config.json``; metrics = every numeric entry of ``metrics.json``
(nested ``info`` as ``info.<key>``) logged at ``step = number of epochs`` (after
training), and per-epoch ``train_loss`` / ``val_top1`` / ``lr`` from ``history.json`` at
``step = epoch`` — so a metric's latest value is always the one in ``metrics.json``;
artifacts = ``config.json``, ``metrics.json``, ``history.json``, ``per_class.parquet``
and the run's figures (``*.png``/``*.pdf`` in the folder).

Updates: a content fingerprint (tag ``lt_bench.fingerprint``) makes re-ingesting an
unchanged folder a no-op. A changed folder is updated in place when its params and its
history are unchanged (new metric values, tags, artifacts); otherwise (retrained with
other hyper-parameters, or a new training curve) the old MLflow run is deleted and a
new one created with the same ``run_key`` — MLflow forbids changing a param and cannot
drop metric history. Either way exactly one active MLflow run carries the key.

Concurrency: SQLite breaks under parallel writers, so the whole ingestion holds a file
lock (``<db>.lock`` beside a SQLite store; a per-URI lock in the temp folder otherwise);
a later ingestion also deletes duplicate runs of a key should two writers on different
machines ever race on a server. ``import mlflow`` (~1 s) stays inside the functions
that need it.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import logging
import math
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from lt_bench.io import read_json, sha256_file, stable_hash, write_json

log = logging.getLogger(__name__)

DEFAULT_DB = Path("results/mlflow/mlflow.db")
DEFAULT_MANIFEST = Path("results/mlflow/ingested.json")
EXPERIMENT_PREFIX = "lt-bench/"
#: bump when what is logged for a run changes, so that re-ingestion refreshes every run
SCHEMA_VERSION = 1
#: tags of the MLflow run that say where it came from
TAG_FINGERPRINT = "lt_bench.fingerprint"
TAG_HISTORY = "lt_bench.history_hash"
TAG_PARAMS = "lt_bench.params_hash"
VOLATILE_TAGS = ("git_commit", "mlflow.source.git.commit", "run_dir")
MAX_PARAM_LEN = 6000
ARTIFACT_FILES = ("config.json", "metrics.json", "history.json", "per_class.parquet")
FIGURE_SUFFIXES = (".png", ".pdf", ".svg")


# --- identity -------------------------------------------------------------------------

def experiment_name(suite: str) -> str:
    return f"{EXPERIMENT_PREFIX}{suite}"


def run_key(suite: str, dataset: str, backbone: str, method: str, seed: int) -> str:
    """Deterministic key of one run folder within a suite (16 hex digits)."""
    return stable_hash({"suite": suite, "dataset": dataset, "backbone": backbone,
                        "method": method, "seed": int(seed)}, n=16)


def group_key(config: dict[str, Any]) -> str:
    """Key of the configuration without the seed: the seeds of one setting share it."""
    return stable_hash({"dataset": config.get("dataset"), "backbone": config.get("backbone"),
                        "method": config.get("method"), "hparams": config.get("hparams") or {}},
                       n=16)


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
        raise ValueError(f"tracking URI {uri!r}: need a SQLite file, e.g. "
                         "sqlite:///results/mlflow/mlflow.db")
    return Path(path.split("?", 1)[0])


def redact_uri(uri: str) -> str:
    """The URI without a password (manifests and logs must not hold secrets)."""
    parts = urlsplit(uri)
    if parts.password:
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
        return urlunsplit(parts._replace(netloc=netloc))
    return uri


def git_commit(*where: Path | str) -> str:
    """``git rev-parse HEAD`` of the first folder that is in a git checkout, else "unknown"."""
    for d in [*where, Path.cwd(), Path(__file__).resolve().parent]:
        try:
            out = subprocess.run(["git", "-C", str(d), "rev-parse", "HEAD"], check=True,
                                 capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            continue
        if out.stdout.strip():
            return out.stdout.strip()
    return "unknown"


# --- reading a run folder (no mlflow) ---------------------------------------------------

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

    @property
    def fingerprint(self) -> str:
        return self.tags[TAG_FINGERPRINT]


def find_run_dirs(runs_root: Path | str) -> list[Path]:
    """Finished run folders (``metrics.json`` present) under ``runs_root``."""
    return sorted(p.parent for p in Path(runs_root).glob("*/*/*/seed*/metrics.json"))


def _number(v: Any) -> float | None:
    if isinstance(v, bool):
        return float(v)
    if isinstance(v, int | float) and not (isinstance(v, float) and math.isinf(v)):
        return float(v)
    return None


def _flat_numbers(d: dict[str, Any], prefix: str = "") -> dict[str, float]:
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


def read_run_folder(run_dir: Path | str, suite: str, commit: str | None = None) -> RunRecord:
    """Everything MLflow gets from one finished run folder."""
    run_dir = Path(run_dir)
    mpath = run_dir / "metrics.json"
    if not mpath.is_file():
        raise FileNotFoundError(f"{run_dir}: not a finished run (no metrics.json)")
    metrics = read_json(mpath)
    config = read_json(run_dir / "config.json") if (run_dir / "config.json").is_file() else {}
    hpath = run_dir / "history.json"
    history = read_json(hpath) if hpath.is_file() else []

    ident = {}
    for k in ("dataset", "backbone", "method", "seed"):
        v = metrics.get(k, config.get(k))
        if v is None:
            raise ValueError(f"{mpath}: no {k!r} in metrics.json or config.json")
        ident[k] = v
    ident["seed"] = int(ident["seed"])
    key = run_key(suite, ident["dataset"], ident["backbone"], ident["method"], ident["seed"])

    params: dict[str, str] = {"suite": suite, **{k: str(v) for k, v in ident.items()}}
    for k, v in (config.get("hparams") or {}).items():
        params[k if k not in params else f"hparams.{k}"] = _param_value(v)
    for k, v in config.items():
        if k in ("hparams", "feature_sha256", "split_sha256", "platform") or k in ident:
            continue
        if isinstance(v, dict):
            for kk, vv in v.items():
                params[f"{k}.{kk}"] = _param_value(vv)
        elif v is not None and not (isinstance(v, list | str) and not v):
            params[k if k not in params else f"config.{k}"] = _param_value(v)

    epochs = [h for h in history if isinstance(h, dict)]
    final_step = len(epochs)
    series = []
    for i, h in enumerate(epochs):
        step = int(h.get("epoch", i))
        for k, v in h.items():
            if k != "epoch" and (x := _number(v)) is not None:
                series.append((k, x, step))
    final_step = max([final_step] + [s + 1 for _, _, s in series])
    scalars = [(k, v, final_step) for k, v in sorted(_flat_numbers(metrics).items())
               if k != "seed"]

    figures = sorted(p for p in run_dir.iterdir()
                     if p.suffix in FIGURE_SUFFIXES and p.is_file())
    artifacts = [run_dir / f for f in ARTIFACT_FILES if (run_dir / f).is_file()]

    tags = {
        **{k: str(v) for k, v in ident.items()},
        "suite": suite,
        "run_key": key,
        "group_key": group_key({**config, **ident}),
        "run_dir": str(run_dir),
        "git_commit": str(config.get("git_commit") or commit or git_commit()),
    }
    tags["mlflow.source.git.commit"] = tags["git_commit"]
    for kind in ("feature_sha256", "split_sha256"):
        hashes = config.get(kind) or {}
        for split, h in sorted(hashes.items()):
            if h:
                tags[f"{kind}.{split}"] = str(h)
        if hashes:
            tags[kind.replace("_sha256", "_hash")] = stable_hash(hashes, n=16)
    tags[TAG_PARAMS] = stable_hash(params, n=16)
    tags[TAG_HISTORY] = stable_hash(series, n=16)
    # where and when it was ingested from is not content: a moved checkout or a new HEAD
    # does not make an unchanged run folder "changed"
    content_tags = {k: v for k, v in tags.items() if k not in VOLATILE_TAGS}
    tags[TAG_FINGERPRINT] = stable_hash(
        {"v": SCHEMA_VERSION, "params": params, "tags": content_tags,
         "files": _file_digest(artifacts + figures)}, n=16)
    name = f"{ident['dataset']}/{ident['backbone']}/{ident['method']}/seed{ident['seed']}"
    return RunRecord(run_dir=run_dir, run_key=key, run_name=name, params=params,
                     metrics=series + scalars, tags=tags, artifacts=artifacts, figures=figures)


# --- writing to MLflow ------------------------------------------------------------------

def lock_path_for(uri: str) -> Path:
    db = sqlite_path(uri)
    if db is not None:
        return db.parent / (db.name + ".lock")
    digest = hashlib.sha256(redact_uri(uri).encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"lt-bench-ingest-{digest}.lock"


def _quiet_mlflow_logs() -> None:
    for name in ("alembic", "mlflow.store.db.utils", "mlflow.tracking._tracking_service",
                 "mlflow.store.db", "mlflow.utils.environment"):
        logging.getLogger(name).setLevel(logging.WARNING)


def _get_experiment(client, suite: str, artifact_root: Path | str | None) -> str:
    from mlflow.exceptions import MlflowException

    name = experiment_name(suite)
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        if exp.lifecycle_stage == "deleted":
            client.restore_experiment(exp.experiment_id)
        return exp.experiment_id
    location = None
    if artifact_root is not None:
        location = (Path(artifact_root) / suite).resolve().as_uri()
    try:
        return client.create_experiment(
            name, artifact_location=location,
            tags={"lt_bench.suite": suite,
                  "mlflow.note.content": f"lt-bench suite `{suite}`: one run per "
                                         "(dataset, backbone, method, seed) run folder; "
                                         "ingested by `lt-bench ingest`."})
    except MlflowException:  # created meanwhile by another writer
        exp = client.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


def _active_runs_by_key(client, experiment_id: str) -> dict[str, list]:
    from mlflow.entities import ViewType

    by_key: dict[str, list] = {}
    token = None
    while True:
        page = client.search_runs([experiment_id], filter_string="tags.run_key != ''",
                                  run_view_type=ViewType.ACTIVE_ONLY, max_results=1000,
                                  order_by=["attributes.start_time ASC"], page_token=token)
        for r in page:
            by_key.setdefault(r.data.tags.get("run_key"), []).append(r)
        token = page.token
        if not token:
            return by_key


def _log_contents(client, run_id: str, rec: RunRecord, with_params: bool,
                  with_history: bool) -> None:
    from mlflow.entities import Metric, Param, RunTag

    now = int(time.time() * 1000)
    last = max((s for _, _, s in rec.metrics), default=0)
    metrics = rec.metrics if with_history else [m for m in rec.metrics if m[2] == last]
    client.log_batch(
        run_id,
        metrics=[Metric(k, v, now, step) for k, v, step in metrics],
        params=[Param(k, v) for k, v in rec.params.items()] if with_params else [],
        tags=[RunTag(k, v) for k, v in rec.tags.items()])
    for f in rec.artifacts:
        client.log_artifact(run_id, str(f))
    for f in rec.figures:
        client.log_artifact(run_id, str(f), artifact_path="figures")


def _ingest_one(client, experiment_id: str, rec: RunRecord, existing: list) -> tuple[str, str]:
    """Create or update the MLflow run of ``rec``; returns (status, run_id)."""
    status = "created"
    for dup in existing[1:]:  # should not happen (lock); heal a race on a shared server
        client.delete_run(dup.info.run_id)
        log.warning("%s: deleted duplicate MLflow run %s", rec.run_dir, dup.info.run_id)
    if existing:
        old = existing[0]
        tags = old.data.tags
        if tags.get(TAG_FINGERPRINT) == rec.fingerprint and old.info.status == "FINISHED":
            return "unchanged", old.info.run_id
        if tags.get(TAG_PARAMS) == rec.tags[TAG_PARAMS] and \
                tags.get(TAG_HISTORY) == rec.tags[TAG_HISTORY]:
            _log_contents(client, old.info.run_id, rec, with_params=False,
                          with_history=False)
            client.set_terminated(old.info.run_id, "FINISHED")
            return "updated", old.info.run_id
        client.delete_run(old.info.run_id)
        status = "replaced"
    run = client.create_run(experiment_id, run_name=rec.run_name,
                            tags={"run_key": rec.run_key})
    run_id = run.info.run_id
    try:
        _log_contents(client, run_id, rec, with_params=True, with_history=True)
    except BaseException:
        client.set_terminated(run_id, "FAILED")  # the next ingestion replaces it
        raise
    client.set_terminated(run_id, "FINISHED")
    return status, run_id


def ingest(run_dirs: list[Path | str], suite: str, tracking_uri: str | None = None,
           artifact_root: Path | str | None = None, lock_timeout: float = 600.0,
           commit: str | None = None) -> dict[str, Any]:
    """Ingest finished run folders into the suite's experiment; return the manifest.

    ``artifact_root`` (default: ``artifacts/`` beside a SQLite store; the server's choice
    otherwise) is where a newly created experiment keeps its runs' artifacts.
    """
    from filelock import FileLock

    t_start = time.time()
    uri = tracking_uri or default_tracking_uri()
    db = sqlite_path(uri)
    if db is not None:
        db.parent.mkdir(parents=True, exist_ok=True)
        if artifact_root is None:
            artifact_root = db.parent / "artifacts"
    commit = commit or git_commit()
    records = [read_run_folder(d, suite, commit) for d in run_dirs]
    keys: dict[str, Path] = {}
    for r in records:
        if r.run_key in keys:
            raise ValueError(f"{r.run_dir} and {keys[r.run_key]} are the same run "
                             f"({r.run_name}); pass each run folder once")
        keys[r.run_key] = r.run_dir

    lock = lock_path_for(uri)
    lock.parent.mkdir(parents=True, exist_ok=True)
    t_lock = time.time()
    with FileLock(str(lock), timeout=lock_timeout):
        waited = time.time() - t_lock
        t0 = time.time()
        import mlflow  # noqa: F401  (~1 s; only here)
        from mlflow.tracking import MlflowClient

        _quiet_mlflow_logs()
        import_s = time.time() - t0
        client = MlflowClient(tracking_uri=uri)
        exp_id = _get_experiment(client, suite, artifact_root)
        existing = _active_runs_by_key(client, exp_id)
        runs, counts = [], {"created": 0, "updated": 0, "replaced": 0, "unchanged": 0}
        for rec in records:
            t = time.time()
            status, run_id = _ingest_one(client, exp_id, rec, existing.get(rec.run_key, []))
            counts[status] += 1
            runs.append({"run_key": rec.run_key, "run_id": run_id, "run_name": rec.run_name,
                         "run_dir": str(rec.run_dir), "status": status,
                         "seconds": round(time.time() - t, 4)})
            log.info("%s %s -> %s (%.2f s)", status, rec.run_name, run_id, runs[-1]["seconds"])
        active = sum(len(v) for v in _active_runs_by_key(client, exp_id).values())
    written = [r["seconds"] for r in runs if r["status"] != "unchanged"]
    return {
        "suite": suite,
        "experiment": experiment_name(suite),
        "experiment_id": exp_id,
        "tracking_uri": redact_uri(uri),
        "git_commit": commit,
        "run_ids": {r["run_key"]: r["run_id"] for r in runs},
        "runs": runs,
        "counts": {**counts, "run_folders": len(records), "active_runs_in_experiment": active},
        "seconds": {
            "total": round(time.time() - t_start, 3),
            "lock_wait": round(waited, 3),
            "import_mlflow": round(import_s, 3),
            "per_run_mean": round(sum(r["seconds"] for r in runs) / max(len(runs), 1), 4),
            "per_written_run_mean": round(sum(written) / len(written), 4) if written else None,
        },
    }


# --- CLI ----------------------------------------------------------------------------------

def _run_dirs(a) -> list[Path]:
    if a.metrics:
        return [Path(m).parent for m in a.metrics]
    dirs = find_run_dirs(a.runs_root)
    if not dirs:
        raise FileNotFoundError(f"no finished runs (metrics.json) under {a.runs_root}")
    return dirs


def cmd_ingest(a) -> None:
    manifest = ingest(_run_dirs(a), a.suite, a.tracking_uri, artifact_root=a.artifact_root,
                      lock_timeout=a.lock_timeout)
    write_json(a.out, manifest)
    c = manifest["counts"]
    print(f"{c['run_folders']} run folders -> experiment {manifest['experiment']!r} "
          f"({c['created']} created, {c['updated']} updated, {c['replaced']} replaced, "
          f"{c['unchanged']} unchanged; {c['active_runs_in_experiment']} runs in the "
          f"experiment) in {manifest['seconds']['total']:.1f} s; manifest {a.out}")


def ui_command(backend_store_uri: str, host: str, port: int) -> tuple[list[str], dict]:
    """``mlflow ui`` sized for a small machine: one worker, no job-execution workers."""
    db = sqlite_path(backend_store_uri)
    if db is not None and not db.is_file():
        raise FileNotFoundError(f"no MLflow store at {db}; run `lt-bench ingest` (or the "
                                "workflow) first")
    exe = Path(sys.executable).with_name("mlflow")
    cmd = [str(exe) if exe.is_file() else "mlflow", "ui", "--backend-store-uri",
           backend_store_uri, "--host", host, "--port", str(port), "--workers", "1"]
    return cmd, {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}


def cmd_ui(a) -> None:
    cmd, env = ui_command(a.backend_store_uri or default_tracking_uri(), a.host, a.port)
    print(" ".join(cmd), file=sys.stderr)
    with contextlib.suppress(KeyboardInterrupt):
        subprocess.run(cmd, env=env, check=False)


def add_tracking_commands(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser("ingest", help="ingest finished run folders into MLflow (idempotent)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    s.add_argument("--runs-root", default="results/runs",
                   help="folder of run folders {dataset}/{backbone}/{method}/seed{seed}")
    s.add_argument("--metrics", nargs="*", help="explicit metrics.json files (default: every "
                   "finished run under --runs-root)")
    s.add_argument("--suite", default="demo", help="suite name: experiment lt-bench/<suite>")
    s.add_argument("--tracking-uri", help="default: $MLFLOW_TRACKING_URI, else "
                   "sqlite:///<abs>/results/mlflow/mlflow.db")
    s.add_argument("--artifact-root", help="artifact folder of a new experiment (default: "
                   "artifacts/ beside a SQLite store; the server's default otherwise)")
    s.add_argument("--out", default=str(DEFAULT_MANIFEST), help="manifest JSON")
    s.add_argument("--lock-timeout", type=float, default=600.0,
                   help="seconds to wait for another ingestion to finish")
    s.set_defaults(func=cmd_ingest)

    s = sub.add_parser("ui", help="start the MLflow UI on the project's store (1 worker)")
    s.add_argument("--backend-store-uri", help="default: as for ingest")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=5000)
    s.set_defaults(func=cmd_ui)
