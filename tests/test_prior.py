"""Prior estimation (GLA): temperature calibration, recovery of a planted prior, the
`lt-bench prior` CLI and prior table, and (slow) q̂ vs the true prior of a toy CLIP."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from scipy.stats import spearmanr
from synth_runs import make_features_dir

from lt_bench.cli import main
from lt_bench.errors import InputValidationError
from lt_bench.prior import (
    PriorSolverDiverged,
    calibrate_temperature,
    estimate_prior,
    fit_prior,
    gla_sgd_prior,
    mean_confidence,
    read_prior,
    read_prior_meta,
    read_true_prior,
    write_prior,
)


def planted(k=20, per_class=300, seed=0):
    """Balanced labels; logits = calibrated clean logits + log q (a biased model)."""
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(k), per_class)
    q = np.exp(rng.normal(0, 1, k))
    q /= q.sum()
    mu = 2.5  # class-conditional Gaussians N(mu e_y, I): the Bayes logits are mu · c
    c = rng.normal(0, 1, (len(y), k))
    c[np.arange(len(y)), y] += mu
    return mu * c + np.log(q), y, q


def test_planted_prior_is_recovered():
    z, y, q = planted()
    q_hat = fit_prior(z, y)
    assert q_hat.sum() == pytest.approx(1.0) and (q_hat > 0).all()
    assert spearmanr(q_hat, q).statistic > 0.95
    assert np.abs(np.log(q_hat / q)).max() < 0.3
    assert 0.5 * np.abs(q_hat - q).sum() < 0.05


def test_full_estimator_with_temperature_recovers_planted_prior():
    z, y, q = planted(seed=1)
    q_hat, t = estimate_prior(z, y)
    assert 0.5 < t < 2.0
    assert spearmanr(q_hat, q).statistic > 0.9
    assert 0.5 * np.abs(q_hat - q).sum() < 0.1


def test_prior_estimate_goes_a_row_block_at_a_time(monkeypatch):
    """At iNat2018's val (24,426 × 8,142) the whole-split softmaxes and cross-entropy held
    several float64 N × K copies; blocked, the confidence is the same bits (row by row) and
    q̂ / T the same optimum (the CE summed a block at a time: equal to ~1e-9); a split in
    one block (the default here, as the toy world's) is the one call of before."""
    import lt_bench.blocks

    z, y, _ = planted(k=20, per_class=60, seed=4)
    q_whole, t_whole = estimate_prior(z, y)
    conf_whole = mean_confidence(z, 1.7)
    # the one-block path is the original expression: the same bits as dividing first
    np.testing.assert_array_equal(fit_prior(z, y, temperature=t_whole),
                                  fit_prior(z / t_whole, y))
    monkeypatch.setattr(lt_bench.blocks, "BLOCK_ELEMENTS", 7 * 20)  # 7 rows a block
    assert mean_confidence(z, 1.7) == conf_whole
    q_blocked, t_blocked = estimate_prior(z, y)
    assert t_blocked == t_whole  # the temperature's root search reads the confidence only
    np.testing.assert_allclose(q_blocked, q_whole, rtol=1e-7)


def test_temperature_makes_confidence_equal_accuracy():
    rng = np.random.default_rng(0)
    z = rng.normal(0, 2, (4000, 10))
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    y = np.array([rng.choice(10, p=row) for row in p])  # calibrated at T = 1 by construction
    assert calibrate_temperature(z, y) == pytest.approx(1.0, abs=0.1)
    t = calibrate_temperature(3 * z, y)
    assert t == pytest.approx(3.0, rel=0.1)
    assert mean_confidence(3 * z, t) == pytest.approx(((3 * z).argmax(1) == y).mean(), abs=1e-6)


def test_estimator_is_deterministic():
    z, y, _ = planted(k=8, per_class=50)
    a, ta = estimate_prior(z, y)
    b, tb = estimate_prior(z, y)
    assert ta == tb and np.array_equal(a, b)


def test_every_class_needs_a_sample():
    z, y, _ = planted(k=5, per_class=10)
    keep = y != 3
    with pytest.raises(ValueError, match="no sample"):
        fit_prior(z[keep], y[keep])


def test_prior_cli_and_table(tmp_path):
    fd = make_features_dir(tmp_path / "f", backbone="toyclip0")
    true = tmp_path / "true.parquet"
    q = np.array([0.3, 0.1, 0.2, 0.15, 0.15, 0.1])
    pd.DataFrame({"label": np.arange(6), "prior": q}).to_parquet(true)
    out = tmp_path / "prior" / "toy" / "toyclip0.parquet"
    assert main(["prior", "--features-dir", str(fd), "--out", str(out),
                 "--true-prior", str(true)]) == 0
    df = pd.read_parquet(out)
    assert list(df.columns) == ["label", "q_hat", "q_true"]
    assert df["q_hat"].sum() == pytest.approx(1.0)
    np.testing.assert_allclose(df["q_true"], q)
    meta = read_prior_meta(out)
    assert meta["temperature"] > 0 and meta["dataset"] == "toy"
    assert meta["backbone"] == "toyclip0" and "spearman" in meta
    assert main(["prior-table", "--priors", str(out), "--out-dir", str(tmp_path / "t")]) == 0
    table = pd.read_csv(tmp_path / "t" / "prior.csv")
    assert set(table.columns) >= {"backbone", "spearman", "pearson", "kl_true_hat", "tv",
                                  "temperature"}
    assert "toyclip0" in (tmp_path / "t" / "prior.md").read_text()


def test_prior_needs_a_text_tower(tmp_path, capsys):
    fd = make_features_dir(tmp_path / "f", text=False)
    assert main(["prior", "--features-dir", str(fd), "--out", str(tmp_path / "p.parquet")]) == 2
    assert "no text" in capsys.readouterr().err


# --- the prior file: one schema, one reader and writer ---------------------------------


def test_the_prior_file_round_trips_and_the_writer_refuses_what_the_reader_would(tmp_path):
    rng = np.random.default_rng(1)
    q_hat, q_true = rng.dirichlet(np.ones(7)), rng.dirichlet(np.ones(7))
    out = tmp_path / "p.parquet"
    write_prior(out, q_hat, {"temperature": 1.7, "dataset": "toy", "backbone": "b"}, q_true)
    pf = read_prior(out, 7, dataset="toy", backbone="b")
    np.testing.assert_array_equal(pf.q_hat, q_hat)
    np.testing.assert_array_equal(pf.q_true, q_true)
    np.testing.assert_array_equal(read_true_prior(out, 7), q_true)
    assert pf.temperature == 1.7 and pf.meta["backbone"] == "b"
    for bad_hat, bad_true, match in ((np.r_[0.5, 0.5, np.zeros(5)], None, "finite and > 0"),
                                     (np.full(7, 0.2), None, "q_hat sums to"),
                                     (q_hat, np.full(7, 0.2), "q_true sums to"),
                                     (q_hat, q_true[:6] / q_true[:6].sum(), "q_true has 6")):
        with pytest.raises(InputValidationError, match=match):
            write_prior(tmp_path / "bad.parquet", bad_hat, {}, bad_true)
        assert not (tmp_path / "bad.parquet").exists()


def test_a_toy_clips_true_prior_reads_the_same_in_either_schema(tmp_path):
    """Toy CLIPs pre-trained before the one schema wrote (label, classname, prior); that
    file, with its rows in any order, gives the same q_true as a file of the one schema,
    through `lt-bench prior --true-prior` and through the prior figure."""
    from lt_bench.report.figures import prior_pair

    fd = make_features_dir(tmp_path / "f", backbone="toyclip0")
    q = np.array([0.3, 0.1, 0.2, 0.15, 0.15, 0.1])
    legacy = tmp_path / "legacy.parquet"
    order = np.array([3, 0, 5, 1, 4, 2])
    pd.DataFrame({"label": order.astype(np.int32), "classname": [f"c{i}" for i in order],
                  "prior": q[order]}).to_parquet(legacy, index=False)
    one = tmp_path / "one.parquet"
    write_prior(one, np.full(6, 1 / 6), {"temperature": 1.0, "backbone": "toyclip0"}, q)
    outs = []
    for true in (legacy, one):
        np.testing.assert_array_equal(read_true_prior(true, 6), q)
        outs.append(tmp_path / f"prior_{true.stem}.parquet")
        assert main(["prior", "--features-dir", str(fd), "--out", str(outs[-1]),
                     "--true-prior", str(true)]) == 0
        np.testing.assert_array_equal(read_prior(outs[-1]).q_true, q)
    assert read_prior_meta(outs[0])["spearman"] == read_prior_meta(outs[1])["spearman"]
    # a results/prior file without q_true: the figure takes it from the backbone's file
    no_true = tmp_path / "no_true.parquet"
    write_prior(no_true, np.full(6, 1 / 6), {"temperature": 1.0})
    for true in (legacy, one):
        np.testing.assert_array_equal(prior_pair(no_true, true)[1], q)
    assert prior_pair(no_true, tmp_path / "missing.parquet") is None
    # the legacy file has no q̂: read as one, it is refused in one line naming the schema
    with pytest.raises(InputValidationError, match=r"expected label, q_hat and optionally"):
        read_prior(legacy)


def test_the_report_reads_priors_through_the_one_reader(tmp_path, capsys):
    """A prior file the runs would refuse (a q̂ of 0) is refused by the prior table too."""
    bad = tmp_path / "bad.parquet"
    pd.DataFrame({"label": np.arange(3, dtype=np.int32), "q_hat": [0.5, 0.5, 0.0]}
                 ).to_parquet(bad, index=False)
    assert main(["prior-table", "--priors", str(bad), "--out-dir", str(tmp_path / "t")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "q_hat must be finite and > 0" in err[0], err


# --- GLA's shipped solver (prior solver gla_sgd) ---------------------------------------


def _gla_loop_numpy(z, y, steps=1000, stop_outside=False):
    """GLA's pp_solver (BeierZhu/GLA trainers/util.py) with the gradients by hand, float64:
    l = z − log q, ∂CE/∂q_k = −Σ_i (p_ik − [y_i = k]) / (N q_k); L = CE + λ_eq(1 − Σq) +
    λ_inᵀ(−q): q −= lr ∂L/∂q, λ_eq += lr (1 − Σq), λ_in = max(0, λ_in − lr q), all from the
    same q; lr = 1e-5 (N/K)/50, q from 1/K, λ from 0. ``stop_outside``: return (q, step)
    at the first step that leaves some q_k <= 0 (log q NaN from there on)."""
    n, k = z.shape
    lr = 1e-5 * (n / k) / 50
    q, lam_eq, lam_in = np.full(k, 1.0 / k), 0.0, np.zeros(k)
    onehot = np.eye(k)[y]
    for step in range(steps):
        logit = z - np.log(q)
        p = np.exp(logit - logit.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        grad = -(p - onehot).sum(0) / (n * q) - lam_eq - lam_in
        eq, ineq = 1 - q.sum(), -q
        q = q - lr * grad
        lam_eq, lam_in = lam_eq + lr * eq, np.maximum(lam_in + lr * ineq, 0)
        if stop_outside and (q <= 0).any():
            return q, step + 1
    return q


def test_gla_sgd_equals_an_independent_transcription_of_glas_loop():
    z, y, _ = planted(k=12, per_class=40, seed=2)
    z = z / calibrate_temperature(z, y)
    got = gla_sgd_prior(z, y)
    want = _gla_loop_numpy(z, y)
    np.testing.assert_allclose(got, want, rtol=2e-5)  # float32 (GLA) against float64
    # 1,000 small steps from uniform stop far from the argmin of the same objective
    argmin = fit_prior(z, y)
    assert np.ptp(12 * got) < 0.5 * np.ptp(12 * argmin)
    assert spearmanr(got, argmin).statistic > 0.9  # ... with the same ranks


def test_gla_sgd_reports_where_glas_loop_gives_nan(tmp_path, capsys):
    """A class the zero-shot model never predicts: its q falls by lr/(K q) a step, so q² by
    ≈ 2 lr/K, and reaches 0 after ≈ 1/(2 lr K) = 500 steps (K = 25, N/K = 200): GLA's log q
    is then NaN. The solver names the step instead of writing a NaN prior."""
    z, y, _ = planted(k=25, per_class=200, seed=3)
    z[:, 7] -= 30.0
    q, step = _gla_loop_numpy(z, y, stop_outside=True)
    assert 400 < step < 600 and q[7] <= 0  # the reference loop: log q NaN from here
    with pytest.raises(PriorSolverDiverged, match=r"left the simplex at step (\d+) ") as e:
        gla_sgd_prior(z, y)
    assert abs(int(e.value.args[0].split("at step ")[1].split()[0]) - step) <= 2
    # through the CLI: exit 2, one line, no prior file
    fd = make_features_dir(tmp_path / "f", backbone="toyclip0")
    out = tmp_path / "p.parquet"
    from lt_bench import prior as prior_mod

    assert main(["prior", "--features-dir", str(fd), "--out", str(out),
                 "--solver", "gla_sgd"]) == 0  # a benign case works end to end
    meta = read_prior_meta(out)
    assert meta["solver"] == "gla_sgd" and "pp_solver" in meta["method"]
    assert read_prior(out).q_hat.sum() == pytest.approx(1.0)
    assert prior_mod.SOLVERS == ("argmin", "gla_sgd")


def test_default_prior_meta_has_no_solver_key(tmp_path):
    """Prior files of the default solver keep their metadata (no rerun of what consumes them)."""
    fd = make_features_dir(tmp_path / "f", backbone="toyclip0")
    out = tmp_path / "p.parquet"
    assert main(["prior", "--features-dir", str(fd), "--out", str(out)]) == 0
    assert "solver" not in read_prior_meta(out)


# --- the toy world: q̂ tracks the true pre-training prior -----------------------------

#: balanced labelled images per class the prior is fitted on. Measured on the toy CLIP of
#: ``small_toy_world`` (30 classes, 8000 pairs, 3 epochs): ρ(q̂, q_true) = 0.75 with 10 per
#: class, 0.77 with 20, 0.82 with 40 (the estimate's own sampling noise shrinks with n).
PRIOR_VAL_PER_CLASS = 40


@pytest.fixture(scope="module")
def toy_prior(small_toy_world, tmp_path_factory):
    """q̂ of the session's toy CLIP (pre-trained once for all slow tests) on a fresh
    balanced labelled set of the same toy world."""
    from conftest import SMALL_TOY

    from lt_bench.data import get_dataset
    from lt_bench.features.extract import extract_all

    root = tmp_path_factory.mktemp("toy_prior")
    params = {**SMALL_TOY, "max_per_class": 1, "imbalance": 1,
              "val_per_class": PRIOR_VAL_PER_CLASS, "test_per_class": 1}
    get_dataset("toy", **params).prepare(root / "data")
    extract_all("toy", root / "data", root / "data", "toyclip0", root / "feat",
                checkpoint=small_toy_world["backbone_dir"] / "checkpoint.pt", splits=("val",),
                batch_size=256, num_workers=0, device="cpu")
    out = root / "prior.parquet"
    assert main(["prior", "--features-dir", str(root / "feat"), "--out", str(out),
                 "--true-prior", str(small_toy_world["backbone_dir"] / "prior.parquet")]) == 0
    return out


@pytest.mark.slow
def test_toy_prior_estimate_tracks_the_true_prior(toy_prior):
    df = pd.read_parquet(toy_prior)
    rho = spearmanr(df["q_hat"], df["q_true"]).statistic
    meta = read_prior_meta(toy_prior)
    print(json.dumps({"spearman": rho, "temperature": meta["temperature"],
                      "zero_shot_top1": meta["zero_shot_top1"]}))
    assert rho >= 0.7, f"rho(q_hat, true prior) = {rho:.3f}"
