"""Runs: the run folder contract, determinism, and the `lt-bench logits` contract."""

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from lt_bench.cli import main
from lt_bench.data.splits import read_split
from lt_bench.features.store import read_features
from lt_bench.runs import read_logits, train_run

pytestmark = pytest.mark.slow

FAST = {"epochs": 2}


def test_run_folder_contract(small_toy_world, tmp_path):
    out = tmp_path / "run"
    m = train_run("la", small_toy_world["features_dir"], out, seed=0, hparams=FAST)
    for name in ("metrics.json", "per_class.parquet", "config.json", "predictor.json",
                 "predictor.safetensors", "history.json"):
        assert (out / name).is_file(), name
    saved = json.loads((out / "metrics.json").read_text())
    for key in ("top1", "many", "medium", "few", "ece", "macro_f1", "worst_class", "hmean",
                "gmean"):
        assert saved[key] is None or 0.0 <= saved[key] <= 1.0, key
    assert saved["n_train"] > 0 and saved["train_seconds"] > 0
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["hparams"]["tau"] == 1.0 and cfg["hparams"]["epochs"] == 2
    assert cfg["backbone"] == "toyclip0" and cfg["dataset"] == "toy"
    assert len(json.loads((out / "history.json").read_text())) == 2
    per_class = pq.read_table(out / "per_class.parquet").to_pandas()
    assert len(per_class) == 30 and set(per_class["d_group"]) <= {"many", "medium", "few"}
    assert m["top1"] == saved["top1"]


def test_same_seed_same_metrics_different_seed_differs(small_toy_world, tmp_path):
    a = train_run("ce", small_toy_world["features_dir"], tmp_path / "a", seed=3, hparams=FAST)
    b = train_run("ce", small_toy_world["features_dir"], tmp_path / "b", seed=3, hparams=FAST)
    c = train_run("ce", small_toy_world["features_dir"], tmp_path / "c", seed=4, hparams=FAST)
    drop = ("train_seconds", "info", "started_at", "finished_at")  # wall-clock times
    assert {k: v for k, v in a.items() if k not in drop} == \
        {k: v for k, v in b.items() if k not in drop}
    w = [(tmp_path / d / "predictor.safetensors").read_bytes() for d in ("a", "b", "c")]
    assert w[0] == w[1] and w[0] != w[2]
    assert c["seed"] == 4


def test_logits_cli_contract(small_toy_world, tmp_path):
    run = tmp_path / "run"
    train_run("ce", small_toy_world["features_dir"], run, seed=0, hparams=FAST)
    out = tmp_path / "logits.parquet"
    assert main(["logits", str(run), "--split", "test", "--out", str(out)]) == 0
    schema = pq.read_schema(out)
    assert str(schema.field("label").type) == "int32"
    assert str(schema.field("logits").type) == "fixed_size_list<element: float>[30]"
    labels, logits = read_logits(out)
    _, split_labels = read_split(small_toy_world["split_dir"] / "test.txt")
    assert labels.tolist() == list(split_labels)  # rows in the split list's order
    # The rebuilt logits give back the run's recorded accuracy (no retraining).
    top1 = (logits.argmax(1) == labels).mean()
    assert top1 == pytest.approx(json.loads((run / "metrics.json").read_text())["top1"])
    # ... and equal a cosine head computed independently from the stored weights.
    from safetensors.numpy import load_file

    w = load_file(str(run / "predictor.safetensors"))["term0.weight"]
    f = read_features(small_toy_world["features_dir"] / "test.parquet").features
    ref = 25.0 * (f / np.linalg.norm(f, axis=1, keepdims=True)) @ (
        w / np.linalg.norm(w, axis=1, keepdims=True)).T
    np.testing.assert_allclose(logits, ref, rtol=1e-4, atol=1e-4)


def test_logits_of_unfinished_folder_is_a_clear_error(tmp_path, capsys):
    assert main(["logits", str(tmp_path), "--out", str(tmp_path / "x.parquet")]) == 2
    assert "not a run folder (no config.json)" in capsys.readouterr().err


def test_zero_shot_run_equals_text_classifier(small_toy_world, tmp_path):
    m = train_run("zero_shot", small_toy_world["features_dir"], tmp_path / "zs", seed=0)
    from lt_bench.features.store import read_text_embeddings

    text = read_text_embeddings(small_toy_world["features_dir"] / "text.parquet")
    test = read_features(small_toy_world["features_dir"] / "test.parquet")
    # encode_image = f @ P (the cached feature is pre-projection); argmax of the cosine
    e = test.features @ text.projection
    e /= np.linalg.norm(e, axis=1, keepdims=True)
    pred = (e @ text.embeddings.T).argmax(1)
    assert m["top1"] == pytest.approx((pred == test.labels).mean())
