"""A researcher's own work in the real workflow, all at once (README, "Benchmark your own
method"): a τ sweep of ``la`` as two variants, the example plugin's loss and ensemble
control (pip-installed into a throwaway venv whose Python runs Snakemake, so every job's
``lt-bench`` sees the plugin), the toy CLIP's architecture declared in ``config.yaml`` as a
user's checkpoint file, and a copy of the toy world's lists as a user's ``oltr_lists``
dataset. Every run ends as a row of ``main.csv``, a run in MLflow, and each variant as a
significance row against its base."""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess

import pandas as pd
import pytest
import yaml
from conftest import REPO, copy_workflow, save_random_toy_checkpoint
from plugin_dists import install_example_plugin

VARIANTS = {"la_tau05": {"base": "la", "tau": 0.5}, "la_tau15": {"base": "la", "tau": 1.5}}
METHODS = ["zero_shot", "la", *VARIANTS, "la_focal", "backdoor", "backdoor_max_confidence"]


@pytest.fixture(scope="module")
def byo_workflow(tmp_path_factory):
    root = tmp_path_factory.mktemp("byo")
    python, env, _ = install_example_plugin(root / "plugin")
    wf = copy_workflow(root / "wf")
    tiny = yaml.safe_load((REPO / "tests/data/tiny_config.yaml").read_text())

    # the user's lists: the toy world's, copied out as if written by hand
    toy = root / "toy"
    r = subprocess.run([str(python), "-m", "lt_bench.cli", "prepare", "toy", "--out", str(toy),
                        "--params", json.dumps(tiny["datasets"]["toy"])],
                       capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    lists = root / "my_lt_lists"
    lists.mkdir()
    for f in ("train.txt", "val.txt", "test.txt", "classnames.txt"):
        shutil.copy(toy / f, lists / f)

    (root / "models").mkdir()
    checkpoint = save_random_toy_checkpoint(root / "models" / "my_clip.pt")
    cfg = dict(tiny)
    cfg["suite"] = "byo"
    cfg["suites"] = {"byo": {"datasets": ["toy", "my_lt"], "backbones": ["toyclip0", "my_clip"],
                             "methods": METHODS, "seeds": [0]}}
    cfg["datasets"] = {**tiny["datasets"], "my_lt": {
        "type": "oltr_lists", "split_dir": str(lists), "image_root": str(toy)}}
    cfg["backbones"] = {"my_clip": {"library": "open_clip", "model": "lt-toy-vit-p8",
                                    "pretrained": str(checkpoint), "templates": "toy"}}
    cfg["methods"] = {**tiny["methods"], **VARIANTS, "la_focal": {"epochs": 2, "gamma": 1.0}}
    (wf / "byo.yaml").write_text(yaml.safe_dump(cfg, allow_unicode=True))
    r = subprocess.run([str(python), "-m", "snakemake", "--cores", "2", "--configfile",
                        "byo.yaml"], cwd=wf, capture_output=True, text=True, env=env,
                       timeout=3000)
    assert r.returncode == 0, (r.stdout[-3000:], r.stderr[-5000:])
    return wf


@pytest.mark.slow
def test_every_byo_run_is_a_row_a_tracked_run_and_a_comparison(byo_workflow):
    results = byo_workflow / "results"
    main = pd.read_csv(results / "tables/main.csv")
    rows = {(d, m) for d, m in zip(main["dataset"], main["method"], strict=True)}
    for d in ("toy", "my_lt"):
        for m in METHODS:
            assert (d, m) in rows, (d, m, sorted(rows))
    for d in ("toy", "my_lt"):
        for b in ("toyclip0", "my_clip"):
            for m in ("la", *VARIANTS, "la_focal"):
                assert (results / "runs" / d / b / m / "seed0/metrics.json").is_file(), (d, b, m)
        for m in ("backdoor", "backdoor_max_confidence"):
            assert (results / "runs" / d / "ensemble" / m / "seed0/metrics.json").is_file()

    # the variants ran with their own τ, the base with its own: nothing overwritten
    for m, tau in (("la", 1.0), ("la_tau05", 0.5), ("la_tau15", 1.5)):
        config = json.loads((results / "runs/my_lt/my_clip" / m / "seed0/config.json")
                            .read_text())
        assert config["hparams"]["tau"] == tau, m

    con = sqlite3.connect(results / "mlflow/mlflow.db")
    tracked = set(con.execute(
        "SELECT a.value, b.value, c.value FROM tags a JOIN tags b ON a.run_uuid = b.run_uuid "
        "JOIN tags c ON a.run_uuid = c.run_uuid WHERE a.key = 'dataset' AND "
        "b.key = 'backbone' AND c.key = 'method'"))
    for d in ("toy", "my_lt"):
        for m in ("la", *VARIANTS, "la_focal"):
            assert {(d, "toyclip0", m), (d, "my_clip", m)} <= tracked, (d, m)
        for m in ("backdoor", "backdoor_max_confidence"):
            assert (d, "ensemble", m) in tracked, (d, m)

    sig = pd.read_csv(results / "tables/significance.csv")
    vs_base = sig[sig["kind"] == "vs_base"]
    for d in ("toy", "my_lt"):
        for b in ("toyclip0", "my_clip"):
            for v in VARIANTS:
                hit = vs_base[(vs_base["dataset"] == d) & (vs_base["a_backbone"] == b)
                              & (vs_base["a_method"] == v)]
                assert len(hit) == 1 and hit["b_method"].item() == "la", (d, b, v)
