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


def _votes_in_one_call(sims, neighbour_labels, k, temperature, num_classes):
    """The whole-split computation the row blocks replace (float64 votes of every row)."""
    s = sims[:, :k].astype(np.float64)
    w = np.exp((s - s[:, :1]) / temperature)
    votes = np.zeros((len(s), num_classes))
    np.add.at(votes, (np.arange(len(s))[:, None], neighbour_labels[:, :k]), w)
    votes /= votes.sum(1, keepdims=True)
    return np.log(votes + 1e-6).astype(np.float32)


def test_votes_go_a_row_block_of_images_at_a_time(monkeypatch):
    """Blocks of 3 images (of 1 row, or of 5 crops each) give the bits of one whole call;
    with crops, an image's logits are the mean of its crops' logits."""
    import lt_bench.blocks

    rng = np.random.default_rng(3)
    train, labels = rng.normal(size=(60, 6)), rng.integers(0, 7, 60)
    queries = rng.normal(size=(11 * 5, 6))  # 11 images x 5 crops, crops in turn
    sims, idx = knn_neighbours(queries, train, 8)
    whole = _votes_in_one_call(sims, labels[idx], 8, 0.07, 7)
    monkeypatch.setattr(lt_bench.blocks, "BLOCK_ELEMENTS", 3 * 5 * 7)
    np.testing.assert_array_equal(knn_vote_logits(sims, labels[idx], 8, 0.07, 7, crops=5),
                                  whole.reshape(11, 5, 7).mean(1))
    monkeypatch.setattr(lt_bench.blocks, "BLOCK_ELEMENTS", 3 * 7)
    np.testing.assert_array_equal(knn_vote_logits(sims, labels[idx], 8, 0.07, 7), whole)


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
    # the seam's stale-run check (runs/run_folder.py) fires before the predictor's own
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


# --- the authors' variant (Pre-train-Imbalance trainer.py knn_test, evaluator.py knn_predict)

def authors_knn_predict(feature, bank, bank_labels, classes, k, t):
    """numpy transcription of their knn_predict: unit features, top-k cosine, Σ exp(sim/t)
    one-hot votes (unnormalised)."""
    f = feature / np.linalg.norm(feature, axis=1, keepdims=True)
    b = bank / np.linalg.norm(bank, axis=1, keepdims=True)
    sim = f @ b.T
    idx = np.argsort(-sim, axis=1, kind="stable")[:, :k]
    w = np.exp(np.take_along_axis(sim, idx, 1) / t)
    scores = np.zeros((len(f), classes))
    for i in range(len(f)):
        for j, wj in zip(idx[i], w[i], strict=True):
            scores[i, bank_labels[j]] += wj
    return scores


def test_authors_knn_on_a_hand_worked_bank():
    # bank: (1,0) c0, (0,1) c1, (1,1)/√2 c1, (-1,0) c0; query (1,0); k = 3, T = 0.1.
    # cosines 1, 0, 0.7071, -1 -> the 3 nearest are b0 (c0), b2 (c1), b1 (c1):
    # c0 = e^10 = 22026.466, c1 = e^7.0711 + e^0 = 1177.405 + 1; share c0 = 0.9492174
    bank = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [-1.0, 0.0]])
    labels = np.array([0, 1, 1, 0])
    sims, idx = knn_neighbours(np.array([[1.0, 0.0]]), bank, 3)
    assert idx[0].tolist() == [0, 2, 1]
    np.testing.assert_allclose(sims[0], [1.0, 0.70710678, 0.0], atol=1e-6)
    z = knn_vote_logits(sims, labels[idx], 3, 0.1, 2)
    np.testing.assert_allclose(np.exp(z[0]) - 1e-6, [0.9492174, 0.0507826], atol=1e-6)
    # leave-one-out when the queries are the bank: b0's own row is skipped, so its three
    # nearest are b2 (0.7071, c1), b1 (0, c1), b3 (-1, c0): c1 = e^7.0711 + 1, c0 = e^-10
    from lt_bench.methods.knn import knn_logits

    z_bank = knn_logits(bank, bank, labels, 3, 0.1, 2)
    c1, c0 = np.exp(7.0710678) + 1.0, np.exp(-10.0)
    np.testing.assert_allclose(np.exp(z_bank[0]) - 1e-6, [c0 / (c0 + c1), c1 / (c0 + c1)],
                               atol=1e-6)


def test_knn_authors_run_is_their_probe_on_the_val_bank(tmp_path):
    fd = make_features_dir(tmp_path / "f")
    val, test = (read_features(fd / f"{s}.parquet") for s in ("val", "test"))
    out = tmp_path / "knn_authors"
    m = train_run("knn_authors", fd, out, 0, hparams={"k": 20})  # the bank has < 200 rows
    assert m["info"]["k"] == 20 and m["info"]["tuned"] is False and m["info"]["bank"] == "val"
    spec = read_json(out / "predictor.json")
    assert spec["bank"] == "val" and spec["train_features"] == str(fd / "val.parquet")
    assert main(["logits", str(out), "--out", str(tmp_path / "l.parquet")]) == 0
    labels, z = read_logits(tmp_path / "l.parquet")
    theirs = authors_knn_predict(test.features, val.features, val.labels, 6, 20, 0.1)
    np.testing.assert_array_equal(labels, test.labels)
    np.testing.assert_allclose(np.exp(z) - 1e-6, theirs / theirs.sum(1, keepdims=True),
                               atol=1e-5)
    assert m["top1"] == pytest.approx((theirs.argmax(1) == test.labels).mean())
    # val answers itself leave-one-out: no val image is its own neighbour
    _, zv = run_logits(out, "val")
    loo = np.stack([authors_knn_predict(val.features[i:i + 1], np.delete(val.features, i, 0),
                                        np.delete(val.labels, i), 6, 20, 0.1)[0]
                    for i in range(len(val.labels))])
    np.testing.assert_allclose(np.exp(zv) - 1e-6, loo / loo.sum(1, keepdims=True), atol=1e-5)
    assert m["val_top1"] < 1.0


def test_knn_defaults_are_ours_and_the_authors():
    from lt_bench.methods import METHODS

    assert METHODS.get("knn").defaults | {} == {
        "k": 10, "k_grid": [1, 3, 5, 10, 20, 50, 100], "temperature": 0.07, "bank": "train",
        "view": "auto"}
    a = METHODS.get("knn_authors").defaults
    assert (a["k"], a["temperature"], a["bank"]) == (200, 0.1, "val")
