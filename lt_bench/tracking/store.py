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
from contextlib import nullcontext
from pathlib import Path
from typing import Any

from lt_bench.errors import UserError
from lt_bench.io import sha256_file, stable_hash
from lt_bench.tracking.records import (
    EXPERIMENT_KIND_TAG,
    HEADLINE,
    HEADLINE_VIEW_KEY,
    KIND_SEED,
    KIND_SETTING,
    KIND_SUMMARY,
    SD_SUFFIX,
    SETTINGS_VIEW_KEY,
    STATE_CURRENT,
    STATE_SUPERSEDED,
    TAG_FINGERPRINT,
    TAG_HISTORY,
    TAG_PARAMS,
    TAG_SUPERSEDED_BY,
    TAG_TIMES,
    VIEWS,
    RunRecord,
    default_tracking_uri,
    experiment_name,
    read_run_folder,
    redact_uri,
    setting_stats,
    sqlite_path,
    suite_figures,
    view_url,
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

def fast_sqlite_commits() -> None:
    """WAL journal with ``synchronous=NORMAL`` on every SQLite connection of this process.

    MLflow commits each call (a run's create, its batch, its end: ~8 commits a run), and in
    SQLite's default rollback-journal mode every commit waits for fsync: on this machine's
    disk 22 ms each, 29 of the 139 s that 160 runs took (cProfile, benchmarks/ingest.py).
    WAL + NORMAL does not fsync per commit and still never corrupts the database on a crash
    (the last commits may be lost; the run folders are the truth and re-ingestion restores
    them). WAL persists in the file; readers such as ``mlflow ui`` work unchanged.
    """
    from sqlalchemy import event
    from sqlalchemy.pool import Pool

    if getattr(fast_sqlite_commits, "done", False):
        return

    def _on_connect(dbapi_con, _record):
        if isinstance(dbapi_con, sqlite3.Connection):
            cur = dbapi_con.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.close()

    event.listen(Pool, "connect", _on_connect)
    fast_sqlite_commits.done = True


def _experiment_note(suite: str, counts: dict[str, int], exp_id: str) -> str:
    n_seed, n_set = counts.get(KIND_SEED, 0), counts.get(KIND_SETTING, 0)
    # MLflow 3.17 shows this note also on its GenAI landing page, where a browser that never
    # picked "Model training" lands from the experiments list: the way out, one click away
    runs = view_url("", exp_id).lstrip("/")
    settings = view_url("", exp_id, SETTINGS_VIEW_KEY).lstrip("/")
    links = (f"**[Runs table (headline view)]({runs})** · "
             f"**[Settings: mean ± sd over seeds]({settings})**\n\n")
    more = (" The runs table loads 100 rows at a time: press **Load more** at its foot for "
            "the rest." if max(n_seed, n_set) > 100 else "")
    return (f"{links}lt-bench suite `{suite}`: **{n_seed}** runs (one per run folder "
            f"dataset/backbone/method/seed), **{n_set}** settings (each the mean ± sample sd "
            f"of its seeds, the seed runs nested under it), and the run `summary · {suite}` "
            "with the suite-wide figures and the settings table. Saved views: "
            f"`?viewStateShareKey={HEADLINE_VIEW_KEY}` (every run, headline columns `0_top1` … "
            f"`4_p_few` in %, best top-1 first) and `?viewStateShareKey={SETTINGS_VIEW_KEY}` "
            f"(one row per setting: mean and `_sd` columns).{more} Ingested by "
            "`lt-bench ingest`; superseded runs (retrained or re-configured) keep the tag "
            f"`state = {STATE_SUPERSEDED}`.")


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
        return client.create_experiment(name, artifact_location=location,
                                        tags={"lt_bench.suite": suite,
                                              EXPERIMENT_KIND_TAG[0]: EXPERIMENT_KIND_TAG[1]})
    except MlflowException:  # created meanwhile by another writer
        exp = client.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


def _search_all(client, experiment_id: str, filter_string: str) -> list:
    from mlflow.entities import ViewType

    out, token = [], None
    while True:
        page = client.search_runs([experiment_id], filter_string=filter_string,
                                  run_view_type=ViewType.ACTIVE_ONLY, max_results=1000,
                                  order_by=["attributes.start_time ASC"], page_token=token)
        out += list(page)
        token = page.token
        if not token:
            return out


def _current_by_tag(runs: list, tag: str) -> dict[str, list]:
    """Active, not superseded runs by the value of ``tag`` (oldest first)."""
    by: dict[str, list] = {}
    for r in runs:
        t = r.data.tags
        if t.get(tag) and TAG_SUPERSEDED_BY not in t and t.get("state") != STATE_SUPERSEDED:
            by.setdefault(t[tag], []).append(r)
    return by


def _log_files(client, run, files: list[tuple[Path, str]]) -> None:
    """A run's files, one ``log_artifacts`` per folder from a staging folder of symlinks,
    into the repository of the run's own ``artifact_uri``: ``client.log_artifact`` looks the
    run up again (a full ``get_run``, ~0.1 s of SQLAlchemy per call) for every file."""
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    repo = get_artifact_repository(run.info.artifact_uri, tracking_uri=client.tracking_uri)
    by_folder: dict[str, list[Path]] = {}
    for f, folder in files:
        by_folder.setdefault(folder, []).append(f)
    for folder, paths in by_folder.items():
        with tempfile.TemporaryDirectory(prefix="lt-bench-ingest-") as tmp:
            for f in paths:
                os.symlink(Path(f).resolve(), Path(tmp) / Path(f).name)
            repo.log_artifacts(tmp, artifact_path=folder or None)


def _metric_objs(items, stamp: int):
    from mlflow.entities import Metric

    return [Metric(k, v, stamp, step) for k, v, step in items]


def _create_seed_run(client, experiment_id: str, rec: RunRecord) -> str:
    from mlflow.entities import Param

    tags = {**rec.tags, "mlflow.runName": rec.run_name}
    run = client.create_run(experiment_id, run_name=rec.run_name, start_time=rec.start_ms,
                            tags=tags)
    run_id = run.info.run_id
    stamp = rec.end_ms if rec.end_ms is not None else int(time.time() * 1000)
    try:
        client.log_batch(run_id, metrics=_metric_objs(rec.metrics, stamp),
                         params=[Param(k, v) for k, v in rec.params.items()])
        _log_files(client, run, [(f, "") for f in rec.artifacts]
                   + [(f, "figures") for f in rec.figures])
    except BaseException:
        client.set_terminated(run_id, "FAILED")  # the next ingestion replaces it
        raise
    client.set_terminated(run_id, "FINISHED", end_time=rec.end_ms)
    return run_id


def _update_seed_run(client, old, rec: RunRecord) -> None:
    """New metric values, tags or files, same params, history and times: in place."""
    from mlflow.entities import RunTag

    last = max((s for _, _, s in rec.metrics), default=0)
    # logged now: MLflow keeps, per key and step, the value with the latest timestamp
    finals = [m for m in rec.metrics if m[2] == last]
    client.log_batch(old.info.run_id, metrics=_metric_objs(finals, int(time.time() * 1000)),
                     tags=[RunTag(k, v) for k, v in rec.tags.items()])
    _log_files(client, old, [(f, "") for f in rec.artifacts]
               + [(f, "figures") for f in rec.figures])
    if old.info.run_name != rec.run_name:
        client.update_run(old.info.run_id, name=rec.run_name)
    client.set_terminated(old.info.run_id, "FINISHED", end_time=rec.end_ms)


def _supersede(client, old, new_id: str) -> None:
    """Keep a retrained or re-configured setting's previous run, marked as such."""
    from mlflow.entities import RunTag

    rid = old.info.run_id
    client.log_batch(rid, tags=[RunTag(TAG_SUPERSEDED_BY, new_id),
                                RunTag("state", STATE_SUPERSEDED)])
    if "mlflow.parentRunId" in old.data.tags:  # not among its setting's current seeds
        client.delete_tag(rid, "mlflow.parentRunId")
    if not old.info.run_name.endswith("(superseded)"):
        client.update_run(rid, name=f"{old.info.run_name} (superseded)")


def _ingest_one(client, experiment_id: str, rec: RunRecord, existing: list) -> tuple[str, str]:
    """Create, update or supersede the MLflow run of ``rec``; returns (status, run_id)."""
    for dup in existing[1:]:  # two writers raced on a shared server: keep the oldest
        client.delete_run(dup.info.run_id)
        log.warning("%s: deleted duplicate MLflow run %s", rec.run_dir, dup.info.run_id)
    if not existing:
        return "created", _create_seed_run(client, experiment_id, rec)
    old = existing[0]
    tags = old.data.tags
    if tags.get(TAG_FINGERPRINT) == rec.fingerprint and old.info.status == "FINISHED":
        return "unchanged", old.info.run_id
    if old.info.status == "FINISHED" and \
            all(tags.get(t) == rec.tags[t] for t in (TAG_PARAMS, TAG_HISTORY, TAG_TIMES)):
        _update_seed_run(client, old, rec)
        return "updated", old.info.run_id
    new_id = _create_seed_run(client, experiment_id, rec)
    if old.info.status == "FINISHED":
        _supersede(client, old, new_id)
        return "superseded", new_id
    client.delete_run(old.info.run_id)  # a failed half-written ingestion: nothing to keep
    return "replaced", new_id


def _setting_content(key: str, seeds: list, suite: str) -> dict[str, Any]:
    """What the setting run of ``seeds`` (current seed runs of one group) shows."""
    t0 = seeds[0].data.tags
    metrics: dict[str, float] = {"n_seeds": float(len(seeds))}
    parts = []
    for exact, alias, label in HEADLINE:  # from the exact fractions, not the rounded copies
        vals = [100 * r.data.metrics[exact] for r in seeds if exact in r.data.metrics]
        if not vals:
            continue
        mean, sd = setting_stats(vals)
        metrics[alias] = round(mean, 1)
        if sd is not None:
            metrics[alias + SD_SUFFIX] = round(sd, 1)
        parts.append(f"{label} {mean:.1f}" + (f" ± {sd:.1f}" if sd is not None else ""))
    names = ", ".join(sorted(f"s{r.data.tags.get('seed')}" for r in seeds))
    desc = (f"**{' · '.join(parts)}** (% accuracy, mean ± sample sd over {len(seeds)} "
            f"seed{'s' if len(seeds) != 1 else ''}: {names})\n\n{t0.get('group')}.")
    name = t0.get("setting_name") or t0.get("group", key)
    tags = {"kind": KIND_SETTING, "state": STATE_CURRENT, "setting_key": key,
            "group": t0.get("group", ""), "group_key": t0.get("group_key", ""), "suite": suite,
            **{k: t0.get(k, "") for k in ("dataset", "backbone", "method")},
            "mlflow.note.content": desc}
    name = f"{name} ×{len(seeds)}"
    fp = stable_hash({"m": metrics, "t": tags, "n": name}, n=16)
    return {"name": name, "metrics": metrics, "tags": {**tags, TAG_FINGERPRINT: fp},
            "start": min(r.info.start_time for r in seeds),
            "end": max((r.info.end_time or r.info.start_time) for r in seeds)}


def _setting_key(suite: str, group_key: str | None) -> str:
    return stable_hash({"suite": suite, "group": group_key}, n=16)


def _write_settings(client, exp_id: str, suite: str, seed_runs: list, all_runs: list,
                    touched: set[str]) -> dict:
    """One setting run per group of current seed runs: mean ± sd, the seeds nested under it.

    Only the settings of ``touched`` group keys (this ingestion's run folders and the runs
    they superseded): another researcher ingesting other settings into the same experiment
    at the same time writes its own, so two writers never create the same setting run.
    """
    from mlflow.entities import Metric, RunTag

    groups: dict[str, list] = {}
    for r in seed_runs:
        if r.data.tags.get("group_key") in touched:
            groups.setdefault(_setting_key(suite, r.data.tags.get("group_key")), []).append(r)
    touched_keys = {_setting_key(suite, g) for g in touched}
    existing = _current_by_tag([r for r in all_runs if r.data.tags.get("kind") == KIND_SETTING],
                               "setting_key")
    counts = {"settings_written": 0}
    now = int(time.time() * 1000)
    for key, seeds in sorted(groups.items()):
        c = _setting_content(key, seeds, suite)
        old = existing.pop(key, [])
        for dup in old[1:]:
            client.delete_run(dup.info.run_id)  # derived from the seeds: safe to drop
        if old and old[0].data.tags.get(TAG_FINGERPRINT) == c["tags"][TAG_FINGERPRINT]:
            sid = old[0].info.run_id
        else:
            if old and (set(old[0].data.metrics) - set(c["metrics"])
                        or old[0].info.start_time != c["start"]):
                # a metric that no longer applies (an sd of one seed) cannot be removed from
                # an MLflow run: the setting run, derived from its seeds, is made afresh
                client.delete_run(old[0].info.run_id)
                old = []
            if old:
                sid = old[0].info.run_id
                if old[0].info.run_name != c["name"]:
                    client.update_run(sid, name=c["name"])
            else:
                sid = client.create_run(exp_id, run_name=c["name"], start_time=c["start"],
                                        tags={"mlflow.runName": c["name"]}).info.run_id
            client.log_batch(sid, metrics=[Metric(k, v, now, 0) for k, v in
                                           c["metrics"].items()],
                             tags=[RunTag(k, v) for k, v in c["tags"].items()])
            client.set_terminated(sid, "FINISHED", end_time=c["end"])
            counts["settings_written"] += 1
        for r in seeds:
            if r.data.tags.get("mlflow.parentRunId") != sid:
                client.set_tag(r.info.run_id, "mlflow.parentRunId", sid)
    for key, gone in existing.items():  # no current seed left (re-configured): keep, marked
        for r in gone if key in touched_keys else []:
            client.log_batch(r.info.run_id, tags=[RunTag("state", STATE_SUPERSEDED)])
    counts["settings"] = len(groups)
    return counts


def _settings_csv(setting_runs: list) -> str:
    """The settings table: one row per current setting run, its mean and sample sd (in %,
    as the run's metrics) per headline metric, sorted by setting."""
    import csv
    import io

    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["setting", "n_seeds"] + [f"{lab} {s}" for _, _, lab in HEADLINE
                                         for s in ("mean", "sd")])
    for r in sorted(setting_runs, key=lambda r: r.data.tags.get("group", "")):
        m = r.data.metrics
        cells = []
        for _, alias, _ in HEADLINE:
            for k in (alias, alias + SD_SUFFIX):
                cells.append(f"{m[k]:.1f}" if k in m else "")
        w.writerow([r.data.tags.get("group", ""), int(m.get("n_seeds", 0)), *cells])
    return buf.getvalue()


def _oldest(runs: list) -> list:
    return sorted(runs, key=lambda r: (r.info.start_time or 0, r.info.run_id))


def _write_summary(client, exp_id: str, suite: str, figures: list) -> str:
    """The suite's summary run: the suite-wide figures and the settings table, once.

    Two ingestions at once may both create it: each then keeps the oldest (start time, id)
    and deletes the other, so they agree on one; its figures folders accumulate
    (``figures/<dataset>/``), so researchers with different datasets share it.
    """
    from mlflow.entities import RunTag

    key = f"summary:{suite}"
    setting_runs = _search_all(client, exp_id, f"tags.kind = '{KIND_SETTING}' AND "
                                                f"tags.state = '{STATE_CURRENT}'")
    table = _settings_csv(setting_runs)
    # what the files hold, not where they are: a moved project is not a change
    fp = stable_hash({"figs": [(d, f.name, sha256_file(f)) for f, d in figures],
                      "table": table}, n=16)
    summary_filter = f"tags.summary_key = '{key}'"
    old = _oldest(_search_all(client, exp_id, summary_filter))
    if old and old[0].data.tags.get(TAG_FINGERPRINT) == fp:
        return old[0].info.run_id, len(setting_runs)
    name = f"summary · {suite}"
    if not old:
        client.create_run(exp_id, run_name=name, tags={"mlflow.runName": name,
                                                      "summary_key": key})
        old = _oldest(_search_all(client, exp_id, summary_filter))
    for dup in old[1:]:
        client.delete_run(dup.info.run_id)
    desc = (f"Suite `{suite}`: {len(setting_runs)} settings (mean ± sd over seeds in "
            "`settings.csv`; the same numbers are the setting runs' metrics) and the "
            f"report's suite-wide figures ({len(figures)} files under `figures/`).")
    tags = {"kind": KIND_SUMMARY, "state": STATE_CURRENT, "summary_key": key, "suite": suite,
            "mlflow.note.content": desc, TAG_FINGERPRINT: fp}
    run = old[0]
    sid = run.info.run_id
    with tempfile.TemporaryDirectory(prefix="lt-bench-summary-") as tmp:
        (Path(tmp) / "settings.csv").write_text(table)
        _log_files(client, run, [(Path(tmp) / "settings.csv", ""), *figures])
    client.log_batch(sid, tags=[RunTag(k, v) for k, v in tags.items()])
    client.set_terminated(sid, "FINISHED")
    return sid, len(setting_runs)


def _write_all(client, suite, artifact_root, records, figures):
    from mlflow.entities import ViewType  # noqa: F401  (fail early if mlflow is broken)

    exp_id = _get_experiment(client, suite, artifact_root)
    client.set_experiment_tag(exp_id, *EXPERIMENT_KIND_TAG)
    for key, view in VIEWS.items():
        client.set_experiment_tag(exp_id, f"mlflow.sharedViewState.{key}", json.dumps(view))
    runs_before = _search_all(client, exp_id, "tags.run_key != ''")
    existing = _current_by_tag(runs_before, "run_key")
    runs, counts = [], {"created": 0, "updated": 0, "superseded": 0, "replaced": 0,
                        "unchanged": 0}
    touched = {r.tags["group_key"] for r in records}
    touched |= {o.data.tags.get("group_key") for r in records
                for o in existing.get(r.run_key, [])}
    for rec in records:
        t = time.time()
        status, run_id = _ingest_one(client, exp_id, rec, existing.get(rec.run_key, []))
        counts[status] += 1
        runs.append({"run_key": rec.run_key, "run_id": run_id, "run_name": rec.run_name,
                     "run_dir": rec.tags["run_dir"], "status": status,
                     "seconds": round(time.time() - t, 4)})
        log.info("%s %s -> %s (%.2f s)", status, rec.run_name, run_id, runs[-1]["seconds"])
    all_runs = _search_all(client, exp_id, "")
    seed_runs = [r for rs in _current_by_tag(all_runs, "run_key").values() for r in rs[:1]]
    counts.update(_write_settings(client, exp_id, suite, seed_runs, all_runs, touched))
    summary_id, n_settings = _write_summary(client, exp_id, suite, figures)
    kinds = {KIND_SEED: len(seed_runs), KIND_SETTING: n_settings}
    client.set_experiment_tag(exp_id, "mlflow.note.content", _experiment_note(suite, kinds, exp_id))
    return runs, counts, exp_id, len(seed_runs), summary_id


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
    (e.g. ``results/figures``): the report's figures, logged once, with the suite's summary
    run. ``defaults``:
    method → default hyper-parameters (default: from the method registry).
    """
    from filelock import FileLock, Timeout

    t_start = time.time()
    uri = tracking_uri or default_tracking_uri()
    run_dirs = [Path(d) for d in run_dirs]
    if defaults is None:
        defaults = method_defaults(_methods_of(run_dirs))
    # the folder layout {dataset}/{backbone}/{method}/seed{seed}; read_run_folder checks it
    several = len({d.parent.parent.parent.name for d in run_dirs}) > 1
    records = [read_run_folder(d, suite, commit, defaults.get(d.parent.name), several)
               for d in run_dirs]
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
            if db is not None:
                fast_sqlite_commits()
            import_s = time.time() - t0
            client = MlflowClient(tracking_uri=uri)
            runs, counts, exp_id, active, summary_id = _write_all(
                client, suite, artifact_root, records, figures)
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
