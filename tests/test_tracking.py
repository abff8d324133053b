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
from lt_bench.tracking.records import NOT_METRICS, compact_method

VENV_BIN = Path(sys.executable).parent


@pytest.fixture()
def runs(tmp_path) -> Path:
    root = tmp_path / "results" / "runs"
    make_runs(root, seeds=(0, 1))  # 2 backbones x 3 methods x 2 seeds + 2 backdoor = 14
    return root


def _client(uri):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def _active_runs(client, suite="test", kind="seed", state="current"):
    """Active MLflow runs of one kind (seed: one per run folder; setting; summary)."""
    from mlflow.entities import ViewType

    exp = client.get_experiment_by_name(experiment_name(suite))
    assert exp is not None
    runs = client.search_runs([exp.experiment_id], run_view_type=ViewType.ACTIVE_ONLY,
                              max_results=1000)
    return [r for r in runs if r.data.tags.get("kind") == kind
            and (state is None or r.data.tags.get("state") == state)]


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
        # the full coordinates are a tag; the name is short, method first
        assert tags["run_path"] == f"{m['dataset']}/{m['backbone']}/{m['method']}/seed{m['seed']}"
        assert r.info.run_name.startswith(  # one dataset: not in the name
            f"{compact_method(m['method'])} {m['backbone']} s{m['seed']}")
        assert tags["long_name"].startswith(m["method"])
        for k, v in cfg["hparams"].items():
            assert params[k] == (v if isinstance(v, str) else json.dumps(v))
        scalar = {k: v for k, v in m.items()
                  if isinstance(v, int | float) and not isinstance(v, bool)
                  and k not in NOT_METRICS}  # seed, started_at, finished_at: not metrics
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
    assert a.tags["git_commit"] == "abc"  # config.json has none: the caller's fallback
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
    # retrained with another hyper-parameter: a new MLflow run; the old one is kept, marked
    c = runs / "toy/toyclip1/ce/seed1/config.json"
    cfg = json.loads(c.read_text())
    cfg["hparams"]["lr"] = 0.5
    c.write_text(json.dumps(cfg))
    third = ingest(dirs, "test", uri)
    assert (third["counts"]["updated"], third["counts"]["superseded"],
            third["counts"]["unchanged"]) == (1, 1, 12)
    after = _check_store(uri, runs)
    k_upd = run_key("test", "toy", "toyclip0", "la", 0)
    k_rep = run_key("test", "toy", "toyclip1", "ce", 1)
    assert after[k_upd].info.run_id == before[k_upd].info.run_id
    assert after[k_upd].data.metrics["top1"] == pytest.approx(0.987)
    assert after[k_rep].info.run_id != before[k_rep].info.run_id
    assert after[k_rep].data.params["lr"] == "0.5"
    client = _client(uri)
    old = client.get_run(before[k_rep].info.run_id)  # still there, not deleted
    assert old.info.lifecycle_stage == "active"
    assert old.data.tags["lt_bench.superseded_by"] == after[k_rep].info.run_id
    assert old.data.tags["state"] == "superseded" and old.data.params["lr"] != "0.5"
    assert old.info.run_name.endswith("(superseded)")
    assert "mlflow.parentRunId" not in old.data.tags  # not one of its setting's seeds now
    assert [r.info.run_id for r in _active_runs(client, state="superseded")] == \
        [old.info.run_id]
    # the old setting (lr default, seeds 0 and 1) now holds seed 0 only; the new one seed 1
    sets = {r.data.tags["group"]: r for r in _active_runs(client, kind="setting")}
    g_new, g_old = after[k_rep].data.tags["group"], before[k_rep].data.tags["group"]
    assert "lr=0.5" in g_new and "lr=" not in g_old
    assert sets[g_new].data.metrics["n_seeds"] == sets[g_old].data.metrics["n_seeds"] == 1
    assert "0_top1_sd" not in sets[g_old].data.metrics  # one seed left: no spread
    assert sets[g_old].data.metrics["0_top1"] == round(100 * after[
        run_key("test", "toy", "toyclip1", "ce", 0)].data.metrics["top1"], 1)
    fourth = ingest(dirs, "test", uri)  # and that is stable
    assert fourth["counts"]["unchanged"] == 14 and fourth["counts"]["settings_written"] == 0


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


# --- docs/mlflow.md: times, names, headline, groups, figures, moves, failures --------------

T0 = 1_700_000_000.25  # a training's start, Unix seconds


def _stamp(run_dir: Path, i: int, extra: dict | None = None, commit: str | None = "c0ffee"):
    """Give a fake run the train-time fields the run layer writes (times, commit, nulls)."""
    m = json.loads((run_dir / "metrics.json").read_text())
    m.update({"started_at": T0 + 100 * i, "finished_at": T0 + 100 * i + 7.5 + i, **(extra or {})})
    (run_dir / "metrics.json").write_text(json.dumps(m))
    c = json.loads((run_dir / "config.json").read_text())
    c["git_commit"] = commit
    (run_dir / "config.json").write_text(json.dumps(c))
    return m


def test_records_import_no_mlflow():
    code = "import sys, lt_bench.tracking.records, lt_bench.tracking; print('mlflow' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_record_names_groups_headline_and_nulls(runs):
    from lt_bench.tracking import HEADLINE, non_default_hparams, setting_label

    d = runs / "toy/toyclip0/la/seed1"
    m = _stamp(d, 3, {"best_member_top1": None, "ece": float("nan")})
    defaults = {"lr": 0.01, "epochs": 10, "tau": 1.0}  # hand-written: epochs=3 is not default
    rec = read_run_folder(d, "demo", commit="ignored", defaults=defaults)
    assert non_default_hparams({"lr": 0.01, "epochs": 3, "tau": 1.0}, defaults) == {"epochs": 3}
    assert non_default_hparams({"tau": 0.5}, None) == {}
    assert setting_label("la", {"tau": 0.5, "epochs": 3}) == "la τ=0.5 epochs=3"
    assert rec.run_name == "la toyclip0 s1 toy epochs=3"  # method first, the knobs last
    assert read_run_folder(d, "demo", defaults=defaults, name_dataset=False).run_name == \
        "la toyclip0 s1 epochs=3"
    assert rec.tags["long_name"] == "la epochs=3 · toy/toyclip0 · seed 1"
    assert rec.tags["group"] == "toy/toyclip0/la epochs=3"
    assert rec.tags["setting_name"] == "la toyclip0 toy epochs=3"
    assert (rec.tags["kind"], rec.tags["state"]) == ("seed", "current")
    assert rec.tags["group_key"] == read_run_folder(runs / "toy/toyclip0/la/seed0", "demo",
                                                    defaults=defaults).tags["group_key"]
    assert rec.tags["git_commit"] == "c0ffee"  # the train-time commit wins over the fallback
    assert (rec.start_ms, rec.end_ms) == (int(round((T0 + 300) * 1000)),
                                          int(round((T0 + 310.5) * 1000)))
    names = [k for k, _, _ in rec.metrics]
    assert "best_member_top1" not in names and "ece" not in names  # null / NaN: no value
    assert "started_at" not in names and "finished_at" not in names
    final = {k: v for k, v, _ in rec.metrics}
    for key, alias, label in HEADLINE:
        assert final[alias] == round(100 * m[key], 1)
        assert f"{label} {100 * m[key]:.1f}" in rec.description
    assert sorted(final)[:5] == [a for _, a, _ in HEADLINE]  # they sort first
    assert rec.tags["mlflow.note.content"] == rec.description
    assert "trained in 10.5 s" in rec.description


def test_bad_times_are_refused(runs):
    from lt_bench.errors import UserError

    d = runs / "toy/toyclip0/ce/seed0"
    _stamp(d, 0, {"finished_at": T0 - 5})
    with pytest.raises(UserError, match="finished_at is before started_at"):
        read_run_folder(d, "demo")
    _stamp(d, 0, {"started_at": "yesterday"})
    with pytest.raises(UserError, match="'started_at' is 'yesterday'; expected Unix time"):
        read_run_folder(d, "demo")


def _figures(results: Path) -> Path:
    fig = results / "figures" / "toy"
    fig.mkdir(parents=True)
    for stem in ("acc_vs_count", "acc_vs_qhat", "dxp_la", "dxp_ce", "prior_vs_true"):
        (fig / f"{stem}.png").write_bytes(b"\x89PNG fake " + stem.encode())
    return results / "figures"


def test_ingest_times_figures_view_and_relocation(runs, tmp_path):
    results = runs.parent
    figures = _figures(results)
    dirs = find_run_dirs(runs)
    stamped = {d: _stamp(d, i) for i, d in enumerate(dirs)}
    uri = f"sqlite:///{results}/mlflow/mlflow.db"
    man = ingest(dirs, "test", uri, figures_root=figures)
    assert man["counts"]["created"] == 14
    client = _client(uri)
    by_key = _check_store(uri, runs)
    for m in stamped.values():
        r = by_key[run_key("test", m["dataset"], m["backbone"], m["method"], m["seed"])]
        assert r.info.start_time == int(round(m["started_at"] * 1000))
        assert r.info.end_time == int(round(m["finished_at"] * 1000))
        assert r.data.tags["git_commit"] == "c0ffee"
    la = by_key[run_key("test", "toy", "toyclip0", "la", 0)]
    # the suite-wide figures are stored once, in the summary run; no seed run has a copy
    for r in by_key.values():
        assert "figures" not in {a.path for a in client.list_artifacts(r.info.run_id)}
    (summary,) = _active_runs(client, kind="summary")
    assert summary.info.run_id == man["summary_run_id"]
    assert summary.info.run_name == "summary · test"
    figs = {a.path: a.file_size for a in client.list_artifacts(summary.info.run_id,
                                                                "figures/toy")}
    assert figs == {f"figures/toy/{p.name}": p.stat().st_size
                    for p in (figures / "toy").glob("*.png")}
    arts = results / "mlflow" / "artifacts"
    assert len([p for p in arts.rglob("*.png")]) == 5  # 5 figures, once
    exp = client.get_experiment_by_name("lt-bench/test")
    # the model-training layout, not MLflow 3's GenAI landing page
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
    view = json.loads(exp.tags["mlflow.sharedViewState.headline"])
    assert view["selectedColumns"][0] == "metrics.`0_top1`"
    assert view["searchFilter"] == "tags.kind = 'seed' AND tags.state = 'current'"
    assert man["headline_view"].endswith(f"/#/experiments/{exp.experiment_id}/runs"
                                          "?workflowType=machine_learning"
                                          "&viewStateShareKey=headline")
    settings = json.loads(exp.tags["mlflow.sharedViewState.settings"])
    assert settings["selectedColumns"][:2] == ["metrics.`0_top1`", "metrics.`0_top1_sd`"]
    assert man["settings_view"].endswith("&viewStateShareKey=settings")
    # the view filters select exactly what they say (MLflow's own search)
    found = client.search_runs([exp.experiment_id], settings["searchFilter"], max_results=100)
    assert len(found) == 7 and {r.data.tags["kind"] for r in found} == {"setting"}
    found = client.search_runs([exp.experiment_id], view["searchFilter"], max_results=100)
    assert len(found) == 14
    assert "**14** runs" in exp.tags["mlflow.note.content"]

    # move the whole project folder: the artifacts are found again after one ingestion
    new_root = tmp_path.parent / f"{tmp_path.name}-moved"
    tmp_path.rename(new_root)
    try:
        new_results = new_root / "results"
        new_uri = f"sqlite:///{new_results}/mlflow/mlflow.db"
        r = subprocess.run([str(VENV_BIN / "lt-bench"), "ingest", "--relocate",
                            "--tracking-uri", new_uri], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        assert "1 experiment(s) relocated" in r.stdout
        c2 = _client(new_uri)
        exp2 = c2.get_experiment_by_name("lt-bench/test")
        assert exp2.artifact_location == (new_results / "mlflow/artifacts/test").as_uri()
        run = c2.get_run(la.info.run_id)
        assert run.info.artifact_uri.startswith(exp2.artifact_location + "/")
        local = c2.download_artifacts(summary.info.run_id, "figures/toy/dxp_la.png",
                                      str(new_root / "dl"))
        assert Path(local).read_bytes() == b"\x89PNG fake dxp_la"
        again = ingest(find_run_dirs(new_results / "runs"), "test", new_uri,
                       figures_root=new_results / "figures")
        assert again["counts"]["unchanged"] == 14  # a move is not a change
    finally:
        new_root.rename(tmp_path)


def _tree_digest(root: Path) -> dict[str, str]:
    import hashlib

    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_unreachable_server_fails_fast(runs, tmp_path):
    before = _tree_digest(runs)
    uri = f"http://127.0.0.1:{_free_port()}"  # nothing listens there
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    t = time.time()
    r = subprocess.run([str(VENV_BIN / "lt-bench"), "ingest", "--runs-root", str(runs),
                        "--suite", "test", "--tracking-uri", uri,
                        "--out", str(tmp_path / "m.json")],
                       capture_output=True, text=True, env=env, timeout=120)
    took = time.time() - t
    assert r.returncode == 2, r.stderr
    assert f"MLflow tracking server {uri} is unreachable" in r.stderr
    assert "Traceback" not in r.stderr
    assert took < 30, took  # was 4 min 15 s (MLflow's retries)
    assert _tree_digest(runs) == before and not (tmp_path / "m.json").exists()


def test_unwritable_store_names_the_file(runs, tmp_path):
    db = tmp_path / "store" / "mlflow.db"
    uri = f"sqlite:///{db}"
    ingest(find_run_dirs(runs)[:1], "test", uri)
    # as root, permissions do not stop a write: make the file immutable instead
    if os.geteuid() == 0:
        if subprocess.run(["chattr", "+i", str(db)], capture_output=True).returncode != 0:
            pytest.skip("running as root and chattr +i is not supported here")
        undo = ["chattr", "-i", str(db)]
    else:
        db.chmod(0o444)
        undo = ["chmod", "644", str(db)]
    try:
        r = subprocess.run([str(VENV_BIN / "lt-bench"), "ingest", "--runs-root", str(runs),
                            "--suite", "test", "--tracking-uri", uri,
                            "--out", str(tmp_path / "m.json")], capture_output=True, text=True)
    finally:
        subprocess.run(undo, check=True)
    assert r.returncode == 2, r.stderr
    assert f"cannot write the database file {db}" in r.stderr
    assert "Traceback" not in r.stderr


def test_setting_runs_mean_and_sd_over_seeds(runs, tmp_path):
    """Each setting: a run with the mean and sample sd of its seeds, the seeds nested under
    it; checked against numpy on the run folders' metrics.json, and in the summary's CSV."""
    import csv

    import numpy as np

    uri = f"sqlite:///{tmp_path}/s/mlflow.db"
    dirs = find_run_dirs(runs)
    man = ingest(dirs, "test", uri)
    client = _client(uri)
    seeds = {r.info.run_id: r for r in _active_runs(client)}
    sets = _active_runs(client, kind="setting")
    assert man["counts"]["settings"] == len(sets) == 7  # 2 backbones x 3 methods + backdoor
    by_group: dict[str, list[dict]] = {}
    for d in dirs:
        m = json.loads((d / "metrics.json").read_text())
        by_group.setdefault((m["backbone"], m["method"]), []).append(m)
    table = {row["setting"]: row for row in csv.DictReader(io_text(
        client.download_artifacts(man["summary_run_id"], "settings.csv", str(tmp_path))))}
    for s in sets:
        t, mt = s.data.tags, s.data.metrics
        ms = by_group[(t["backbone"], t["method"])]
        assert mt["n_seeds"] == len(ms) == 2
        children = [r for r in seeds.values() if r.data.tags["mlflow.parentRunId"] == s.info.run_id]
        assert sorted(int(r.data.tags["seed"]) for r in children) == [0, 1]
        for key, alias, label in (("top1", "0_top1", "top-1"), ("few", "3_few", "few"),
                                  ("p_few", "4_p_few", "P-few")):
            x = 100 * np.array([m[key] for m in ms])
            mean, sd = mt[alias], mt[alias + "_sd"]
            # one decimal (a mean that falls on .x5 may round either way in binary)
            assert abs(mean - x.mean()) <= 0.05 + 1e-9, (t["group"], alias)
            assert abs(sd - x.std(ddof=1)) <= 0.05 + 1e-9, (t["group"], alias)
            assert f"{label} {mean:.1f} ± {sd:.1f}" in t["mlflow.note.content"]
            row = table[t["group"]]
            assert (row[f"{label} mean"], row[f"{label} sd"]) == (f"{mean:.1f}", f"{sd:.1f}")
        assert s.info.run_name.startswith(f"{compact_method(t['method'])} {t['backbone']}")
        assert s.info.run_name.endswith(" ×2")


def io_text(path: str):
    return Path(path).read_text().splitlines()


def test_run_names_fit_the_name_column():
    from lt_bench.tracking.records import compact_backbone, run_name

    assert compact_method("backdoor_same_backbone") == "bd_same"
    assert compact_method("backdoor_finetuned") == "bd_ft"
    assert compact_method("adaptformer_la") == "af_la"
    assert compact_method("la_posthoc") == "la_ph"
    assert compact_backbone("openclip_vit_b16") == "openclip-b16"
    # ~20 characters show in MLflow 3.17's name column: method, backbone, seed fit there
    assert run_name("backdoor_same_backbone", "", None, "toyclip0", 2) == "bd_same toyclip0 s2"
    assert run_name("backdoor_prob_mean", "", "imagenet_lt", "metaclip_vit_b16", 0) == \
        "bd_pmean metaclip-b16 s0 imagenet_lt"
    assert run_name("adaptformer_la", "crop_scale=[1.0,1.0]", None, "toyclip1", 0) == \
        "af_la toyclip1 s0 crop_scale=[1.0,1.0]"
    assert run_name("la", "τ=0.5", "toy", "toyclip1", None) == "la toyclip1 toy τ=0.5"
