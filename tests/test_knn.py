"""k-NN probe: neighbours and votes against brute force; k tuned on val; logits rebuilt
from the saved predictor (train features path + sha256)."""

from __future__ import annotations

import numpy as np
import pytest
from synth_runs import make_features_dir

from lt_bench.cli import main
from lt_bench.features.store import read_features
from lt_bench.io import read_json
from lt_bench.methods.knn import knn_neighbours, knn_vote_logits
from lt_bench.runs import read_logits, run_logits, train_run


def brute_force_knn(queries, train, train_labels, k, temperature, num_classes):
    """Score every class by exp(cos/T) over the k most similar train rows, one query at a time."""
    out = np.zeros((len(queries), num_classes))
    tn = train / np.linalg.norm(train, axis=1, keepdims=True)
    for i, q in enumerate(queries):
        sims = tn @ (q / np.linalg.norm(q))
        order = sorted(range(len(sims)), key=lambda j: -sims[j])[:k]
        votes = np.zeros(num_classes)
        for j in order:
            votes[train_labels[j]] += np.exp(sims[j] / temperature)
        out[i] = votes / votes.sum()
    return out


def test_neighbours_and_votes_match_brute_force():
    rng = np.random.default_rng(0)
    train, labels = rng.normal(size=(50, 5)), rng.integers(0, 4, 50)
    queries = rng.normal(size=(9, 5))
    for k in (1, 3, 7):
        sims, idx = knn_neighbours(queries, train, k, max_elements=120)  # several chunks
        z = knn_vote_logits(sims, labels[idx], k, 0.1, 4)
        p = brute_force_knn(queries, train, labels, k, 0.1, 4)
        np.testing.assert_allclose(np.exp(z) - 1e-6, p, atol=1e-5)
        assert (z.argmax(1) == p.argmax(1)).all()


def test_knn_run_tunes_k_and_rebuilds_logits(tmp_path):
    fd = make_features_dir(tmp_path / "f")
    train, val, test = (read_features(fd / f"{s}.parquet") for s in ("train", "val", "test"))
    grid = [1, 3, 5, 10]
    acc = {k: (brute_force_knn(val.features, train.features, train.labels, k, 0.07, 6)
               .argmax(1) == val.labels).mean() for k in grid}
    best = min((k for k in grid if acc[k] == max(acc.values())), key=lambda k: abs(k - 5))
    out = tmp_path / "knn"
    m = train_run("knn", fd, out, 0, hparams={"k": 5, "k_grid": grid})
    assert m["info"]["k"] == best and m["info"]["tuned"] is True
    assert main(["logits", str(out), "--out", str(tmp_path / "l.parquet")]) == 0
    labels, z = read_logits(tmp_path / "l.parquet")
    p = brute_force_knn(test.features, train.features, train.labels, best, 0.07, 6)
    np.testing.assert_array_equal(labels, test.labels)
    np.testing.assert_allclose(np.exp(z) - 1e-6, p, atol=1e-5)
    assert m["top1"] == pytest.approx((z.argmax(1) == labels).mean())
    spec = read_json(out / "predictor.json")
    assert spec["kind"] == "knn" and spec["k"] == best
    assert spec["train_features"] == str(fd / "train.parquet") and len(spec["train_sha256"]) == 64


def test_knn_no_tuning_where_val_overlaps_train(tmp_path):
    fd = make_features_dir(tmp_path / "f", dataset="inat2018")
    m = train_run("knn", fd, tmp_path / "knn", 0, hparams={"k": 7})
    assert m["info"]["k"] == 7 and m["info"]["tuned"] is False


def test_changed_train_features_are_detected(tmp_path):
    fd = make_features_dir(tmp_path / "f")
    out = tmp_path / "knn"
    train_run("knn", fd, out, 0)
    make_features_dir(tmp_path / "f", view_seed=3)  # the features are re-extracted
    # the seam's stale-run check (runs/predictors.py) fires before the predictor's own
    with pytest.raises(ValueError, match="stale run: its (train|test) features .* changed"):
        run_logits(out, "test")


def test_neighbours_are_searched_once_per_query_set(tmp_path, monkeypatch):
    # every seed's k-NN run asks for the same neighbours: the report rebuilds them once,
    # and a different query set (or k) is searched again, giving its own brute-force answer
    from lt_bench.methods import knn

    fd = make_features_dir(tmp_path / "f")
    train, val, test = (read_features(fd / f"{s}.parquet") for s in ("train", "val", "test"))
    out = tmp_path / "knn"
    m = train_run("knn", fd, out, 0, hparams={"k": 3, "k_grid": [3]})
    calls = []
    real = knn.knn_neighbours
    monkeypatch.setattr(knn, "knn_neighbours", lambda *a, **k: calls.append(1) or real(*a, **k))
    knn._NEIGHBOURS.clear()
    z1 = run_logits(out, "test")[1]
    z2 = run_logits(out, "test")[1]
    assert len(calls) == 1
    np.testing.assert_array_equal(z1, z2)
    zv = run_logits(out, "val")[1]
    assert len(calls) == 2
    for split, z in ((test, z1), (val, zv)):
        p = brute_force_knn(split.features, train.features, train.labels, 3, 0.07, 6)
        np.testing.assert_allclose(np.exp(z) - 1e-6, p, atol=1e-5)
    assert m["info"]["k"] == 3
