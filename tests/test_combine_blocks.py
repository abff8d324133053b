"""Ensembles combined in row blocks (lt_bench/runs/ensemble.py ``combine_blocks``, the
weight fit's blocked temporaries in lt_bench/methods/_combine.py) give the same bits as
combined at once: at iNat2018's shape one (M, N, K) float64 stack was 4.8 GB, so the run
layer never builds it; the blocks must not move a single logit, weight or metric."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.optimize import minimize
from scipy.special import logsumexp
from synth_runs import FAST, make_features_dir, make_prior

import lt_bench.blocks as blocks_mod
import lt_bench.methods._combine as combine_mod
from lt_bench.methods import METHODS
from lt_bench.methods._combine import fit_member_weights
from lt_bench.runs import train_run
from lt_bench.runs.ensemble import combine_blocks, ensemble_run

N, K, BLOCK = 103, 11, 7  # 103 = 14 blocks of 7 + 5: the last block is short


def _members(m=3, n=N, k=K, seed=0):
    rng = np.random.default_rng(seed)
    # float32 as stored, one member far larger than the others (prob_mean's log-sum-exp
    # over members, and the vote's ties, see uneven scales)
    return [(rng.standard_normal((n, k)) * (1 + 4 * c)).astype(np.float32) for c in range(m)]


STATES = [("backdoor", {"rule": "sum"}), ("backdoor_prob_mean", {"rule": "prob_mean"}),
          ("backdoor_learned", {"rule": "weighted_sum", "weights": [0.3, 2.5, 0.0]}),
          ("backdoor_vote", {"rule": "vote"})]


@pytest.mark.parametrize(("method", "state"), STATES, ids=[s[0] for s in STATES])
def test_blocked_combine_is_the_whole_combine_bit_for_bit(method, state):
    cls, zs = METHODS.get(method), _members()
    whole = cls.combine(zs, state)
    blocked = combine_blocks(cls, zs, state, np.float64, block_rows=BLOCK)
    assert blocked.dtype == np.float64 and np.array_equal(blocked, whole)
    # what a run stores and evaluates: the float32 cast of the whole float64 result
    f32 = combine_blocks(cls, zs, state, block_rows=BLOCK)
    assert f32.dtype == np.float32 and np.array_equal(f32, whole.astype(np.float32))
    # the default block (one block at this size) and one row at a time agree too
    assert np.array_equal(combine_blocks(cls, zs, state, np.float64), whole)
    assert np.array_equal(combine_blocks(cls, zs, state, np.float64, block_rows=1), whole)


def test_weighted_sum_is_the_weighted_sum_of_the_members():
    zs, w = _members(), np.array([0.3, 2.5, 1.25])
    got = combine_mod.combine(zs, "weighted_sum", w)
    expect = sum(wc * z.astype(np.float64) for wc, z in zip(w, zs, strict=True))
    np.testing.assert_allclose(got, expect, rtol=1e-15, atol=1e-12)
    # member after member, element by element: a row's value is that row's alone
    assert np.array_equal(combine_mod.combine([z[40:41] for z in zs], "weighted_sum", w),
                          got[40:41])


def _fit_stacked(val_logits, labels, max_weight=100.0):
    """The weight fit as first written: the members stacked, every temporary N x K."""
    z = np.stack([np.asarray(v, dtype=np.float32) for v in val_logits])
    y = np.asarray(labels, dtype=np.int64)
    rows = np.arange(len(y))
    z_true = z[:, rows, y].astype(np.float64)

    def nll_and_grad(w):
        s = np.zeros(z.shape[1:])
        for wc, zc in zip(w, z, strict=True):
            s += wc * zc
        lse = logsumexp(s, axis=1)
        p = np.exp(s - lse[:, None])
        nll = float(np.mean(lse - s[rows, y]))
        grad = np.array([np.sum(p * zc) for zc in z]) - z_true.sum(1)
        return nll, grad / len(y)

    res = minimize(nll_and_grad, np.ones(len(z)), jac=True, method="L-BFGS-B",
                   bounds=[(0.0, float(max_weight))] * len(z),
                   options={"maxiter": 1000, "ftol": 1e-13, "gtol": 1e-9})
    return np.clip(res.x, 0.0, float(max_weight)), float(res.fun)


def test_weight_fit_in_row_blocks_gives_the_same_weights(monkeypatch):
    rng = np.random.default_rng(3)
    y = rng.integers(0, K, N)
    # members that know the label a little, each at its own temperature
    zs = [(z + (1.5 - 0.5 * c) * np.eye(K, dtype=np.float32)[y]) for c, z in
          enumerate(_members(seed=4))]
    expect_w, expect_nll = _fit_stacked(zs, y)
    for elements in (BLOCK * K, 1, 10**9):  # 15 blocks, one row each, one block
        monkeypatch.setattr(blocks_mod, "BLOCK_ELEMENTS", elements)
        w, info = fit_member_weights(zs, y)
        assert np.array_equal(w, expect_w) and info["val_nll"] == expect_nll


@pytest.fixture(scope="module")
def members(tmp_path_factory):
    root = tmp_path_factory.mktemp("blocks")
    out = []
    for i, bb in enumerate(("bb0", "bb1", "bb2")):
        fd = make_features_dir(root / "features", backbone=bb, view_seed=i)
        prior = make_prior(root / "prior" / f"{bb}.parquet", np.arange(1, 7.0) + i)
        run = root / "runs" / bb / "la" / "seed0"
        train_run("la", fd, run, seed=0, hparams=FAST, prior=prior)
        out.append(run)
    return root, out


def _without_timings(obj):
    if isinstance(obj, dict):
        return {k: _without_timings(v) for k, v in obj.items()
                if "seconds" not in k and k not in ("started_at", "finished_at")}
    return [_without_timings(x) for x in obj] if isinstance(obj, list) else obj


@pytest.mark.parametrize("method", ["backdoor_learned", "backdoor_vote", "backdoor_prob_mean"])
def test_ensemble_run_in_blocks_writes_the_same_run(members, method, monkeypatch):
    """A whole run: metrics (the M-ablation's refits included), fitted state and stored
    predictions the same whether its combines and fits go in one block or in many."""
    root, runs = members
    outs = {}
    for tag, elements in (("one", 10**9), ("many", 5 * 6)):  # K = 6: 5 rows a block
        monkeypatch.setattr(blocks_mod, "BLOCK_ELEMENTS", elements)
        outs[tag] = root / tag / method
        ensemble_run(runs, outs[tag], method=method)
    a, b = (json.loads((outs[t] / "metrics.json").read_text()) for t in ("one", "many"))
    assert _without_timings(a) == _without_timings(b)
    assert (outs["one"] / "predictor.json").read_text() == \
        (outs["many"] / "predictor.json").read_text()
    stored = sorted(p.name for p in outs["one"].glob("predictions_*.parquet"))
    assert stored  # the argmax of each split's logits (lt_bench/runs/folder.py)
    for f in stored:
        assert (outs["one"] / f).read_bytes() == (outs["many"] / f).read_bytes()


def test_evaluate_in_row_blocks_gives_the_whole_splits_metrics(monkeypatch):
    """lt_bench.metrics.evaluate takes argmax and softmax confidence a row block at a
    time (iNat2018: a float64 copy and a softmax of 1.6 GB each): same metrics as the
    whole split's softmax, with a float32 input as runs store it."""
    from scipy.special import softmax

    import lt_bench.metrics as metrics_mod

    rng = np.random.default_rng(9)
    z = (rng.standard_normal((N, K)) * 3).astype(np.float32)
    z[5, 2] = z[5, 7]  # a tie: the first index wins, blocked or not
    y = rng.integers(0, K, N)
    counts = rng.integers(1, 200, K)
    p = softmax(z.astype(np.float64), axis=1)
    ece = metrics_mod.expected_calibration_error(p, y)
    for elements in (BLOCK * K, 1, 10**9):
        monkeypatch.setattr(blocks_mod, "BLOCK_ELEMENTS", elements)
        m, per_class = metrics_mod.evaluate(z, y, counts)
        assert m["ece"] == ece
        assert m["top1"] == float((z.argmax(1) == y).mean())
        np.testing.assert_array_equal(
            per_class["accuracy"], metrics_mod.per_class_accuracy(z.argmax(1), y, K))
