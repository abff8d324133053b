"""Write run records to MLflow: one experiment per suite, one MLflow run per run folder.

Files are the source of truth; MLflow is the index and the view. Re-ingesting an unchanged
folder is a no-op (tag ``lt_bench.fingerprint``). A changed folder is updated in place when
its params, history and training times are unchanged (new metric values, tags, artifacts);
otherwise the old MLflow run is deleted and a new one created with the same ``run_key``:
MLflow forbids changing a param or a start time and cannot drop metric history. Either way
exactly one active MLflow run carries the key.

Concurrency: SQLite breaks under parallel writers, so an ingestion holds a file lock
(``<db>.lock`` beside a SQLite store; a per-URI lock in the temp folder otherwise); a later
ingestion also deletes duplicate runs of a key should two writers on different machines ever
race on a server.

Moving the project: MLflow stores absolute artifact locations (it resolves a relative one at
creation, ``mlflow.utils.uri.resolve_uri_if_local``). A SQLite store whose artifacts live in
its own folder (the default ``results/mlflow/artifacts``) is therefore relocated: every
ingestion, and ``lt-bench ingest --relocate`` alone, rewrites the stored locations that point
into a folder that no longer exists to the same place below the store's current folder.

Failures a user can fix are :class:`~lt_bench.errors.UserError`: an unreachable server
(within seconds: MLflow's HTTP retries are capped, see :data:`HTTP_ENV`), an unwritable store
(naming the file). Run folders are only read.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sqlite3
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from lt_bench.errors import UserError
from lt_bench.tracking.records import (
    HEADLINE_VIEW,
    HEADLINE_VIEW_KEY,
    TAG_FINGERPRINT,
    TAG_HISTORY,
    TAG_PARAMS,
    TAG_TIMES,
    RunRecord,
    default_tracking_uri,
    experiment_name,
    read_run_folder,
    redact_uri,
    sqlite_path,
)

log = logging.getLogger(__name__)

#: MLflow retries an HTTP request 7 times with exponential backoff (4 min 15 s against a
#: server that is down, issue 15); a user's own setting wins over these.
HTTP_ENV = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
            "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}
PROBE_TIMEOUT_S = 5


class TrackingError(UserError):
    """The tracking store cannot be reached or written."""


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


# --- preflight: a clear message before MLflow's own ---------------------------------------

def _probe_writable(path: Path, what: str) -> None:
    """Really try to write (``os.access`` says yes to root even on a read-only mount)."""
    try:
        if path.is_dir():
            fd, tmp = tempfile.mkstemp(dir=path, prefix=".lt-bench-write-test-")
            os.close(fd)
            os.unlink(tmp)
        else:
            with open(path, "ab"):
                pass
    except OSError as e:
        raise TrackingError(f"the MLflow store is not writable: cannot write {what} {path} "
                            f"({e.strerror}); expected a writable results/mlflow folder "
                            "(or set MLFLOW_TRACKING_URI / --tracking-uri)") from e


def check_sqlite_writable(db: Path, artifact_root: Path | None) -> None:
    try:
        db.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise TrackingError(f"the MLflow store is not writable: cannot create the folder "
                            f"{db.parent} ({e.strerror})") from e
    _probe_writable(db.parent, "in the folder")
    if db.exists():
        _probe_writable(db, "the database file")
    lock = lock_path_for(f"sqlite:///{db}")
    if lock.exists():
        _probe_writable(lock, "the lock file")
    if artifact_root is not None:
        try:
            artifact_root.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise TrackingError(f"the MLflow store is not writable: cannot create the "
                                f"artifact folder {artifact_root} ({e.strerror})") from e
        _probe_writable(artifact_root, "in the artifact folder")


def check_server_reachable(uri: str, timeout: float = PROBE_TIMEOUT_S) -> None:
    """An HTTP(S) tracking server answers ``/health`` within ``timeout`` seconds."""
    url = uri.rstrip("/") + "/health"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:  # noqa: S310 (http/https only)
            r.read(64)
    except urllib.error.HTTPError:
        return  # it answered: a proxy or an old server without /health; MLflow speaks next
    except (OSError, ValueError) as e:
        reason = getattr(e, "reason", e)
        raise TrackingError(f"MLflow tracking server {redact_uri(uri)} is unreachable "
                            f"({reason}); expected a running `mlflow server` at that URI "
                            "(MLFLOW_TRACKING_URI / --tracking-uri). No run folder was "
                            "changed.") from e


# --- moving the project ---------------------------------------------------------------------

def relocate_sqlite_store(db: Path, artifact_root: Path) -> int:
    """Point stored artifact locations that moved with the store at ``artifact_root``.

    A location ``file:///old/place/artifacts/<suite>[/<run>/artifacts]`` whose ``/old/place``
    no longer holds it is rewritten when ``artifact_root/<suite>`` exists (the store and its
    artifacts moved together). Returns the number of experiments relocated.
    """
    if not db.is_file():
        return 0
    new_root = artifact_root.resolve().as_uri()
    moved = 0
    with sqlite3.connect(db) as con:
        try:
            rows = con.execute("SELECT experiment_id, name, artifact_location "
                               "FROM experiments").fetchall()
        except sqlite3.OperationalError:
            return 0  # not (yet) an MLflow store
        for exp_id, name, loc in rows:
            if not (loc or "").startswith("file://") or not name.startswith("lt-bench/"):
                continue
            suite = name.removeprefix("lt-bench/")
            new = f"{new_root}/{suite}"
            if loc == new or not (artifact_root / suite).is_dir():
                continue
            if Path(loc.removeprefix("file://")).is_dir():
                continue  # still there: a store that shares another folder's artifacts
            con.execute("UPDATE experiments SET artifact_location = ? WHERE experiment_id = ?",
                        (new, exp_id))
            con.execute("UPDATE runs SET artifact_uri = ? || substr(artifact_uri, ?) "
                        "WHERE experiment_id = ? AND substr(artifact_uri, 1, ?) = ?",
                        (new, len(loc) + 1, exp_id, len(loc), loc))
            log.info("relocated %s: %s -> %s", name, loc, new)
            moved += 1
    return moved


# --- writing ---------------------------------------------------------------------------------

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
                                         "ingested by `lt-bench ingest`. Columns `0_top1` "
                                         "… `4_p_few` are the headline numbers; group by "
                                         "the tag `group` for mean ± spread over seeds."})
    except MlflowException:  # created meanwhile by another writer
        exp = client.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


def view_url(tracking_ui: str, experiment_id: str) -> str:
    """The runs table of the experiment in its headline view."""
    return (f"{tracking_ui.rstrip('/')}/#/experiments/{experiment_id}/runs"
            f"?viewStateShareKey={HEADLINE_VIEW_KEY}")


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

    # metric timestamps: the end of the training (the history has no per-epoch times)
    stamp = rec.end_ms if rec.end_ms is not None else int(time.time() * 1000)
    last = max((s for _, _, s in rec.metrics), default=0)
    metrics = rec.metrics if with_history else [m for m in rec.metrics if m[2] == last]
    client.log_batch(
        run_id,
        metrics=[Metric(k, v, stamp, step) for k, v, step in metrics],
        params=[Param(k, v) for k, v in rec.params.items()] if with_params else [],
        tags=[RunTag(k, v) for k, v in rec.tags.items()])
    for f in rec.artifacts:
        client.log_artifact(run_id, str(f))
    for f in rec.figures:
        client.log_artifact(run_id, str(f), artifact_path="figures")
    for f, folder in rec.report_figures:
        client.log_artifact(run_id, str(f), artifact_path=folder)


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
        if all(tags.get(t) == rec.tags[t] for t in (TAG_PARAMS, TAG_HISTORY, TAG_TIMES)):
            _log_contents(client, old.info.run_id, rec, with_params=False,
                          with_history=False)
            client.update_run(old.info.run_id, name=rec.run_name)
            client.set_terminated(old.info.run_id, "FINISHED", end_time=rec.end_ms)
            return "updated", old.info.run_id
        client.delete_run(old.info.run_id)
        status = "replaced"
    run = client.create_run(experiment_id, run_name=rec.run_name, start_time=rec.start_ms,
                            tags={"run_key": rec.run_key})
    run_id = run.info.run_id
    try:
        _log_contents(client, run_id, rec, with_params=True, with_history=True)
    except BaseException:
        client.set_terminated(run_id, "FAILED")  # the next ingestion replaces it
        raise
    client.set_terminated(run_id, "FINISHED", end_time=rec.end_ms)
    return status, run_id


def method_defaults(methods: set[str]) -> dict[str, dict[str, Any] | None]:
    """Each method's default hyper-parameters from the registry (None: not registered)."""
    from lt_bench.methods import METHODS

    return {m: (dict(METHODS.get(m).defaults) if m in METHODS else None) for m in methods}


def _methods_of(run_dirs: list[Path]) -> set[str]:
    # the folder layout {dataset}/{backbone}/{method}/seed{seed}; read_run_folder checks it
    return {Path(d).parent.name for d in run_dirs}


def ingest(run_dirs: list[Path | str], suite: str, tracking_uri: str | None = None,
           artifact_root: Path | str | None = None, lock_timeout: float = 600.0,
           commit: str | None = None, figures_root: Path | str | None = None,
           defaults: dict[str, dict[str, Any] | None] | None = None) -> dict[str, Any]:
    """Ingest finished run folders into the suite's experiment; return the manifest.

    ``artifact_root`` (default: ``artifacts/`` beside a SQLite store; the server's choice
    otherwise) is where a newly created experiment keeps its runs' artifacts. ``commit`` is
    recorded only for runs whose ``config.json`` has no ``git_commit``. ``figures_root``
    (e.g. ``results/figures``): the report's figures to log with each run. ``defaults``:
    method → default hyper-parameters (default: from the method registry).
    """
    from filelock import FileLock, Timeout

    t_start = time.time()
    uri = tracking_uri or default_tracking_uri()
    run_dirs = [Path(d) for d in run_dirs]
    if defaults is None:
        defaults = method_defaults(_methods_of(run_dirs))
    records = [read_run_folder(d, suite, commit, defaults.get(d.parent.name), figures_root)
               for d in run_dirs]
    keys: dict[str, Path] = {}
    for r in records:
        if r.run_key in keys:
            raise UserError(f"{r.run_dir} and {keys[r.run_key]} are the same run "
                            f"({r.tags['run_path']}); pass each run folder once")
        keys[r.run_key] = r.run_dir

    db = sqlite_path(uri)
    if db is not None:
        if artifact_root is None:
            artifact_root = db.parent / "artifacts"
        check_sqlite_writable(db, Path(artifact_root))
    elif uri.startswith(("http://", "https://")):
        check_server_reachable(uri)
    for k, v in HTTP_ENV.items():
        os.environ.setdefault(k, v)

    lock = lock_path_for(uri)
    lock.parent.mkdir(parents=True, exist_ok=True)
    t_lock = time.time()
    try:
        with FileLock(str(lock), timeout=lock_timeout):
            waited = time.time() - t_lock
            relocated = relocate_sqlite_store(db, Path(artifact_root)) if db else 0
            t0 = time.time()
            import mlflow  # noqa: F401  (~1 s; only here)
            from mlflow.tracking import MlflowClient

            _quiet_mlflow_logs()
            import_s = time.time() - t0
            runs, counts, exp_id, active = retry_while_locked(
                lambda: _write_all(MlflowClient(tracking_uri=uri), suite, artifact_root,
                                   records), db, lock_timeout)
    except Timeout as e:
        raise TrackingError(f"another ingestion holds {lock} for more than {lock_timeout:g} s; "
                            "wait for it or raise --lock-timeout") from e
    except sqlite3.OperationalError as e:  # e.g. the disk filled up meanwhile
        raise TrackingError(f"the MLflow store {db} could not be written ({e})") from e
    except Exception as e:
        _raise_store_error(e, uri)
        raise
    written = [r["seconds"] for r in runs if r["status"] != "unchanged"]
    return {
        "suite": suite,
        "experiment": experiment_name(suite),
        "experiment_id": exp_id,
        "tracking_uri": redact_uri(uri),
        "headline_view": view_url("<ui>", exp_id),
        "run_ids": {r["run_key"]: r["run_id"] for r in runs},
        "runs": runs,
        "counts": {**counts, "run_folders": len(records), "active_runs_in_experiment": active,
                   "relocated_experiments": relocated},
        "seconds": {
            "total": round(time.time() - t_start, 3),
            "lock_wait": round(waited, 3),
            "import_mlflow": round(import_s, 3),
            "per_run_mean": round(sum(r["seconds"] for r in runs) / max(len(runs), 1), 4),
            "per_written_run_mean": round(sum(written) / len(written), 4) if written else None,
        },
    }


def retry_while_locked(action, db: Path | None, timeout: float):
    """``action()``, retried with backoff while another process holds a lock on the SQLite
    store ``db`` (e.g. an open transaction of a ``sqlite3`` shell); after ``timeout`` s one
    line. Retrying is safe: ingestion is idempotent (runs are found again by run_key)."""
    deadline = time.monotonic() + timeout
    delay = 0.5
    while True:
        try:
            return action()
        except Exception as e:
            if db is None or not _locked(e):
                raise
            left = deadline - time.monotonic()
            if left <= 0:
                raise TrackingError(
                    f"the MLflow store {db} stayed locked by another process for "
                    f"{timeout:g} s (\"database is locked\"); end that program's transaction, "
                    "or raise --lock-timeout, and rerun") from e
            log.warning("%s is locked by another process; retrying in %.1f s", db,
                        min(delay, left))
            time.sleep(min(delay, left))
            delay = min(2 * delay, 10.0)


def _locked(e: BaseException | None) -> bool:
    """SQLite's busy error, however wrapped (sqlite3, SQLAlchemy, MlflowException)."""
    while e is not None:
        if "database is locked" in str(e) or "database table is locked" in str(e):
            return True
        e = e.__cause__ or e.__context__
    return False


def _write_all(client, suite, artifact_root, records):
    exp_id = _get_experiment(client, suite, artifact_root)
    client.set_experiment_tag(exp_id, f"mlflow.sharedViewState.{HEADLINE_VIEW_KEY}",
                              json.dumps(HEADLINE_VIEW))
    existing = _active_runs_by_key(client, exp_id)
    runs, counts = [], {"created": 0, "updated": 0, "replaced": 0, "unchanged": 0}
    for rec in records:
        t = time.time()
        status, run_id = _ingest_one(client, exp_id, rec, existing.get(rec.run_key, []))
        counts[status] += 1
        runs.append({"run_key": rec.run_key, "run_id": run_id, "run_name": rec.run_name,
                     "run_dir": rec.tags["run_dir"], "status": status,
                     "seconds": round(time.time() - t, 4)})
        log.info("%s %s -> %s (%.2f s)", status, rec.run_name, run_id, runs[-1]["seconds"])
    active = sum(len(v) for v in _active_runs_by_key(client, exp_id).values())
    return runs, counts, exp_id, active


def _raise_store_error(e: Exception, uri: str) -> None:
    """Turn MLflow's failure to reach or write the store into one sentence."""
    from mlflow.exceptions import MlflowException

    text = str(e)
    if isinstance(e, PermissionError | OSError) and getattr(e, "filename", None):
        raise TrackingError(f"the MLflow store is not writable: cannot write {e.filename} "
                            f"({e.strerror})") from e
    if isinstance(e, MlflowException) and ("readonly" in text or "read-only" in text
                                           or "unable to open" in text):
        raise TrackingError(f"the MLflow store {redact_uri(uri)} is not writable "
                            f"({text.splitlines()[0][:300]})") from e
    if isinstance(e, MlflowException) and ("Max retries" in text or "Connection" in text
                                           or "API request to" in text):
        raise TrackingError(f"MLflow tracking server {redact_uri(uri)} failed during "
                            f"ingestion ({text.splitlines()[0][:300]}); run it again when "
                            "the server is back (unchanged runs are skipped)") from e
