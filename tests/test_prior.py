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
from lt_bench.prior import (
    calibrate_temperature,
    estimate_prior,
    fit_prior,
    mean_confidence,
    read_prior_meta,
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
