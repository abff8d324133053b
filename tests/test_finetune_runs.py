"""The fine-tuning track behind the seam: a run from images has the contract of every other
run (metrics.json last, per_class.parquet, config.json, history.json, trained parameters as
safetensors, stored val/test pre-head features), `lt-bench logits` reads it, and ensembles
take it as a member like any run (docs/architecture.md §4). The TTE row and the authors'
k-NN probe are runs made from the same fine-tuning's stored files."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from safetensors.numpy import load_file

from lt_bench.cli import main
from lt_bench.io import read_json
from lt_bench.runs import run_logits
from lt_bench.runs.folder import read_logits, read_run_features

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


#: seed 0 trains under bf16 autocast on the CPU and stores both test-time views
EXTRA = {0: {"amp": "bf16", "tte": "both"}, 1000: {}}


@pytest.fixture(scope="module")
def ft_runs(small_toy_world, tmp_path_factory):
    root = tmp_path_factory.mktemp("ft")
    runs = {s: root / "toy" / "toyclip0" / "adaptformer_la" / f"seed{s}" for s in (0, 1000)}
    for s, out in runs.items():
        assert _finetune(small_toy_world, out, seed=s, **EXTRA[s]) == 0
    return runs


def head_logits_fp64(feats, weight, scale=25.0, normalise=True):
    """The cosine head recomputed in float64 from stored features and head."""
    f = feats.astype(np.float64)
    if normalise:
        f = f / np.linalg.norm(f, axis=1, keepdims=True)
    w = weight.astype(np.float64)
    return scale * f @ (w / np.linalg.norm(w, axis=1, keepdims=True)).T


def test_a_finetuning_run_has_the_run_contract(ft_runs, tmp_path):
    run = ft_runs[0]
    for name in ("metrics.json", "per_class.parquet", "config.json", "history.json",
                 "predictor.json", "trainable.safetensors", "features_val.parquet",
                 "features_test.parquet"):
        assert (run / name).is_file(), name
    assert not (run / "logits_test.parquet").exists()  # K floats a row are not stored
    assert not (run / "finetune_state.pt").exists()  # the resume state is spent
    m, cfg = read_json(run / "metrics.json"), read_json(run / "config.json")
    assert cfg["consumes"] == "images" and cfg["hparams"]["peft"] == "adaptformer"
    assert cfg["hparams"]["loss"] == "la" and m["method"] == "adaptformer_la"
    # the precision actually used: bf16 autocast in training, float32 head and eval
    assert cfg["precision"] == {"train_autocast": "bfloat16", "grad_scaler": False,
                                "head": "float32", "eval": "float32",
                                "stored_features": "float16", "logits_from_stored": "float32"}
    assert cfg["view"] == "centre"
    # the stored features are float16 (D a row) and the head is float32 (K x D)
    import pyarrow.parquet as pq

    schema = pq.read_schema(run / "features_test.parquet")
    assert str(schema.field("feature").type) == "fixed_size_list<element: halffloat>[64]"
    assert "feature_tte" in schema.names
    head = load_file(str(run / "trainable.safetensors"))["head.weight"]
    assert head.dtype == np.float32 and head.shape == (30, 64)
    # the metrics are those of the head on the stored features, recomputed independently
    labels, feats = read_run_features(run / "features_test.parquet")
    ref = head_logits_fp64(feats, head)
    z = ref.astype(np.float32)
    assert m["top1"] == pytest.approx(float((ref.argmax(1) == labels).mean()))
    pc = pd.read_parquet(run / "per_class.parquet")
    acc = [(z.argmax(1)[labels == c] == c).mean() for c in range(z.shape[1])]
    np.testing.assert_allclose(pc.sort_values("label")["accuracy"], acc)
    # lt-bench logits rebuilds them through the seam, with no images and no model
    assert main(["logits", str(run), "--split", "test", "--out", str(tmp_path / "l.parquet")]) == 0
    y2, z2 = read_logits(tmp_path / "l.parquet")
    np.testing.assert_array_equal(y2, labels)
    np.testing.assert_allclose(z2, ref, rtol=0, atol=2e-5)  # float32 head vs float64
    np.testing.assert_array_equal(z2.argmax(1), ref.argmax(1))
    # and exactly what the metrics were computed from (the oracle contract)
    from lt_bench.metrics import evaluate

    again, _ = evaluate(z2, y2, np.asarray(pd.read_parquet(run / "per_class.parquet")
                                           .sort_values("label")["train_count"]))
    assert again["top1"] == m["top1"] and again["ece"] == m["ece"]
    assert again["macro_f1"] == m["macro_f1"]
    # only PEFT parameters and the head were trained, and their count is recorded
    params = load_file(str(run / "trainable.safetensors"))
    assert m["n_trainable_params"] == sum(v.size for v in params.values()) > 0
    assert any(k.startswith("head") for k in params)
    assert len(read_json(run / "history.json")) == FAST["epochs"]


def test_finetuned_runs_are_ensemble_members_like_any_run(ft_runs, tmp_path):
    out = tmp_path / "toy" / "toyclip0" / "backdoor_same_backbone" / "seed0"
    rc = main(["combine", "--method", "backdoor_same_backbone", "--members",
               str(ft_runs[0]), str(ft_runs[1000]), "--out", str(out),
               "--params", json.dumps({"rule": "sum", "members": "adaptformer_la",
                                       "seed_offsets": [0, 1000]})])
    assert rc == 0
    labels, z0 = run_logits(ft_runs[0], "test")
    _, z1 = run_logits(ft_runs[1000], "test")
    m = read_json(out / "metrics.json")
    assert m["top1"] == pytest.approx(float(((z0 + z1).argmax(1) == labels).mean()))


def test_finetune_refuses_a_method_that_does_not_consume_images(small_toy_world, tmp_path,
                                                                 capsys):
    assert _finetune(small_toy_world, tmp_path / "x", method="la") == 2
    assert "consumes features, which `lt-bench finetune` does not make runs from" \
        in capsys.readouterr().err
    assert not (tmp_path / "x" / "metrics.json").exists()


def test_fit_names_finetune_for_an_images_method(small_toy_world, tmp_path, capsys):
    rc = main(["fit", "--method", "adaptformer_la", "--features-dir",
               str(small_toy_world["features_dir"]), "--out", str(tmp_path / "y")])
    assert rc == 2 and "lt-bench finetune --method adaptformer_la" in capsys.readouterr().err


def test_the_tte_row_comes_from_the_same_finetuning(ft_runs, tmp_path):
    out = tmp_path / "toy" / "toyclip0" / "adaptformer_la_tte" / "seed0"
    assert main(["combine", "--method", "adaptformer_la_tte", "--members", str(ft_runs[0]),
                 "--out", str(out)]) == 0
    head = load_file(str(ft_runs[0] / "trainable.safetensors"))["head.weight"]
    labels, m_tte = read_run_features(ft_runs[0] / "features_test.parquet", "tte")
    # the mean of the crops' unit features through the head = the mean of the crops' logits
    ref = head_logits_fp64(m_tte, head, normalise=False)
    y, z = run_logits(out, "test")
    np.testing.assert_array_equal(y, labels)
    np.testing.assert_allclose(z, ref, rtol=0, atol=2e-5)
    m, cfg = read_json(out / "metrics.json"), read_json(out / "config.json")
    assert m["top1"] == pytest.approx(float((z.argmax(1) == labels).mean()))
    assert cfg["view"] == "tte" and cfg["members"][0]["run_dir"] == str(ft_runs[0])
    assert m["inference_cost"] == 5.0 and m["seed"] == 0 and m["backbone"] == "toyclip0"
    assert np.abs(z - run_logits(ft_runs[0], "test")[1]).max() > 1e-3  # another view


def test_a_member_without_the_tte_view_is_refused(ft_runs, tmp_path, capsys):
    out = tmp_path / "tte1000"
    assert main(["combine", "--method", "adaptformer_la_tte", "--members",
                 str(ft_runs[1000]), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "stores the views ['centre'], not 'tte'" in err and "tte: both" in err
    assert not (out / "metrics.json").exists()


def test_knn_finetuned_is_the_authors_probe_on_the_stored_features(ft_runs, tmp_path):
    from test_knn import authors_knn_predict

    out = tmp_path / "toy" / "toyclip0" / "knn_finetuned" / "seed0"
    assert main(["combine", "--method", "knn_finetuned", "--members", str(ft_runs[0]),
                 "--out", str(out), "--params", json.dumps({"k": 25})]) == 0
    bank_y, bank = read_run_features(ft_runs[0] / "features_val.parquet")
    labels, q = read_run_features(ft_runs[0] / "features_test.parquet")
    theirs = authors_knn_predict(q, bank, bank_y, 30, 25, 0.1)
    y, z = run_logits(out, "test")
    np.testing.assert_array_equal(y, labels)
    np.testing.assert_allclose(np.exp(z) - 1e-6, theirs / theirs.sum(1, keepdims=True),
                               atol=1e-5)
    assert read_json(out / "metrics.json")["top1"] == pytest.approx(
        float((theirs.argmax(1) == labels).mean()))
