"""The fine-tuning track behind the seam: a run from images has the contract of every other
run (metrics.json last, per_class.parquet, config.json, history.json, trained parameters as
safetensors, stored val/test logits), `lt-bench logits` reads it, and ensembles take it as a
member like any run (docs/architecture.md §4)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from safetensors.numpy import load_file

from lt_bench.cli import main
from lt_bench.io import read_json
from lt_bench.runs.folder import read_logits

pytestmark = pytest.mark.slow

FAST = {"epochs": 1, "batch_size": 32, "eval_batch_size": 128}


def _finetune(world, out, method="adaptformer_la", seed=0, **extra):
    args = ["finetune", "--method", method, "--dataset", "toy",
            "--dataset-params", json.dumps({"num_classes": 30, "max_per_class": 200,
                                             "imbalance": 50, "val_per_class": 10,
                                             "test_per_class": 30, "image_size": 32, "seed": 0}),
            "--split-dir", str(world["split_dir"]), "--backbone", "toyclip0",
            "--checkpoint", str(world["backbone_dir"] / "checkpoint.pt"),
            "--features-dir", str(world["features_dir"]), "--out", str(out),
            "--seed", str(seed), "--params", json.dumps({**FAST, **extra}), "--device", "cpu"]
    return main(args)


@pytest.fixture(scope="module")
def ft_runs(small_toy_world, tmp_path_factory):
    root = tmp_path_factory.mktemp("ft")
    runs = {s: root / "toy" / "toyclip0" / "adaptformer_la" / f"seed{s}" for s in (0, 1000)}
    for s, out in runs.items():
        assert _finetune(small_toy_world, out, seed=s) == 0
    return runs


def test_a_finetuning_run_has_the_run_contract(ft_runs, tmp_path):
    run = ft_runs[0]
    for name in ("metrics.json", "per_class.parquet", "config.json", "history.json",
                 "predictor.json", "trainable.safetensors", "logits_val.parquet",
                 "logits_test.parquet"):
        assert (run / name).is_file(), name
    assert not (run / "finetune_state.pt").exists()  # the resume state is spent
    m, cfg = read_json(run / "metrics.json"), read_json(run / "config.json")
    assert cfg["consumes"] == "images" and cfg["hparams"]["peft"] == "adaptformer"
    assert cfg["hparams"]["loss"] == "la" and m["method"] == "adaptformer_la"
    # the metrics are those of the stored test logits, recomputed independently
    labels, z = read_logits(run / "logits_test.parquet")
    assert m["top1"] == pytest.approx(float((z.argmax(1) == labels).mean()))
    pc = pd.read_parquet(run / "per_class.parquet")
    acc = [(z.argmax(1)[labels == c] == c).mean() for c in range(z.shape[1])]
    np.testing.assert_allclose(pc.sort_values("label")["accuracy"], acc)
    # lt-bench logits rebuilds them through the seam, with no images and no model
    assert main(["logits", str(run), "--split", "test", "--out", str(tmp_path / "l.parquet")]) == 0
    y2, z2 = read_logits(tmp_path / "l.parquet")
    np.testing.assert_array_equal(y2, labels)
    np.testing.assert_array_equal(z2, z)
    # only PEFT parameters and the head were trained, and their count is recorded
    params = load_file(str(run / "trainable.safetensors"))
    assert m["n_trainable_params"] == sum(v.size for v in params.values()) > 0
    assert any(k.startswith("head") for k in params)
    assert len(read_json(run / "history.json")) == FAST["epochs"]


def test_finetuned_runs_are_ensemble_members_like_any_run(ft_runs, tmp_path):
    out = tmp_path / "toy" / "toyclip0" / "backdoor_same_backbone" / "seed0"
    rc = main(["train", "--method", "backdoor_same_backbone", "--members",
               str(ft_runs[0]), str(ft_runs[1000]), "--out", str(out),
               "--params", json.dumps({"rule": "sum", "members": "adaptformer_la",
                                       "seed_offsets": [0, 1000]})])
    assert rc == 0
    labels, z0 = read_logits(ft_runs[0] / "logits_test.parquet")
    _, z1 = read_logits(ft_runs[1000] / "logits_test.parquet")
    m = read_json(out / "metrics.json")
    assert m["top1"] == pytest.approx(float(((z0 + z1).argmax(1) == labels).mean()))


def test_finetune_refuses_a_method_that_does_not_consume_images(small_toy_world, tmp_path,
                                                                 capsys):
    assert _finetune(small_toy_world, tmp_path / "x", method="la") == 2
    assert "consumes features, not images" in capsys.readouterr().err
    assert not (tmp_path / "x" / "metrics.json").exists()


def test_train_routes_an_images_method_to_finetune(small_toy_world, tmp_path, capsys):
    rc = main(["train", "--method", "adaptformer_la", "--features-dir",
               str(small_toy_world["features_dir"]), "--out", str(tmp_path / "y")])
    assert rc == 2 and "lt-bench finetune --method adaptformer_la" in capsys.readouterr().err
