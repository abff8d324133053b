"""Head jobs: several features runs fitted in one process (``lt-bench fit --runs``), and
the fit cache that makes a rerun refit only the runs whose configuration changed."""

import json
import logging
import subprocess
import sys

import numpy as np
import pytest

from lt_bench.errors import InputValidationError
from lt_bench.runs import read_logits, reuse, run_logits, train_run
from lt_bench.runs.train import train_runs

pytestmark = pytest.mark.slow

FAST = {"epochs": 2}


def _runs(root, ce=FAST, la=FAST):
    return [
        {"method": "ce", "out": str(root / "ce"), "seed": 0, "params": ce},
        {"method": "la", "out": str(root / "la"), "seed": 0, "params": la},
        {"method": "la_posthoc", "out": str(root / "lp"), "seed": 0,
         "base": {"ce": str(root / "ce")}},
    ]


def _texts(root, names=("ce", "la", "lp")):
    return {n: (root / n / "metrics.json").read_text() for n in names}


def test_one_process_gives_the_numbers_of_separate_runs(small_toy_world, tmp_path):
    fd = small_toy_world["features_dir"]
    together = train_runs(fd, _runs(tmp_path / "g"))
    alone = [train_run("ce", fd, tmp_path / "a" / "ce", 0, hparams=FAST),
             train_run("la", fd, tmp_path / "a" / "la", 0, hparams=FAST),
             train_run("la_posthoc", fd, tmp_path / "a" / "lp", 0,
                       base_runs={"ce": tmp_path / "a" / "ce"})]
    for name, g, a in zip(("ce", "la", "lp"), together, alone, strict=True):
        assert g["top1"] == a["top1"] and g["few"] == a["few"], name
        _, zg = run_logits(tmp_path / "g" / name, "test")
        _, za = run_logits(tmp_path / "a" / name, "test")
        np.testing.assert_array_equal(zg, za)
    cfg = json.loads((tmp_path / "g" / "la" / "config.json").read_text())
    assert len(cfg["fit_key"]) == 16


def test_rerun_refits_only_what_changed(small_toy_world, tmp_path, caplog):
    fd, root, cache = small_toy_world["features_dir"], tmp_path / "runs", tmp_path / "cache"
    train_runs(fd, _runs(root), reuse_dir=cache)
    first = _texts(root)
    assert len([p for p in cache.iterdir() if not p.name.startswith(".")]) == 3

    with caplog.at_level(logging.INFO):  # nothing changed: every run copied back
        train_runs(fd, _runs(root), reuse_dir=cache)
    assert _texts(root) == first
    assert caplog.text.count("reused the fit") == 3

    train_runs(fd, _runs(root, la={**FAST, "tau": 0.5}), reuse_dir=cache)
    now = _texts(root)
    assert now["ce"] == first["ce"] and now["lp"] == first["lp"]  # la's change: la only
    assert now["la"] != first["la"]
    assert json.loads((root / "la" / "config.json").read_text())["hparams"]["tau"] == 0.5

    train_runs(fd, _runs(root, ce={"epochs": 1}, la={**FAST, "tau": 0.5}), reuse_dir=cache)
    again = _texts(root)
    assert again["la"] == now["la"]  # ce's change: ce and the post-hoc run built on it
    assert again["ce"] != now["ce"] and again["lp"] != now["lp"]


def test_a_restored_run_is_the_run_and_newer_than_its_inputs(small_toy_world, tmp_path):
    fd, root, cache = small_toy_world["features_dir"], tmp_path / "runs", tmp_path / "cache"
    train_runs(fd, _runs(root)[:1], reuse_dir=cache)
    labels, z = read_logits_of(root / "ce")
    (root / "ce" / "metrics.json").unlink()  # what Snakemake does before rerunning a job
    (root / "ce" / "predictor.json").unlink()
    train_runs(fd, _runs(root)[:1], reuse_dir=cache)
    labels2, z2 = read_logits_of(root / "ce")
    np.testing.assert_array_equal(z, z2)
    assert (root / "ce" / "metrics.json").stat().st_mtime > (fd / "train.parquet").stat().st_mtime


def read_logits_of(run):
    out = run.parent / f"{run.name}_test.parquet"
    subprocess.run([sys.executable, "-m", "lt_bench.cli", "logits", str(run), "--split", "test",
                    "--out", str(out)], check=True)
    return read_logits(out)


def test_an_interrupted_job_keeps_its_finished_fits(small_toy_world, tmp_path):
    fd, root, cache = small_toy_world["features_dir"], tmp_path / "runs", tmp_path / "cache"
    broken = _runs(root)
    broken[2]["base"] = {"ce": str(tmp_path / "nowhere")}  # the third run fails
    with pytest.raises(FileNotFoundError, match="nowhere"):
        train_runs(fd, broken, reuse_dir=cache)
    done = _texts(root, ("ce", "la"))
    assert not (root / "lp" / "metrics.json").exists()
    train_runs(fd, _runs(root), reuse_dir=cache)
    assert _texts(root, ("ce", "la")) == done  # not refitted
    assert (root / "lp" / "metrics.json").is_file()


def test_code_changes_change_the_fit_key(monkeypatch):
    parts = {"method": "la", "hparams": {"tau": 1.0}, "seed": 0}
    a = reuse.fit_key(**parts)
    assert reuse.fit_key(**parts) == a
    assert reuse.fit_key(**{**parts, "seed": 1}) != a
    monkeypatch.setattr(reuse, "source_hash", lambda: "edited")
    assert reuse.fit_key(**parts) != a


def test_bad_run_lists_fail_before_anything_is_fitted(small_toy_world, tmp_path):
    fd = small_toy_world["features_dir"]
    runs = _runs(tmp_path)
    runs[1]["method"] = "lla"
    with pytest.raises(Exception, match="lla") as e:
        train_runs(fd, runs)
    assert "la" in str(e.value)  # the valid names are listed
    assert not (tmp_path / "ce").exists()
    runs = _runs(tmp_path)
    runs[0]["params"] = {"tau": 2}  # ce has no tau
    with pytest.raises(InputValidationError, match="tau"):
        train_runs(fd, runs)
    with pytest.raises(InputValidationError, match="unknown key"):
        train_runs(fd, [{"method": "ce", "out": "x", "seed": 0, "paramz": {}}])
    with pytest.raises(InputValidationError, match="non-empty JSON list"):
        train_runs(fd, [])
    with pytest.raises(InputValidationError, match="consumes runs"):
        train_runs(fd, [{"method": "backdoor", "out": "x", "seed": 0}])
    assert not (tmp_path / "x").exists()


def test_cli_runs_list(small_toy_world, tmp_path):
    fd = small_toy_world["features_dir"]
    spec = json.dumps(_runs(tmp_path / "r")[:2])
    r = subprocess.run([sys.executable, "-m", "lt_bench.cli", "fit", "--runs", spec,
                        "--features-dir", str(fd), "--reuse-dir", str(tmp_path / "c")],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    lines = [json.loads(x) for x in r.stdout.splitlines()]
    assert [x["method"] for x in lines] == ["ce", "la"]
    saved = json.loads((tmp_path / "r" / "la" / "metrics.json").read_text())
    assert lines[1]["top1"] == saved["top1"]
    bad = subprocess.run([sys.executable, "-m", "lt_bench.cli", "fit", "--runs", spec,
                          "--method", "la", "--features-dir", str(fd)],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "--runs lists every run" in bad.stderr
    bad = subprocess.run([sys.executable, "-m", "lt_bench.cli", "fit", "--runs", "{",
                          "--features-dir", str(fd)], capture_output=True, text=True)
    assert bad.returncode == 2 and "not valid JSON" in bad.stderr


def test_features_go_to_the_device_once_per_job(small_toy_world):
    from lt_bench.methods import FitContext
    from lt_bench.runs.train import load_features_dir

    splits, text = load_features_dir(small_toy_world["features_dir"])
    memo: dict = {}
    counts = np.bincount(splits["train"].labels)
    a, b = (FitContext(train=splits["train"], val=splits["val"], text=text,
                       train_counts=counts, seed=s, device_memo=memo) for s in (0, 1))
    x = a.on_device(splits["train"].features)
    assert b.on_device(splits["train"].features) is x  # the second run reuses the copy
    assert np.array_equal(x.numpy(), splits["train"].features)
