"""``lt-bench ingest`` and ``lt-bench ui``. Imported at CLI start: no mlflow here."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from lt_bench.errors import UserError
from lt_bench.tracking.records import (
    DEFAULT_MANIFEST,
    UI_QUERY,
    default_tracking_uri,
    sqlite_path,
    view_url,
)

INGEST_HELP = """\
Ingest finished run folders into MLflow (idempotent): one experiment lt-bench/<suite>, one
MLflow run per run folder results/runs/{dataset}/{backbone}/{method}/seed{seed}/, found
again by its run_key tag. The MLflow run gets the training's start/end time, a short name
(method dataset/backbone/seed, then non-default knobs), the headline numbers as its
description and as the metrics 0_top1 1_many 2_medium 3_few 4_p_few (in %), a tag `group`
(dataset/backbone/method + non-default knobs) and the run files as artifacts. Each setting
(a group) gets a run with the mean and sample sd over its seeds (the seed runs nested under
it); the suite gets one summary run with the report's figures and the settings table. A run
folder retrained or re-configured becomes a new MLflow run; the old one stays, tagged
state=superseded. A SQLite store moved with the project is relocated (its artifact
locations rewritten) by every ingestion; --relocate does only that. See docs/mlflow.md."""


class StoreNotFoundError(UserError, FileNotFoundError):
    """No MLflow store where one was expected."""


def _run_dirs(args) -> list[Path]:
    from lt_bench.runs.index import selected_run_dirs

    try:
        return selected_run_dirs(args.metrics, args.runs_root)
    except FileNotFoundError as e:
        raise StoreNotFoundError(str(e)) from None


def cmd_ingest(args) -> None:
    from lt_bench.io import write_json
    from lt_bench.tracking.store import ingest, relocate_sqlite_store

    uri = args.tracking_uri or default_tracking_uri()
    if args.relocate:
        db = sqlite_path(uri)
        if db is None:
            raise UserError(f"--relocate rewrites a SQLite store's artifact locations; "
                            f"{uri!r} is not a sqlite:/// URI")
        if not db.is_file():
            raise StoreNotFoundError(f"no MLflow store at {db}")
        root = Path(args.artifact_root) if args.artifact_root else db.parent / "artifacts"
        n = relocate_sqlite_store(db, root)
        print(f"{db}: {n} experiment(s) relocated to {root}")
        return
    figures = args.figures_root
    if figures is None and (Path(args.runs_root).parent / "figures").is_dir():
        figures = Path(args.runs_root).parent / "figures"
    manifest = ingest(_run_dirs(args), args.suite, uri, artifact_root=args.artifact_root,
                      lock_timeout=args.lock_timeout, figures_root=figures)
    write_json(args.out, manifest)
    c = manifest["counts"]
    print(f"{c['run_folders']} run folders -> experiment {manifest['experiment']!r} "
          f"({c['created']} created, {c['updated']} updated, {c['superseded']} superseding "
          f"an older run, {c['unchanged']} unchanged; {c['active_runs_in_experiment']} current "
          f"runs in {c['settings']} settings) in {manifest['seconds']['total']:.1f} s; "
          f"manifest {args.out}")
    print(f"headline view: `lt-bench ui`, then {manifest['headline_view']}")
    print(f"settings (mean ± sd over seeds): {manifest['settings_view']}")


def ui_command(backend_store_uri: str, host: str, port: int) -> tuple[list[str], dict]:
    """``mlflow ui`` sized for a small machine: one worker, no job-execution workers."""
    db = sqlite_path(backend_store_uri)
    if db is not None and not db.is_file():
        raise StoreNotFoundError(f"no MLflow store at {db}; run `lt-bench ingest` (or the "
                                 "workflow) first")
    exe = Path(sys.executable).with_name("mlflow")
    cmd = [str(exe) if exe.is_file() else "mlflow", "ui", "--backend-store-uri",
           backend_store_uri, "--host", host, "--port", str(port), "--workers", "1"]
    return cmd, {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}


def cmd_ui(args) -> None:
    cmd, env = ui_command(args.backend_store_uri or default_tracking_uri(), args.host,
                          args.port)
    print(" ".join(cmd), file=sys.stderr)
    print(f"open http://{args.host}:{args.port}/#/experiments?{UI_QUERY} (the experiments "
          f"list in MLflow's model-training layout); the headline view of experiment N is "
          f"{view_url(f'http://{args.host}:{args.port}', 'N')}", file=sys.stderr, flush=True)
    # Become the server: no wrapper left holding memory beside it, and a signal to this PID
    # reaches `mlflow ui`, which forwards it to its uvicorn child (mlflow.server._run_server).
    os.execvpe(cmd[0], cmd, env)


def add_tracking_commands(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser("ingest", help="ingest finished run folders into MLflow (idempotent)",
                       description=INGEST_HELP,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    s.add_argument("--runs-root", default="results/runs",
                   help="folder of run folders {dataset}/{backbone}/{method}/seed{seed}")
    s.add_argument("--metrics", nargs="*", help="explicit metrics.json files (default: the "
                   "runs of --runs-root/{dataset}/index.txt, the workflow's list, else every "
                   "finished run under --runs-root)")
    s.add_argument("--suite", default="demo", help="suite name: experiment lt-bench/<suite>")
    s.add_argument("--tracking-uri", help="default: $MLFLOW_TRACKING_URI, else "
                   "sqlite:///<abs>/results/mlflow/mlflow.db")
    s.add_argument("--artifact-root", help="artifact folder of a new experiment (default: "
                   "artifacts/ beside a SQLite store; the server's default otherwise)")
    s.add_argument("--figures-root", help="the report's figures {dataset}/*.png, logged once "
                   "with the suite's summary run (default: figures/ beside --runs-root, if "
                   "present)")
    s.add_argument("--out", default=str(DEFAULT_MANIFEST), help="manifest JSON")
    s.add_argument("--lock-timeout", type=float, default=600.0,
                   help="seconds to wait for another ingestion (or a program holding a "
                   "lock on the SQLite store) to finish")
    s.add_argument("--relocate", action="store_true",
                   help="only rewrite a moved SQLite store's artifact locations, then exit")
    s.set_defaults(func=cmd_ingest)

    s = sub.add_parser("ui", help="start the MLflow UI on the project's store (1 worker)")
    s.add_argument("--backend-store-uri", help="default: as for ingest")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=5000)
    s.set_defaults(func=cmd_ui)
