"""Write run records to MLflow: one experiment per suite, one MLflow run per run folder.

Files are the source of truth; MLflow is the index and the view. This module decides where
and when (preflight checks, the lock, turning failures into one sentence);
:mod:`lt_bench.tracking.writer` decides what each MLflow run holds. Re-ingesting an
unchanged folder is a no-op (tag ``lt_bench.fingerprint``). A changed folder is updated in
place when its params, history and training times are unchanged (new metric values, tags,
artifacts); otherwise it becomes a new MLflow run with the same ``run_key`` and the old one
stays, tagged superseded: MLflow forbids changing a param or a start time and cannot drop
metric history, and a researcher keeps the record of what ran before.

Concurrency: SQLite breaks under parallel writers, so an ingestion into a SQLite store holds a
file lock (``<db>.lock`` beside it). A tracking server takes concurrent writers itself (a lab's
researchers ingest from several machines, where a local lock would guard nothing); a later
ingestion deletes duplicate runs of a key should two writers ever race.

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
import logging
import os
import sqlite3
import tempfile
import time
import urllib.error
import urllib.request
from contextlib import nullcontext
from pathlib import Path
from typing import Any

from lt_bench.errors import UserError
from lt_bench.tracking.records import (
    SETTINGS_VIEW_KEY,
    default_tracking_uri,
    experiment_name,
    finished_folder,
    read_run_folder,
    redact_uri,
    sqlite_path,
    suite_figures,
    view_url,
)

log = logging.getLogger(__name__)

#: MLflow retries an HTTP request 7 times with exponential backoff (4 min 15 s against a
#: server that is down; docs/mlflow.md, Failures); a user's own setting wins over these.
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


def method_defaults(methods: set[str]) -> dict[str, dict[str, Any] | None]:
    """Each method's default hyper-parameters from the registry (None: not registered); a
    variant's are its base's, so its MLflow names show its keys (``la_tau05 … τ=0.5``)."""
    from lt_bench.methods import METHODS

    def defaults(m: str) -> dict[str, Any] | None:
        if m not in METHODS:
            return None
        cls = METHODS.get(m)
        return dict(METHODS.get(cls.variant_of).defaults if cls.variant_of else cls.defaults)

    return {m: defaults(m) for m in methods}


def ingest(run_dirs: list[Path | str], suite: str, tracking_uri: str | None = None,
           artifact_root: Path | str | None = None, lock_timeout: float = 600.0,
           commit: str | None = None, figures_root: Path | str | None = None,
           defaults: dict[str, dict[str, Any] | None] | None = None) -> dict[str, Any]:
    """Ingest finished run folders into the suite's experiment; return the manifest.

    ``artifact_root`` (default: ``artifacts/`` beside a SQLite store; the server's choice
    otherwise) is where a newly created experiment keeps its runs' artifacts. ``commit`` is
    recorded only for runs whose ``config.json`` has no ``git_commit``. ``figures_root``
    (e.g. ``results/figures``): the report's figures, logged once, with the suite's summary
    run. ``defaults``:
    method → default hyper-parameters (default: from the method registry).
    """
    from filelock import FileLock, Timeout

    t_start = time.time()
    uri = tracking_uri or default_tracking_uri()
    folders = [finished_folder(d) for d in run_dirs]
    if defaults is None:
        defaults = method_defaults({f.method for f in folders})
    several = len({f.dataset for f in folders}) > 1
    records = [read_run_folder(f, suite, commit, defaults.get(f.method), several)
               for f in folders]
    figures = suite_figures(figures_root)
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

    # SQLite breaks under parallel writers: one ingestion at a time per store file. A server
    # (PostgreSQL, MySQL behind `mlflow server`) takes concurrent writers itself, and a lock
    # on this machine would not stop a colleague's ingestion on another one anyway.
    lock = lock_path_for(uri)
    lock.parent.mkdir(parents=True, exist_ok=True)
    t_lock = time.time()
    guard = FileLock(str(lock), timeout=lock_timeout) if db is not None else nullcontext()
    try:
        with guard:
            waited = time.time() - t_lock
            relocated = relocate_sqlite_store(db, Path(artifact_root)) if db else 0
            t0 = time.time()
            import mlflow  # noqa: F401  (~1 s; only here)
            from mlflow.tracking import MlflowClient

            _quiet_mlflow_logs()
            from lt_bench.tracking.writer import fast_sqlite_commits, write_all

            if db is not None:
                fast_sqlite_commits()
            import_s = time.time() - t0
            # retried while another process holds the SQLite store (a bounded backoff); the
            # client inside: opening the store already takes the lock (journal mode, schema)
            runs, counts, exp_id, active, summary_id = retry_while_locked(
                lambda: write_all(MlflowClient(tracking_uri=uri), suite, artifact_root,
                                  records, figures), db, lock_timeout)
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
        "settings_view": view_url("<ui>", exp_id, SETTINGS_VIEW_KEY),
        "summary_run_id": summary_id,
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
