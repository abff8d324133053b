"""The MLflow UI as a researcher sees it: `lt-bench ui` on a tiny store, headless Chromium.

MLflow's UI is a React app; Chromium's ``--dump-dom`` with a virtual-time budget renders the
runs table (checked: the run names and the headline columns are in the dumped DOM), so the
assertions read the rendered page, not the REST API. The expected numbers come from the
run folders' ``metrics.json``. ``LT_BENCH_UPDATE_SCREENSHOTS=1`` also refreshes
``docs/screenshots/mlflow-*.png`` (and ``docs/mlflow-ui.png``) from this run.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from browser import dump_dom, screenshot
from fakeruns import make_runs

from lt_bench.tracking import find_run_dirs, ingest

VENV_BIN = Path(sys.executable).parent
DOCS = Path(__file__).resolve().parents[1] / "docs"
T0 = 1_700_000_000.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _realistic(run_dir: Path, i: int) -> dict:
    """Fake runs with what the run layer writes: method defaults (+ one knob), times, commit."""
    from lt_bench.methods import METHODS

    c = json.loads((run_dir / "config.json").read_text())
    hp = dict(METHODS.get(c["method"]).defaults)
    if c["method"] == "la":
        hp["tau"] = 0.5  # a non-default knob: it must show in the name and the group
    c.update(hparams=hp, git_commit="0123abc")
    (run_dir / "config.json").write_text(json.dumps(c))
    m = json.loads((run_dir / "metrics.json").read_text())
    m.update(started_at=T0 + 60 * i, finished_at=T0 + 60 * i + 5 + 3 * i)
    (run_dir / "metrics.json").write_text(json.dumps(m))
    return m


def _rss_kb(pid: int) -> int:
    """RSS of ``pid`` and its descendants (kB), from /proc."""
    children = {}
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                ppid = int((p / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(p.name))
    total, todo = 0, [pid]
    while todo:
        q = todo.pop()
        todo += children.get(q, [])
        try:
            for line in Path(f"/proc/{q}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total


@pytest.fixture(scope="module")
def ui(tmp_path_factory):
    root = tmp_path_factory.mktemp("ui")
    runs = root / "results" / "runs"
    make_runs(runs, seeds=(0, 1))
    dirs = find_run_dirs(runs)
    metrics = {d: _realistic(d, i) for i, d in enumerate(dirs)}
    uri = f"sqlite:///{root}/results/mlflow/mlflow.db"
    man = ingest(dirs, "demo", uri)
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    log = open(root / "ui.log", "w")  # noqa: SIM115
    proc = subprocess.Popen([str(VENV_BIN / "lt-bench"), "ui", "--backend-store-uri", uri,
                             "--port", str(port)], env=env, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"lt-bench ui exited: {(root / 'ui.log').read_text()}")
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2):
                    break
            except OSError:
                if time.time() > deadline:
                    raise TimeoutError((root / "ui.log").read_text()[-2000:]) from None
                time.sleep(0.5)
        yield {"url": url, "proc": proc, "manifest": man, "metrics": metrics, "root": root}
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)  # only if the test below did not stop it
            proc.wait(timeout=10)
        log.close()


def _keep(png: Path, name: str) -> None:
    if os.environ.get("LT_BENCH_UPDATE_SCREENSHOTS") == "1":
        (DOCS / "screenshots").mkdir(parents=True, exist_ok=True)
        shutil.copyfile(png, DOCS / "screenshots" / name)
        if name == "mlflow-runs.png":
            shutil.copyfile(png, DOCS / "mlflow-ui.png")


def test_runs_page_shows_names_and_headline(ui, tmp_path):
    man = ui["manifest"]
    view = man["headline_view"].replace("<ui>", ui["url"])
    dom = dump_dom(view, wait_ms=10000)
    assert "Training runs" in dom, dom[-2000:]
    for col in ("0_top1", "1_many", "2_medium", "3_few", "4_p_few"):
        assert col in dom, col
    for m in ui["metrics"].values():
        name = f"{m['method']} · {m['backbone']} · s{m['seed']}"
        if m["method"] == "la":
            name = f"la τ=0.5 · {m['backbone']} · s{m['seed']}"
        assert name in dom, name
        assert f">{round(100 * m['top1'], 1):g}<" in dom, (name, m["top1"])
    assert "toy/toyclip0/la τ=0.5" in dom  # the readable group tag is a column of the view
    _keep(screenshot(view, tmp_path / "runs.png", wait_ms=10000), "mlflow-runs.png")


def test_run_page_shows_description(ui, tmp_path):
    man = ui["manifest"]
    run = next(r for r in man["runs"] if r["run_name"] == "la τ=0.5 · toyclip0 · s0")
    m = next(m for m in ui["metrics"].values()
             if (m["method"], m["backbone"], m["seed"]) == ("la", "toyclip0", 0))
    url = f"{ui['url']}/#/experiments/{man['experiment_id']}/runs/{run['run_id']}"
    dom = dump_dom(url, wait_ms=10000)
    assert f"top-1 {100 * m['top1']:.1f}" in dom
    assert f"few {100 * m['few']:.1f}" in dom
    assert "seed 0" in dom
    _keep(screenshot(url, tmp_path / "run.png", wait_ms=10000), "mlflow-run.png")


def test_ui_is_the_server_and_stops_with_it(ui):
    proc = ui["proc"]
    cmdline = Path(f"/proc/{proc.pid}/cmdline").read_bytes().split(b"\0")
    # the wrapper exec'd `mlflow ui`: the PID we started is the server, not a Python parent
    assert any(a.endswith(b"mlflow") for a in cmdline[:2]) and b"ui" in cmdline, cmdline
    rss_mb = _rss_kb(proc.pid) / 1024
    print(f"lt-bench ui RSS (mlflow ui + uvicorn): {rss_mb:.0f} MB")
    assert rss_mb < 900, rss_mb  # was ~1.1 GB with the wrapper beside the server
    os.kill(proc.pid, signal.SIGTERM)
    proc.wait(timeout=30)
    with pytest.raises(OSError):
        urllib.request.urlopen(f"{ui['url']}/health", timeout=2)
