"""A lab's shared tracking server: `mlflow server` on a real PostgreSQL with proxied artifacts.

Two researchers (two result folders, one suite) ingest into it at the same time, as two
`lt-bench ingest` processes: every run folder lands once, with its artifacts on the server's
artifact store. With the server down, ingestion says so in one line (exit 2) and changes
nothing; once the server is back, the next ingestion completes.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from fakeruns import make_runs

from lt_bench.tracking import find_run_dirs, run_key

VENV_BIN = Path(sys.executable).parent
SUITE = "lab"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LabServer:
    """`mlflow server` as a lab runs it (README "A lab's tracking server"), restartable."""

    def __init__(self, backend: str, artifacts: Path, log: Path):
        self.backend, self.artifacts, self.log = backend, artifacts, log
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        env.pop("MLFLOW_TRACKING_URI", None)
        with open(self.log, "a") as log:
            self.proc = subprocess.Popen(
                [str(VENV_BIN / "mlflow"), "server", "--backend-store-uri", self.backend,
                 "--artifacts-destination", str(self.artifacts), "--host", "127.0.0.1",
                 "--port", str(self.port), "--workers", "2"],
                env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.time() + 240  # the first start migrates the PostgreSQL schema
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mlflow server exited: {self.log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            if time.time() > deadline:
                raise TimeoutError(f"mlflow server not healthy: {self.log.read_text()[-3000:]}")
            time.sleep(0.5)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)  # the server and its workers (our group)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)


@pytest.fixture()
def lab_server(postgres_server, tmp_path):
    server = LabServer(postgres_server, tmp_path / "lab-artifacts", tmp_path / "server.log")
    server.start()
    try:
        yield server
    finally:
        server.stop()


def _researcher(root: Path, dataset: str) -> Path:
    """One researcher's results folder: 14 run folders of ``dataset`` and a figure."""
    runs = root / "results" / "runs"
    make_runs(runs, dataset=dataset, seeds=(0, 1))
    fig = root / "results" / "figures" / dataset
    fig.mkdir(parents=True)
    (fig / "acc_vs_count.png").write_bytes(b"\x89PNG " + dataset.encode())
    return runs


def _ingest(runs: Path, uri: str, out: Path, **kw) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    return subprocess.Popen([str(VENV_BIN / "lt-bench"), "ingest", "--runs-root", str(runs),
                             "--suite", SUITE, "--tracking-uri", uri, "--out", str(out)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=runs.parent.parent, **kw)


def _runs_of_kind(client, kind: str) -> list:
    from mlflow.entities import ViewType

    exp = client.get_experiment_by_name(f"lt-bench/{SUITE}")
    return [r for r in client.search_runs([exp.experiment_id], max_results=1000,
                                          run_view_type=ViewType.ACTIVE_ONLY)
            if r.data.tags.get("kind") == kind]


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()}


@pytest.mark.slow  # ~1-2 min: PostgreSQL, an mlflow server with two workers, two ingestions
def test_two_researchers_ingest_at_once_then_the_server_goes_down(lab_server, tmp_path):
    from mlflow.tracking import MlflowClient

    runs = {d: _researcher(tmp_path / name, d) for name, d in (("alice", "toy_a"),
                                                                ("bob", "toy_b"))}
    procs = {d: _ingest(r, lab_server.url, tmp_path / f"{d}.json") for d, r in runs.items()}
    for p in procs.values():
        out, err = p.communicate(timeout=600)
        assert p.returncode == 0, err[-3000:]
    mans = {d: json.loads((tmp_path / f"{d}.json").read_text()) for d in runs}
    assert all(m["counts"]["created"] == 14 for m in mans.values())

    client = MlflowClient(tracking_uri=lab_server.url)
    seeds = _runs_of_kind(client, "seed")
    by_key = {}
    for r in seeds:
        assert r.data.tags["run_key"] not in by_key, "a run folder landed twice"
        by_key[r.data.tags["run_key"]] = r
    expected = set()
    for root in runs.values():
        for rd in find_run_dirs(root):
            m = json.loads((rd / "metrics.json").read_text())
            k = run_key(SUITE, m["dataset"], m["backbone"], m["method"], m["seed"])
            expected.add(k)
            r = by_key[k]
            assert r.data.metrics["top1"] == pytest.approx(m["top1"])
            assert r.info.status == "FINISHED"
            # the artifacts went through the server into its --artifacts-destination
            assert r.info.artifact_uri.startswith("mlflow-artifacts:")
            names = {a.path for a in client.list_artifacts(r.info.run_id)}
            assert names == {"config.json", "metrics.json", "history.json", "per_class.parquet"}
            local = client.download_artifacts(r.info.run_id, "metrics.json",
                                              str(tmp_path / "dl" / r.info.run_id))
            assert Path(local).read_bytes() == (rd / "metrics.json").read_bytes()
    assert set(by_key) == expected and len(seeds) == 28
    assert len(_runs_of_kind(client, "setting")) == 14  # 7 settings per researcher
    assert len(_runs_of_kind(client, "summary")) == 1  # one per suite, however they raced
    on_disk = list((lab_server.artifacts).rglob("per_class.parquet"))
    assert len(on_disk) == 28

    # the server goes down: one line, exit 2, nothing changed, no manifest
    lab_server.stop()
    alice = runs["toy_a"]
    m = json.loads((alice / "toy_a/toyclip0/la/seed0/metrics.json").read_text())
    m["top1"] = 0.9  # a re-evaluated run waits for the server
    (alice / "toy_a/toyclip0/la/seed0/metrics.json").write_text(json.dumps(m))
    before = _tree(alice)
    p = _ingest(alice, lab_server.url, tmp_path / "down.json")
    out, err = p.communicate(timeout=120)
    assert p.returncode == 2, err
    assert err.strip().count("\n") == 0, err  # one line
    assert f"MLflow tracking server {lab_server.url} is unreachable" in err
    assert _tree(alice) == before and not (tmp_path / "down.json").exists()

    # back up: the next ingestion brings the store up to date, the rest is still there
    lab_server.start()
    p = _ingest(alice, lab_server.url, tmp_path / "later.json")
    out, err = p.communicate(timeout=600)
    assert p.returncode == 0, err[-3000:]
    later = json.loads((tmp_path / "later.json").read_text())
    assert (later["counts"]["updated"], later["counts"]["unchanged"]) == (1, 13)
    client = MlflowClient(tracking_uri=lab_server.url)
    k = run_key(SUITE, "toy_a", "toyclip0", "la", 0)
    assert client.get_run(by_key[k].info.run_id).data.metrics["top1"] == pytest.approx(0.9)
    assert len(_runs_of_kind(client, "seed")) == 28
