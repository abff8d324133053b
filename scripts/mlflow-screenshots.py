#!/usr/bin/env python
"""Screenshots of the MLflow UI from a results folder, for docs/screenshots/.

    .venv/bin/python scripts/mlflow-screenshots.py results            # the demo's store
    .venv/bin/python scripts/mlflow-screenshots.py results --out /tmp/shots --suite demo

Reads ``RESULTS/mlflow/mlflow.db`` (what the workflow's ``ingest_mlflow`` wrote; with
``--ingest``, or when the store is missing, ingests ``RESULTS/runs`` first, with the figures
of ``RESULTS/figures``), starts ``lt-bench ui`` on a free port of 127.0.0.1 and writes, with
headless Chromium (tests/browser.py: Debian's chromium, over the DevTools protocol):

    mlflow-experiment.png  the experiment as it opens (the address `lt-bench ui` prints)
    mlflow-runs.png        the runs table in the headline view (every run, best top-1 first)
    mlflow-settings.png    the settings view: one row per setting, mean and sd over seeds
    mlflow-compare.png     MLflow's compare page for three runs (CE, LA, the backdoor)
    mlflow-run.png         the backdoor's run page (its description carries the headline)

MLflow's assistant side panel is closed before each picture. Look at every file afterwards.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

CLOSE_ASSISTANT = ("[...document.querySelectorAll('button[aria-label=Close]')]"
                   ".filter(b => b.getBoundingClientRect().x > innerWidth * 0.6)"
                   ".forEach(b => b.click())")

#: the compare page opens on a parallel-coordinates plot; the run names and numbers are below
COLLAPSE_PLOTS = ("[...document.querySelectorAll('body *')]"
                  ".filter(e => e.children.length === 0 && e.textContent.trim() === "
                  "'Run details').slice(0, 1).forEach(e => e.scrollIntoView({block: 'start'}))")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("results", type=Path, help="a results folder (runs/, figures/, mlflow/)")
    ap.add_argument("--suite", default="demo")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "screenshots")
    ap.add_argument("--ingest", action="store_true", help="ingest RESULTS/runs first")
    args = ap.parse_args()

    from browser import evaluate

    from lt_bench.tracking import find_run_dirs, ingest
    from lt_bench.tracking.records import SETTINGS_VIEW_KEY, view_url

    results = args.results.resolve()
    db = results / "mlflow" / "mlflow.db"
    uri = f"sqlite:///{db}"
    if args.ingest or not db.is_file():
        figures = results / "figures"
        ingest(find_run_dirs(results / "runs"), args.suite, uri,
               figures_root=figures if figures.is_dir() else None)
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(f"lt-bench/{args.suite}")
    if exp is None:
        raise SystemExit(f"{db}: no experiment lt-bench/{args.suite}; pass --ingest")
    seeds = client.search_runs([exp.experiment_id], "tags.kind = 'seed' AND "
                               "tags.state = 'current'", max_results=1000,
                               order_by=["metrics.`0_top1` DESC"])
    by_method = {}
    for r in seeds:  # best run first: the best seed of each method
        by_method.setdefault(r.data.tags.get("method"), r)
    three = [by_method[m] for m in ("ce", "la", "backdoor") if m in by_method]
    three += [r for r in seeds if r not in three][: 3 - len(three)]

    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    log = open(results / "mlflow" / "screenshots-ui.log", "w")  # noqa: SIM115
    exe = Path(sys.executable).with_name("lt-bench")
    proc = subprocess.Popen([str(exe), "ui", "--backend-store-uri", uri, "--port", str(port)], env={**env, "PYTHONPATH": str(ROOT)},
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.time() + 180
        while True:
            try:
                with urllib.request.urlopen(f"{base}/health", timeout=2):
                    break
            except OSError:
                if proc.poll() is not None or time.time() > deadline:
                    raise SystemExit("lt-bench ui did not start: "
                                     + (results / "mlflow/screenshots-ui.log").read_text()[-2000:]
                                     ) from None
                time.sleep(0.5)
        eid = exp.experiment_id
        ids = json.dumps([r.info.run_id for r in three], separators=(",", ":"))
        bd = by_method.get("backdoor", three[-1])
        shots = {
            "mlflow-experiment.png": (f"{base}/#/experiments/{eid}?workflowType=machine_learning",
                                      "location.href.includes('/runs')"),
            "mlflow-runs.png": (view_url(base, eid), "document.body.innerText.includes('0_top1')"),
            "mlflow-settings.png": (view_url(base, eid, SETTINGS_VIEW_KEY),
                                    "document.body.innerText.includes('0_top1_sd')"),
            "mlflow-compare.png": (f"{base}/#/compare-runs?runs={ids}&experiments=[\"{eid}\"]"
                                   "&workflowType=machine_learning",
                                   "document.body.innerText.includes('0_top1')",
                                   COLLAPSE_PLOTS),
            "mlflow-run.png": (f"{base}/#/experiments/{eid}/runs/{bd.info.run_id}"
                               "?workflowType=machine_learning",
                               "document.body.innerText.includes('top-1')"),
        }
        args.out.mkdir(parents=True, exist_ok=True)
        for name, (url, ready, *extra) in shots.items():
            evaluate(url, "true", ready=ready, settle_s=3.0, timeout_s=120,
                     before=";".join([CLOSE_ASSISTANT, *extra]), screenshot_to=args.out / name)
            print(args.out / name)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # the UI we started, by its process group
        proc.wait(timeout=30)
        log.close()


if __name__ == "__main__":
    main()
