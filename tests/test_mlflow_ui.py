"""The MLflow UI as a researcher sees it: `lt-bench ui` on a tiny store, headless Chromium.

MLflow's UI is a React app. The tests drive headless Chromium over its DevTools protocol
(``browser.evaluate``) and read the rendered page: its text (what the window shows), where
the address led (the training layout, not MLflow 3's GenAI landing page), and the layout
(is a run name cut by its column? the DOM alone holds the whole name either way). The
expected numbers come from the run folders' ``metrics.json``. ``LT_BENCH_UPDATE_SCREENSHOTS=1``
also copies the screenshots to ``docs/screenshots/mlflow-*.png``; the published ones come
from a real store, by ``scripts/mlflow-screenshots.py``."""

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
    make_runs(runs, methods=("zero_shot", "ce", "la", "backdoor_same_backbone"), seeds=(0, 1))
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


#: JavaScript: every leaf element whose text starts a backdoor run name, and whether a person
#: sees it whole (no box between it and its table cell is narrower than its content)
BACKDOOR_NAMES_CUT = r"""(() => {
  const out = [];
  for (const el of document.querySelectorAll('body *')) {
    const t = (el.textContent || '').trim();
    if (el.children.length !== 0 || !/^bd(_same)? (toyclip\d|ensemble)/.test(t)) continue;
    let cut = false;
    for (let e = el, i = 0; e && i < 8; e = e.parentElement, i++) {
      if (e.scrollWidth > e.clientWidth + 1) { cut = true; break; }
      if (e.getAttribute('role') === 'gridcell') break;
    }
    out.push([t, cut]);
  }
  return out;
})()"""
GENAI_LANDING = ("Observability", "Detect Issues", "Overview")


def _page(url: str, ready: str, shot: Path | None = None):
    from browser import evaluate

    cells = "[...document.querySelectorAll('[role=gridcell]')].map(e => e.innerText.trim())"
    return evaluate(url, f"[location.href, document.body.innerText, {BACKDOOR_NAMES_CUT}, "
                         f"{cells}]",
                    ready=ready, settle_s=2.0, timeout_s=90, screenshot_to=shot)


def _name(m: dict) -> str:
    from lt_bench.tracking.records import run_name

    return run_name(m["method"], "τ=0.5" if m["method"] == "la" else "", None,
                    m["backbone"], m["seed"])


def test_headline_view_as_a_person_sees_it(ui, tmp_path):
    """The printed link: training layout, headline columns, every run, names not cut."""
    man = ui["manifest"]
    view = man["headline_view"].replace("<ui>", ui["url"])
    href, text, names, cells = _page(view, "document.body.innerText.includes('0_top1') && "
                                           "document.body.innerText.includes('bd_same ')",
                                     tmp_path / "runs.png")
    assert "workflowType=machine_learning" in href and "/runs" in href, href
    for word in GENAI_LANDING:  # MLflow 3's GenAI landing page is not what opens
        assert word not in text, word
    for col in ("0_top1", "1_many", "2_medium", "3_few", "4_p_few", "group"):
        assert col in text, col
    for m in ui["metrics"].values():
        assert _name(m) in text, _name(m)
        assert f"{round(100 * m['top1'], 1):g}" in text, (_name(m), m["top1"])
    assert "toy/toyclip0/la τ=0.5" in text  # the readable group tag is a column
    rows = [c for c in cells if c]
    assert not [c for c in rows if c.endswith(" ×2") or c.startswith("summary")], rows
    backdoor = {n for n, _ in names}
    assert {_name(m) for m in ui["metrics"].values()
            if m["method"].startswith("backdoor")} <= backdoor, names
    assert not [n for n, cut in names if cut], names  # a person reads them whole
    _keep(tmp_path / "runs.png", "mlflow-runs.png")


def test_experiment_opens_in_the_training_view(ui, tmp_path):
    """The experiment as it opens from the address `lt-bench ui` prints (no saved view)."""
    exp = ui["manifest"]["experiment_id"]
    href, text, _, _ = _page(f"{ui['url']}/#/experiments/{exp}?workflowType=machine_learning",
                          "location.href.includes('/runs') && "
                          "document.body.innerText.includes('Runs')", tmp_path / "open.png")
    assert f"/experiments/{exp}/runs" in href, href
    for word in GENAI_LANDING:
        assert word not in text, word
    # its description links the two saved views (also shown on the GenAI landing page)
    assert "Runs table (headline view)" in text and "Settings: mean ± sd over seeds" in text
    _keep(tmp_path / "open.png", "mlflow-experiment.png")


def test_settings_view_shows_mean_and_sd_over_seeds(ui, tmp_path):
    import numpy as np

    view = ui["manifest"]["settings_view"].replace("<ui>", ui["url"])
    href, text, names, cells = _page(view, "document.body.innerText.includes('0_top1_sd') "
                                           "&& document.body.innerText.includes('×2')",
                                     tmp_path / "settings.png")
    assert "viewStateShareKey=settings" in href
    by = {}
    for m in ui["metrics"].values():
        by.setdefault((m["method"], m["backbone"]), []).append(100 * m["top1"])
    for (method, backbone), xs in by.items():
        x = np.array(xs)
        name = _name({"method": method, "backbone": backbone, "seed": None})
        assert f"{name} ×2" in text, name
        # the table's cells: the mean and the sample sd over the 2 seeds, one decimal
        assert f"{float(f'{x.mean():.1f}'):g}" in text, (name, x)
        assert f"{float(f'{x.std(ddof=1):.1f}'):g}" in text, (name, x)
    assert not [c for c in cells if " s0" in c or " s1" in c], cells  # settings, not seeds
    assert not [n for n, cut in names if cut], names
    _keep(tmp_path / "settings.png", "mlflow-settings.png")


def test_run_page_and_compare_of_three_runs(ui, tmp_path):
    from browser import evaluate

    man = ui["manifest"]
    runs = {r["run_name"]: r["run_id"] for r in man["runs"]}
    la = runs["la toyclip0 s0 τ=0.5"]
    m = next(m for m in ui["metrics"].values()
             if (m["method"], m["backbone"], m["seed"]) == ("la", "toyclip0", 0))
    url = f"{ui['url']}/#/experiments/{man['experiment_id']}/runs/{la}?workflowType=machine_learning"
    text = evaluate(url, "document.body.innerText", ready="document.body.innerText"
                    ".includes('top-1')", settle_s=2, timeout_s=90,
                    screenshot_to=tmp_path / "run.png")
    assert f"top-1 {100 * m['top1']:.1f}" in text and f"few {100 * m['few']:.1f}" in text
    assert "seed 0" in text
    _keep(tmp_path / "run.png", "mlflow-run.png")

    three = ["ce toyclip0 s0", "la toyclip0 s0 τ=0.5", "bd ensemble s0"]
    ids = json.dumps([runs[n] for n in three], separators=(",", ":"))
    url = (f"{ui['url']}/#/compare-runs?runs={ids}&experiments=[\"{man['experiment_id']}\"]"
           "&workflowType=machine_learning")
    text = evaluate(url, "document.body.innerText",
                    ready="document.body.innerText.includes('0_top1')", settle_s=2,
                    timeout_s=90, screenshot_to=tmp_path / "compare.png")
    for n in three:
        assert n in text, n
    _keep(tmp_path / "compare.png", "mlflow-compare.png")


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
