"""Paired, class-stratified bootstrap intervals of top-1 differences (the
report's answer to "is this gap more than seed and test-set noise?")."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from lt_bench.errors import UserError
from lt_bench.report.significance import comparisons, paired_bootstrap, paired_bootstraps


def test_one_class_two_images_hand_computed():
    # d = [1, 0]: a replicate's mean is 0, 1/2 or 1 with probabilities 1/4, 1/2, 1/4, so
    # the 2.5 % and 97.5 % quantiles are 0 and 1 and the observed difference is 1/2
    r = paired_bootstrap(np.array([0, 0]), np.array([True, False]), np.array([False, False]),
                         n_boot=4000, seed=1)
    assert r["diff"] == 0.5 and r["lo"] == 0.0 and r["hi"] == 1.0
    assert r["n_images"] == 2 and r["n_seeds"] == 1 and r["n_boot"] == 4000


def test_resampling_keeps_each_class_and_pairs_the_runs():
    # class 0: A right, B wrong on its 3 images; class 1: both right on its 2 images.
    # Within-class resampling cannot change the mean (each class is constant): every
    # replicate is 3/5. An unstratified bootstrap would vary with the class mix.
    labels = np.array([0, 1, 0, 1, 0])
    a = np.array([1, 1, 1, 1, 1], bool)
    b = np.array([0, 1, 0, 1, 0], bool)
    r = paired_bootstrap(labels, a, b, n_boot=500, seed=0)
    assert r["diff"] == pytest.approx(0.6) and r["lo"] == pytest.approx(0.6)
    assert r["hi"] == pytest.approx(0.6)
    # paired: two runs with the same predictions differ by exactly 0 in every replicate
    rng = np.random.default_rng(3)
    c = rng.random(40) < 0.5
    r = paired_bootstrap(np.arange(40) % 4, c, c, n_boot=300, seed=0)
    assert (r["diff"], r["lo"], r["hi"]) == (0.0, 0.0, 0.0)


def test_spread_matches_the_stratified_variance():
    # Var of the stratified resampled mean = sum_c (n_c/N)^2 * var_c / n_c (ddof=0)
    rng = np.random.default_rng(0)
    counts = [30, 10, 60]
    labels = np.repeat(np.arange(3), counts)
    a = rng.random(labels.size) < np.array([0.9, 0.5, 0.6])[labels]
    b = rng.random(labels.size) < np.array([0.7, 0.5, 0.4])[labels]
    d = a.astype(float) - b
    n = labels.size
    var = sum((nc / n) ** 2 * d[labels == c].var() / nc for c, nc in enumerate(counts))
    r = paired_bootstrap(labels, a, b, n_boot=20000, seed=5)
    # the 95 % percentile interval of a near-normal statistic spans ~ 2 * 1.96 sd
    assert (r["hi"] - r["lo"]) / (2 * 1.96) == pytest.approx(np.sqrt(var), rel=0.1)
    assert r["diff"] == pytest.approx(d.mean())


def test_seeds_are_paired_row_by_row_and_the_seed_fixes_the_result():
    rng = np.random.default_rng(1)
    labels = np.repeat(np.arange(5), 8)
    a = rng.random((3, 40)) < 0.7
    b = rng.random((3, 40)) < 0.5
    r1 = paired_bootstrap(labels, a, b, n_boot=400, seed=7)
    r2 = paired_bootstrap(labels, a, b, n_boot=400, seed=7)
    r3 = paired_bootstrap(labels, a, b, n_boot=400, seed=8)
    assert r1 == r2 and (r1["lo"], r1["hi"]) != (r3["lo"], r3["hi"])
    assert r1["diff"] == pytest.approx(np.mean([a[s].mean() - b[s].mean() for s in range(3)]))
    assert r1["n_seeds"] == 3


def _gather_bootstrap(labels, a, b, n_boot, seed, chunk):
    """The definition, written out: per replicate, redraw within each class and average
    the paired differences of the drawn images (the module's draws, in its order)."""
    d = (np.atleast_2d(a).astype(float) - np.atleast_2d(b)).mean(0)
    order = np.argsort(labels, kind="stable")
    d = d[order]
    _, start, count = np.unique(labels[order], return_index=True, return_counts=True)
    first, size = np.repeat(start, count), np.repeat(count, count)
    rng = np.random.default_rng(seed)
    stats = []
    per_block = max(1, chunk // len(d))
    for lo in range(0, n_boot, per_block):
        k = min(per_block, n_boot - lo)
        idx = first + (rng.random((k, len(d))) * size).astype(np.int64)
        stats.extend(d[idx].mean(1))
    return np.quantile(stats, [0.025, 0.975])


def test_shared_replicates_give_each_pair_its_own_bootstrap(monkeypatch):
    # many pairs bootstrapped together (one resample per replicate, counts @ d) give each
    # pair the interval the per-pair definition gives, over several blocks of replicates
    from lt_bench.report import significance

    rng = np.random.default_rng(4)
    labels = rng.integers(0, 7, size=90)
    pairs = [(rng.random((s, 90)) < 0.6, rng.random((s, 90)) < 0.5) for s in (1, 3, 1, 2)]
    chunk = 90 * 37  # 37 replicates per block: 300 replicates take 9 blocks
    monkeypatch.setattr(significance, "CHUNK", chunk)
    got = paired_bootstraps(labels, pairs, n_boot=300, seed=11)
    for (a, b), r in zip(pairs, got, strict=True):
        lo, hi = _gather_bootstrap(labels, a, b, 300, 11, chunk)
        assert r["lo"] == pytest.approx(lo, abs=1e-12) and r["hi"] == pytest.approx(hi, abs=1e-12)
        assert r["diff"] == pytest.approx((a.mean(0) - b.mean(0)).mean())
        assert r["n_seeds"] == a.shape[0] and r["n_images"] == 90
    assert paired_bootstraps(labels, [], n_boot=10) == []


def test_coverage_on_a_synthetic_problem_with_a_known_difference():
    # 6 classes x 25 test images; A and B right with per-class probabilities, their
    # errors coupled through one shared uniform per image (paired predictions)
    pa = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4])
    pb = np.array([0.85, 0.8, 0.6, 0.55, 0.5, 0.3])
    truth = float((pa - pb).mean())  # equal class sizes
    labels = np.repeat(np.arange(6), 25)
    rng = np.random.default_rng(2024)
    hits = 0
    for t in range(200):
        u = rng.random(labels.size)
        v = np.where(rng.random(labels.size) < 0.3, rng.random(labels.size), u)
        r = paired_bootstrap(labels, u < pa[labels], v < pb[labels], n_boot=400, seed=t)
        hits += r["lo"] <= truth <= r["hi"]
    assert hits >= 180, f"coverage {hits / 200:.2f} < 0.90"


def test_bad_shapes_are_user_errors():
    with pytest.raises(UserError, match=r"shape \(1, 3\) and \(1, 2\) for 3 labels"):
        paired_bootstrap(np.arange(3), np.ones(3, bool), np.ones(2, bool))


# --- comparisons over run folders ---------------------------------------------------------

def _run(root: Path, ds, bb, method, seed, correct, val_top1=0.5, members=()):
    d = root / ds / bb / method / f"seed{seed}"
    d.mkdir(parents=True)
    cfg = {"dataset": ds, "backbone": bb, "method": method, "seed": seed,
           "members": [{"run_dir": str(m), "backbone": m.parts[-3]} for m in members]}
    (d / "config.json").write_text(json.dumps(cfg))
    (d / "metrics.json").write_text(json.dumps({**cfg, "top1": float(np.mean(correct)),
                                                "val_top1": val_top1}))
    # test logits that get exactly `correct` right: two classes, score on the answer
    labels = np.arange(len(correct)) % 2
    pred = np.where(correct, labels, 1 - labels)
    np.save(d / "test_logits.npy", np.eye(2)[pred])
    np.save(d / "test_labels.npy", labels)
    return d


def _load(run_dir, split):
    return np.load(run_dir / f"{split}_labels.npy"), np.load(run_dir / f"{split}_logits.npy")


def test_comparisons_pick_la_best_member_on_val_and_controls(tmp_path):
    rng = np.random.default_rng(0)
    n = 60
    c = {k: rng.random((2, n)) < p for k, p in
         {"a_la": 0.6, "a_ce": 0.5, "b_la": 0.7, "bd": 0.8, "ctl": 0.75, "a_ft": 0.72,
          "b_ft": 0.65, "bd_ft": 0.85}.items()}
    dirs = []
    la, ft = {}, {}
    for s in (0, 1):
        la[("a", s)] = _run(tmp_path, "toy", "a", "la", s, c["a_la"][s], val_top1=0.9)
        la[("b", s)] = _run(tmp_path, "toy", "b", "la", s, c["b_la"][s], val_top1=0.1)
        # fine-tuned members: b is best on val (a is better on test)
        ft[("a", s)] = _run(tmp_path, "toy", "a", "adaptformer_la", s, c["a_ft"][s],
                            val_top1=0.2)
        ft[("b", s)] = _run(tmp_path, "toy", "b", "adaptformer_la", s, c["b_ft"][s],
                            val_top1=0.8)
        dirs += [la[("a", s)], la[("b", s)], ft[("a", s)], ft[("b", s)],
                 _run(tmp_path, "toy", "a", "ce", s, c["a_ce"][s]),
                 _run(tmp_path, "toy", "ensemble", "backdoor", s, c["bd"][s],
                      members=[la[("a", s)], la[("b", s)]]),
                 _run(tmp_path, "toy", "ensemble", "backdoor_ce", s, c["ctl"][s],
                      members=[la[("a", s)]]),
                 _run(tmp_path, "toy", "ensemble", "backdoor_finetuned", s, c["bd_ft"][s],
                      members=[ft[("a", s)], ft[("b", s)]])]
    t = comparisons(dirs, n_boot=300, seed=0, loader=_load)
    kinds = sorted(zip(t["kind"], t["a_method"], t["b_method"], strict=True))
    # each backdoor against its own best member; the fine-tuned backdoor is no control
    assert kinds == [("backdoor_vs_best_member", "backdoor", "la"),
                     ("backdoor_vs_best_member", "backdoor_finetuned", "adaptformer_la"),
                     ("control_vs_backdoor", "backdoor_ce", "backdoor"),
                     ("vs_la", "adaptformer_la", "la"), ("vs_la", "adaptformer_la", "la"),
                     ("vs_la", "ce", "la")]
    rows = t[t["kind"] == "backdoor_vs_best_member"].set_index("a_method")
    best = rows.loc["backdoor"]
    # the member best on val is backbone a (val 0.9), although b is better on test
    assert "(a)" in best["b_label"]
    assert best["b_top1"] == pytest.approx(100 * c["a_la"].mean())
    assert best["diff"] == pytest.approx(100 * (c["bd"].mean() - c["a_la"].mean()))
    assert best["n_seeds"] == 2 and best["n_images"] == n
    ftb = rows.loc["backdoor_finetuned"]
    assert "(b)" in ftb["b_label"]  # b: best fine-tuned member on val
    assert ftb["b_top1"] == pytest.approx(100 * c["b_ft"].mean())
    assert ftb["diff"] == pytest.approx(100 * (c["bd_ft"].mean() - c["b_ft"].mean()))
    # its interval is the paired bootstrap of the same seed-paired arrays
    labels = np.arange(n) % 2
    ref = paired_bootstrap(labels, c["bd_ft"], c["b_ft"], n_boot=300, seed=0)
    assert (ftb["lo"], ftb["hi"]) == pytest.approx((100 * ref["lo"], 100 * ref["hi"]))
    for _, r in t.iterrows():
        assert r["lo"] <= r["diff"] <= r["hi"]
        assert r["significant"] == (r["lo"] > 0 or r["hi"] < 0)


def test_real_runs_rebuilt_logits_agree_with_their_metrics(tmp_path):
    """`lt-bench significance` on trained runs: the top-1 it rebuilds from each run's saved
    predictor equals the run's own metrics.json (mean over the paired seeds)."""
    import pandas as pd
    from synth_runs import FAST, make_features_dir, make_prior

    from lt_bench.cli import main
    from lt_bench.runs.train import train_run

    runs = tmp_path / "runs" / "toy"
    for i in range(2):
        fd = make_features_dir(tmp_path / "features", backbone=f"bb{i}", view_seed=i)
        prior = make_prior(tmp_path / f"bb{i}.parquet", np.arange(1, 7.0))
        for m in ("ce", "la"):
            train_run(m, fd, runs / f"bb{i}" / m / "seed0", seed=0, hparams=FAST, prior=prior)
    assert main(["combine", "--method", "backdoor", "--members", str(runs / "bb0/la/seed0"),
                 str(runs / "bb1/la/seed0"), "--out", str(runs / "ensemble/backdoor/seed0")]) == 0
    out = tmp_path / "sig.csv"
    assert main(["significance", "--runs-root", str(tmp_path / "runs"), "--n-boot", "300",
                 "--out", str(out)]) == 0
    t = pd.read_csv(out)
    assert sorted(t["kind"]) == ["backdoor_vs_best_member", "vs_la", "vs_la"]

    def top1(bb, m):
        return 100 * json.loads((runs / bb / m / "seed0/metrics.json").read_text())["top1"]

    for _, r in t[t["kind"] == "vs_la"].iterrows():
        assert r["a_top1"] == pytest.approx(top1(r["a_backbone"], "ce"), abs=1e-3)
        assert r["b_top1"] == pytest.approx(top1(r["a_backbone"], "la"), abs=1e-3)
    r = t[t["kind"] == "backdoor_vs_best_member"].iloc[0]
    assert r["a_top1"] == pytest.approx(top1("ensemble", "backdoor"), abs=1e-3)
    val = {b: json.loads((runs / b / "la/seed0/metrics.json").read_text())["val_top1"]
           for b in ("bb0", "bb1")}
    best = max(val, key=val.get)
    assert f"({best})" in r["b_label"] and r["b_top1"] == pytest.approx(top1(best, "la"),
                                                                         abs=1e-3)


def test_stored_predictions_and_shared_rebuilds_give_the_same_table_byte_for_byte(tmp_path):
    """`lt-bench significance` reads each run's stored test predictions
    (``RunFolder.predictions``); the table is byte-identical to the one made run by run
    from the seam's rebuilt logits (``loader=run_logits``), and so is the one made from
    run folders written before predictions were stored (the fallback: members of the
    ensembles that combine the same runs rebuilt once, ``_Correct.prefetch_ensembles``)."""
    from synth_runs import FAST, make_features_dir, make_prior

    from lt_bench.cli import main
    from lt_bench.report.significance import _Correct, write_significance
    from lt_bench.runs import run_logits
    from lt_bench.runs.train import train_run

    runs = tmp_path / "runs" / "toy"
    for i in range(3):
        fd = make_features_dir(tmp_path / "features", backbone=f"bb{i}", view_seed=i)
        prior = make_prior(tmp_path / f"bb{i}.parquet", np.arange(1, 7.0) + i)
        for s in (0, 1):
            for m in ("ce", "la"):
                train_run(m, fd, runs / f"bb{i}" / m / f"seed{s}", seed=s,
                          hparams={**FAST, "epochs": 1 + s + i}, prior=prior)
    ensembles = []
    for s in (0, 1):
        for method, member in (("backdoor", "la"), ("backdoor_prob_mean", "la"),
                               ("backdoor_learned", "la"), ("backdoor_ce", "ce")):
            out = runs / "ensemble" / method / f"seed{s}"
            assert main(["combine", "--method", method, "--members",
                         *[str(runs / f"bb{i}" / member / f"seed{s}") for i in range(3)],
                         "--out", str(out)]) == 0
            ensembles.append(out)

    def significance(name):
        out = tmp_path / name
        assert main(["significance", "--runs-root", str(tmp_path / "runs"), "--n-boot",
                     "200", "--out", str(out)]) == 0
        return out

    stored = significance("stored.csv")
    dirs = sorted(p.parent for p in runs.glob("*/*/seed*/metrics.json"))
    one_by_one = write_significance(comparisons(dirs, n_boot=200, loader=run_logits),
                                    tmp_path / "one_by_one.csv")
    assert stored.read_bytes() == one_by_one.read_bytes()
    # ce vs la on each backbone, the backdoor vs its best member, its 3 controls vs it
    assert len(stored.read_text().splitlines()) == 1 + 3 + 1 + 3
    # run folders of an earlier version: no predictions files, the same table
    old = list(runs.glob("*/*/seed*/predictions_*.parquet"))
    assert len(old) == 2 * len(dirs)
    for p in old:
        p.unlink()
    assert significance("rebuilt.csv").read_bytes() == stored.read_bytes()
    # the prefetch fills the members' own correctness too, equal to a rebuild of its own
    correct = _Correct()
    correct.prefetch_ensembles(ensembles)
    for d in [*ensembles, runs / "bb1/la/seed1", runs / "bb2/ce/seed0"]:
        assert str(d) in correct._cache
        labels, logits = run_logits(d, "test")
        np.testing.assert_array_equal(correct._cache[str(d)][1], logits.argmax(1) == labels)
