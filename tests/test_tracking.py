"""MLflow ingestion: SQLite store, a real `mlflow server`, idempotence, concurrent writers."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from fakeruns import make_runs

from lt_bench.tracking import (
    experiment_name,
    find_run_dirs,
    group_key,
    ingest,
    read_run_folder,
    redact_uri,
    run_key,
    sqlite_path,
    ui_command,
)

VENV_BIN = Path(sys.executable).parent


@pytest.fixture()
def runs(tmp_path) -> Path:
    root = tmp_path / "results" / "runs"
    make_runs(root, seeds=(0, 1))  # 2 backbones x 3 methods x 2 seeds + 2 backdoor = 14
    return root


def _client(uri):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def _active_runs(client, suite="test"):
    from mlflow.entities import ViewType

    exp = client.get_experiment_by_name(experiment_name(suite))
    assert exp is not None
    return client.search_runs([exp.experiment_id], run_view_type=ViewType.ACTIVE_ONLY,
                              max_results=1000)


def _check_store(uri: str, runs_root: Path, suite: str = "test", artifacts: bool = True):
    """Run count, tags, params and metrics of the store equal the run folders."""
    client = _client(uri)
    mruns = _active_runs(client, suite)
    dirs = find_run_dirs(runs_root)
    assert len(mruns) == len(dirs)
    by_key = {r.data.tags["run_key"]: r for r in mruns}
    assert len(by_key) == len(mruns), "duplicate run_key"
    for d in dirs:
        m = json.loads((d / "metrics.json").read_text())
        cfg = json.loads((d / "config.json").read_text())
        key = run_key(suite, m["dataset"], m["backbone"], m["method"], m["seed"])
        r = by_key[key]
        tags, params, metrics = r.data.tags, r.data.params, r.data.metrics
        for k in ("dataset", "backbone", "method"):
            assert tags[k] == m[k] and params[k] == m[k]
        assert tags["seed"] == params["seed"] == str(m["seed"])
        assert tags["group_key"] == group_key(cfg)
        assert tags["git_commit"]
        assert tags["feature_sha256.train"] == cfg["feature_sha256"]["train"]
        assert tags["split_sha256.test"] == cfg["split_sha256"]["test"]
        assert r.info.run_name == f"{m['dataset']}/{m['backbone']}/{m['method']}/seed{m['seed']}"
        for k, v in cfg["hparams"].items():
            assert params[k] == (v if isinstance(v, str) else json.dumps(v))
        scalar = {k: v for k, v in m.items()
                  if isinstance(v, int | float) and not isinstance(v, bool) and k != "seed"}
        for k, v in scalar.items():
            assert metrics[k] == pytest.approx(v), k  # latest value = metrics.json
        assert metrics["info.fit_seconds"] == pytest.approx(m["info"]["fit_seconds"])
        history = json.loads((d / "history.json").read_text())
        if history:
            hist = client.get_metric_history(r.info.run_id, "train_loss")
            assert [(h.step, h.value) for h in sorted(hist, key=lambda h: h.step)] == \
                [(h["epoch"], pytest.approx(h["train_loss"])) for h in history]
    if artifacts:
        one = by_key[run_key(suite, "toy", "toyclip0", "la", 0)]
        names = {a.path for a in client.list_artifacts(one.info.run_id)}
        assert {"config.json", "per_class.parquet", "metrics.json"} <= names
    return by_key


def test_run_keys_are_deterministic(runs):
    a = read_run_folder(runs / "toy/toyclip0/la/seed0", "demo", commit="abc")
    b = read_run_folder(runs / "toy/toyclip0/la/seed0", "demo", commit="def")
    s1 = read_run_folder(runs / "toy/toyclip0/la/seed1", "demo", commit="abc")
    other = read_run_folder(runs / "toy/toyclip0/ce/seed0", "demo", commit="abc")
    assert a.run_key == b.run_key == run_key("demo", "toy", "toyclip0", "la", 0)
    assert a.run_key != s1.run_key and a.run_key != other.run_key
    assert a.run_key != read_run_folder(runs / "toy/toyclip0/la/seed0", "paper").run_key
    assert a.tags["group_key"] == s1.tags["group_key"] != other.tags["group_key"]
    assert a.fingerprint == b.fingerprint  # a new HEAD does not make a run "changed"
    assert a.tags["git_commit"] == "abc"
    # scalars are logged after the per-epoch history: their value is the latest
    steps = {k: s for k, _, s in a.metrics if k == "top1"}
    assert steps["top1"] == 3 and max(s for k, _, s in a.metrics if k == "val_top1") == 3
    assert ("train_loss", pytest.approx(2.0), 0) in [(k, v, s) for k, v, s in a.metrics]


def test_uri_helpers(tmp_path):
    assert sqlite_path("sqlite:////abs/m.db") == Path("/abs/m.db")
    assert sqlite_path("sqlite:///rel/m.db") == Path("rel/m.db")
    assert sqlite_path("http://127.0.0.1:5000") is None
    with pytest.raises(ValueError, match="SQLite file"):
        sqlite_path("sqlite://")
    assert redact_uri("postgresql://u:secret@db/mlflow") == "postgresql://u:***@db/mlflow"
    db = tmp_path / "m.db"
    db.touch()
    cmd, env = ui_command(f"sqlite:///{db}", "127.0.0.1", 5001)
    assert cmd[1:] == ["ui", "--backend-store-uri", f"sqlite:///{db}", "--host", "127.0.0.1",
                       "--port", "5001", "--workers", "1"]
    assert env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] == "false"
    with pytest.raises(FileNotFoundError, match="lt-bench ingest"):
        ui_command(f"sqlite:///{tmp_path}/none.db", "127.0.0.1", 5000)


def test_mlflow_stays_out_of_the_import_path():
    code = ("import sys, lt_bench.cli, lt_bench.tracking, lt_bench.report.tables, "
            "lt_bench.report.figures, lt_bench.report.cli; "
            "lt_bench.cli.build_parser(); print('mlflow' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "False"


def test_ingest_sqlite_idempotent_and_updates(runs, tmp_path):
    uri = f"sqlite:///{tmp_path}/mlruns/mlflow.db"
    dirs = find_run_dirs(runs)
    man = ingest(dirs, "test", uri)
    assert man["counts"]["created"] == len(dirs) == 14
    assert man["counts"]["active_runs_in_experiment"] == 14
    assert man["experiment"] == "lt-bench/test"
    assert set(man["run_ids"]) == {read_run_folder(d, "test").run_key for d in dirs}
    before = _check_store(uri, runs)
    art = _client(uri).get_experiment_by_name("lt-bench/test").artifact_location
    assert art == (tmp_path / "mlruns" / "artifacts" / "test").resolve().as_uri()

    again = ingest(dirs, "test", uri)
    assert again["counts"]["unchanged"] == 14 and again["run_ids"] == man["run_ids"]

    # new metric values (e.g. re-evaluated): the same MLflow run is updated in place
    f = runs / "toy/toyclip0/la/seed0/metrics.json"
    m = json.loads(f.read_text())
    m["top1"] = 0.987
    f.write_text(json.dumps(m))
    # retrained with another hyper-parameter: params are immutable in MLflow -> replaced
    c = runs / "toy/toyclip1/ce/seed1/config.json"
    cfg = json.loads(c.read_text())
    cfg["hparams"]["lr"] = 0.5
    c.write_text(json.dumps(cfg))
    third = ingest(dirs, "test", uri)
    assert (third["counts"]["updated"], third["counts"]["replaced"],
            third["counts"]["unchanged"]) == (1, 1, 12)
    after = _check_store(uri, runs)
    k_upd = run_key("test", "toy", "toyclip0", "la", 0)
    k_rep = run_key("test", "toy", "toyclip1", "ce", 1)
    assert after[k_upd].info.run_id == before[k_upd].info.run_id
    assert after[k_upd].data.metrics["top1"] == pytest.approx(0.987)
    assert after[k_rep].info.run_id != before[k_rep].info.run_id
    assert after[k_rep].data.params["lr"] == "0.5"


@pytest.mark.slow  # ~30 s on 2 busy cores: two processes that each import mlflow
def test_two_concurrent_ingestions(runs, tmp_path):
    """Two `lt-bench ingest` processes at once on a fresh SQLite store: no duplicates."""
    uri = f"sqlite:///{tmp_path}/store/mlflow.db"
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri}
    procs = [subprocess.Popen([str(VENV_BIN / "lt-bench"), "ingest", "--runs-root", str(runs),
                               "--suite", "test", "--out", str(tmp_path / f"m{i}.json")],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for i in range(2)]
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-3000:]
    mans = [json.loads((tmp_path / f"m{i}.json").read_text()) for i in range(2)]
    assert sorted(m["counts"]["created"] for m in mans) == [0, 14]
    assert sorted(m["counts"]["unchanged"] for m in mans) == [0, 14]
    assert mans[0]["run_ids"] == mans[1]["run_ids"]
    _check_store(uri, runs)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture()
def mlflow_server(tmp_path):
    port = _free_port()
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    env.pop("MLFLOW_TRACKING_URI", None)
    log = open(tmp_path / "server.log", "w")  # noqa: SIM115
    proc = subprocess.Popen(
        [str(VENV_BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1", "--backend-store-uri", f"sqlite:///{tmp_path}/server.db",
         "--artifacts-destination", str(tmp_path / "server-artifacts")],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    try:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"mlflow server exited: {(tmp_path / 'server.log').read_text()}")
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.time() > deadline:
                raise TimeoutError(f"mlflow server not healthy after 120 s: "
                                   f"{(tmp_path / 'server.log').read_text()[-2000:]}")
            time.sleep(0.5)
        yield url
    finally:
        os.killpg(proc.pid, 15)  # the server and its worker, by the PID we started
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.wait(timeout=10)
        log.close()


def test_ingest_into_mlflow_server(runs, mlflow_server, tmp_path):
    dirs = find_run_dirs(runs)
    man = ingest(dirs, "test", mlflow_server)
    assert man["counts"]["created"] == 14 and man["tracking_uri"] == mlflow_server
    _check_store(mlflow_server, runs)
    again = ingest(dirs, "test", mlflow_server)
    assert again["counts"]["unchanged"] == 14
    assert len(_active_runs(_client(mlflow_server))) == 14
