"""MLflow calls for one suite's experiment: seed runs, setting runs, the summary run.

:mod:`lt_bench.tracking.store` decides where and when (preflight, lock, errors) and calls
:func:`write_all` with an ``MlflowClient``; this module decides what each MLflow run holds.
Imported only once mlflow is (inside ``store.ingest``).

* seed runs: one per run folder (``kind = seed``), created, updated in place, or superseded
  (a new run; the old one kept, ``state = superseded``, ``lt_bench.superseded_by``);
* setting runs: one per group of seeds (``kind = setting``), mean and sample sd over the
  current seeds, the seed runs nested under it;
* the summary run: one per suite (``kind = summary``), the figures once, ``settings.csv``.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import tempfile
import time
from pathlib import Path
from typing import Any

from lt_bench.io import sha256_file, stable_hash
from lt_bench.tracking.races import set_experiment_tag
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
    experiment_name,
    setting_stats,
    view_url,
)

log = logging.getLogger(__name__)


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
            try:
                cur.execute("PRAGMA journal_mode=WAL")
                cur.execute("PRAGMA synchronous=NORMAL")
            except sqlite3.OperationalError:
                pass  # the store is locked by another process: the writes retry (store.py)
            finally:
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
            **{k: t0[k] for k in ("base_method",) if t0.get(k)}, "mlflow.note.content": desc}
    name = f"{name} ×{len(seeds)}"
    fp = stable_hash({"m": metrics, "t": tags, "n": name}, n=16)
    return {"name": name, "metrics": metrics, "tags": {**tags, TAG_FINGERPRINT: fp},
            "start": min(r.info.start_time for r in seeds),
            "end": max((r.info.end_time or r.info.start_time) for r in seeds)}


def _setting_key(suite: str, group_key: str | None) -> str:
    return stable_hash({"suite": suite, "group": group_key}, n=16)


def _setting_runs_for(client, exp_id: str, suite: str, records: list,
                      all_runs: list) -> tuple[dict[str, str], int]:
    """group_key -> the id of its current setting run, created (empty) where missing; and
    how many were created. :func:`_write_settings` fills them in."""
    existing = _current_by_tag([r for r in all_runs if r.data.tags.get("kind") == KIND_SETTING],
                               "setting_key")
    by_group: dict[str, list] = {}
    for rec in records:
        by_group.setdefault(rec.tags["group_key"], []).append(rec)
    out, made = {}, 0
    for g, recs in by_group.items():
        key = _setting_key(suite, g)
        if key in existing:
            out[g] = _oldest(existing[key])[0].info.run_id
            continue
        name = recs[0].tags["setting_name"]
        starts = [r.start_ms for r in recs if r.start_ms is not None]
        out[g] = client.create_run(
            exp_id, run_name=name, start_time=min(starts) if starts else None,
            tags={"mlflow.runName": name, "kind": KIND_SETTING, "state": STATE_CURRENT,
                  "setting_key": key, "group_key": g, "suite": suite}).info.run_id
        made += 1
    return out, made


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
        old = _oldest(existing.pop(key, []))
        for dup in old[1:]:
            client.delete_run(dup.info.run_id)  # derived from the seeds: safe to drop
        if old and old[0].data.tags.get(TAG_FINGERPRINT) == c["tags"][TAG_FINGERPRINT]:
            sid = old[0].info.run_id
        else:
            if old and set(old[0].data.metrics) - set(c["metrics"]):
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


def write_all(client, suite, artifact_root, records, figures):
    """Write ``records`` and the derived runs into the suite's experiment; returns
    (per-run rows, counts, experiment id, current seed runs, summary run id)."""
    from mlflow.entities import ViewType  # noqa: F401  (fail early if mlflow is broken)

    exp_id = _get_experiment(client, suite, artifact_root)
    set_experiment_tag(client, exp_id, *EXPERIMENT_KIND_TAG)
    for key, view in VIEWS.items():
        set_experiment_tag(client, exp_id, f"mlflow.sharedViewState.{key}", json.dumps(view))
    runs_before = _search_all(client, exp_id, "")
    existing = _current_by_tag(runs_before, "run_key")
    runs, counts = [], {"created": 0, "updated": 0, "superseded": 0, "replaced": 0,
                        "unchanged": 0}
    touched = {r.tags["group_key"] for r in records}
    touched |= {o.data.tags.get("group_key") for r in records
                for o in existing.get(r.run_key, [])}
    # the setting runs first, so that a new seed run is created nested under its setting
    # (one call less per run than tagging it afterwards)
    parents, made = _setting_runs_for(client, exp_id, suite, records, runs_before)
    for rec in records:
        rec.tags["mlflow.parentRunId"] = parents[rec.tags["group_key"]]
        t = time.time()
        status, run_id = _ingest_one(client, exp_id, rec, existing.get(rec.run_key, []))
        counts[status] += 1
        runs.append({"run_key": rec.run_key, "run_id": run_id, "run_name": rec.run_name,
                     "run_dir": rec.tags["run_dir"], "status": status,
                     "seconds": round(time.time() - t, 4)})
        log.info("%s %s -> %s (%.2f s)", status, rec.run_name, run_id, runs[-1]["seconds"])
    changed = made or any(r["status"] != "unchanged" for r in runs)
    all_runs = _search_all(client, exp_id, "") if changed else runs_before
    seed_runs = [r for rs in _current_by_tag(all_runs, "run_key").values() for r in rs[:1]]
    counts.update(_write_settings(client, exp_id, suite, seed_runs, all_runs, touched))
    summary_id, n_settings = _write_summary(client, exp_id, suite, figures)
    note = _experiment_note(suite, {KIND_SEED: len(seed_runs), KIND_SETTING: n_settings}, exp_id)
    set_experiment_tag(client, exp_id, "mlflow.note.content", note)
    return runs, counts, exp_id, len(seed_runs), summary_id
