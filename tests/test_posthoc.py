"""Post-hoc methods reuse finished heads (never retrain) and match their formulas:
τ-norm, post-hoc LA, GLA; cRT starts from the CE head; no tuning where val overlaps train."""

from __future__ import annotations

import json

import numpy as np
import pytest
from safetensors.numpy import load_file
from synth_runs import FAST, make_features_dir, make_prior

from lt_bench.cli import main
from lt_bench.errors import InputValidationError
from lt_bench.features.store import NoTextTowerError, read_features, read_text_embeddings
from lt_bench.io import read_json
from lt_bench.methods._reuse import float_grid
from lt_bench.runs import read_logits, run_logits, train_run

Q = np.array([0.4, 0.05, 0.2, 0.1, 0.15, 0.1])


def _unit(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _with_ce_la_runs(root, fd) -> dict:
    """The prior and the ce and la runs every post-hoc method here builds on."""
    prior = make_prior(root / "prior.parquet", Q, temperature=2.0)
    runs = {}
    for m in ("ce", "la"):
        runs[m] = root / "runs" / m
        train_run(m, fd, runs[m], seed=0, hparams=FAST, prior=prior)
    return {"root": root, "fd": fd, "prior": prior, "runs": runs}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("posthoc")
    fd = make_features_dir(root / "features")
    return _with_ce_la_runs(root, fd)


def _split(world, s):
    return read_features(world["fd"] / f"{s}.parquet")


def _ce_weight(world):
    return load_file(str(world["runs"]["ce"] / "predictor.safetensors"))["term0.weight"]


def _posthoc(world, method, name=None, **kw):
    out = world["root"] / "runs" / (name or method)
    base = {r: world["runs"][r] for r in ("ce", "la")}
    m = train_run(method, world["fd"], out, seed=0, prior=world["prior"],
                  base_runs={k: v for k, v in base.items()
                             if k in {"tau_norm": ["ce"], "la_posthoc": ["ce"],
                                      "gla": ["la"]}[method]}, **kw)
    return out, m


def _best(grid, score, default):
    scores = [score(v) for v in grid]
    ties = [v for v, s in zip(grid, scores, strict=True) if s == max(scores)]
    return min(ties, key=lambda v: abs(v - default))


def test_tau_norm_formula_and_choice(world):
    w = _ce_weight(world).astype(np.float64)
    val, test = _split(world, "val"), _split(world, "test")

    def logits(f, tau):
        return 25.0 * _unit(f) @ (w / np.linalg.norm(w, axis=1, keepdims=True) ** tau).T

    tau = _best(float_grid(0, 2, 0.1),
                lambda t: (logits(val.features, t).argmax(1) == val.labels).mean(), 1.0)
    out, m = _posthoc(world, "tau_norm")
    assert m["info"]["tau"] == pytest.approx(tau) and m["info"]["tuned"] is True
    labels, z = run_logits(out, "test")
    np.testing.assert_allclose(z, logits(test.features, tau), rtol=1e-4, atol=1e-4)
    assert m["top1"] == pytest.approx((z.argmax(1) == labels).mean())


def test_tau_one_is_the_ce_head(world):
    out, _ = _posthoc(world, "tau_norm", "tau_norm_fixed",
                      hparams={"tau_min": 1.0, "tau_max": 1.0})
    np.testing.assert_allclose(run_logits(out, "test")[1],
                               run_logits(world["runs"]["ce"], "test")[1], rtol=1e-5)


def test_la_posthoc_formula_and_choice(world):
    val, train = _split(world, "val"), _split(world, "train")
    log_pi = np.log(np.bincount(train.labels) / len(train.labels))
    _, z_ce_val = run_logits(world["runs"]["ce"], "val")
    tau = _best(float_grid(0, 2, 0.1),
                lambda t: ((z_ce_val - t * log_pi).argmax(1) == val.labels).mean(), 1.0)
    out, m = _posthoc(world, "la_posthoc")
    assert m["info"]["tau"] == pytest.approx(tau)
    assert set(m["info"]["val_top1_by_tau"]) == {str(t) for t in float_grid(0, 2, 0.1)}
    _, z_ce = run_logits(world["runs"]["ce"], "test")
    np.testing.assert_allclose(run_logits(out, "test")[1], z_ce - tau * log_pi,
                               rtol=1e-4, atol=1e-4)


def test_gla_formula(world):
    test = _split(world, "test")
    text = read_text_embeddings(world["fd"] / "text.parquet")
    out, m = _posthoc(world, "gla")
    z_zs = text.zero_shot_logits(test.features)
    _, z_la = run_logits(world["runs"]["la"], "test")
    # GLA-FS: the LA term divided by its own T, calibrated on val (confidence = accuracy)
    from lt_bench.prior import calibrate_temperature, mean_confidence

    y_val, z_la_val = run_logits(world["runs"]["la"], "val")
    t_la = calibrate_temperature(z_la_val, y_val)
    acc = float((z_la_val.argmax(1) == y_val).mean())
    assert mean_confidence(z_la_val, t_la) == pytest.approx(acc, abs=1e-6) or t_la in (1e-3, 1e3)
    expected = z_zs / 2.0 - np.log(Q / Q.sum()) + z_la / t_la  # T_zs = 2 from the prior file
    np.testing.assert_allclose(run_logits(out, "test")[1], expected, rtol=1e-4, atol=1e-4)
    assert m["info"]["temperature"] == 2.0
    assert m["info"]["temperature_la"] == pytest.approx(t_la)


def test_gla_needs_prior_and_text(world, tmp_path):
    with pytest.raises(InputValidationError, match="prior"):
        train_run("gla", world["fd"], tmp_path / "g", 0, base_runs={"la": world["runs"]["la"]})
    fd = make_features_dir(tmp_path / "f", text=False)
    with pytest.raises(NoTextTowerError, match="text tower"):
        train_run("gla", fd, tmp_path / "g2", 0, prior=world["prior"],
                  base_runs={"la": world["runs"]["la"]})


def test_posthoc_never_retrains_the_base_run(world):
    ce = world["runs"]["ce"]
    before = {p.name: p.stat().st_mtime_ns for p in ce.iterdir()}
    _posthoc(world, "la_posthoc", "la_posthoc2")
    assert {p.name: p.stat().st_mtime_ns for p in ce.iterdir()} == before
    cfg = read_json(world["root"] / "runs" / "la_posthoc2" / "config.json")
    assert cfg["base_runs"] == {"ce": str(ce)}


def test_crt_reinitialises_the_classifier(world):
    """classifier-balancing cls_crt.yaml: stage1_weights false -> a fresh classifier, not the
    CE head (and no CE run is needed)."""
    from lt_bench.methods import METHODS

    assert METHODS.get("crt").requires == ()
    out = world["root"] / "runs" / "crt_init"
    train_run("crt", world["fd"], out, seed=0, prior=world["prior"],
              hparams={"lr": 1e-12, "epochs": 1, "weight_decay": 0.0, "batch_size": 64})
    w = load_file(str(out / "predictor.safetensors"))["term0.weight"]
    # lr ~ 0: the weights are LIFT's unit-norm random init of seed 0 (tests/test_crt.py),
    # not the CE head's
    u = np.random.default_rng(0).uniform(-1, 1, w.shape)
    np.testing.assert_allclose(w, _unit(u), rtol=1e-5, atol=1e-7)
    assert not np.allclose(w, _ce_weight(world), atol=1e-3)
    hp = read_json(out / "config.json")["hparams"]
    assert hp["sampler"] == "class_aware" and hp["init"] == "random"
    assert hp["num_samples_cls"] == 4


def test_crt_retrains_with_class_aware_batches(world, monkeypatch):
    from lt_bench.methods import _heads

    seen = []
    real = _heads.batch_indices

    def spy(labels, batch_size, sampler, rng, class_aware=None):
        seen.append(sampler)
        return real(labels, batch_size, sampler, rng, class_aware)

    monkeypatch.setattr(_heads, "batch_indices", spy)
    out = world["root"] / "runs" / "crt_trained"
    train_run("crt", world["fd"], out, seed=0, hparams={"epochs": 2, "batch_size": 32})
    assert seen == ["class_aware"] * 2
    assert len(read_json(out / "history.json")) == 2


def test_no_tuning_where_val_overlaps_train(world, tmp_path):
    fd = make_features_dir(tmp_path / "f", dataset="inat2018")
    ce = tmp_path / "ce"
    train_run("ce", fd, ce, 0, hparams=FAST)
    m = train_run("la_posthoc", fd, tmp_path / "lp", 0, base_runs={"ce": ce})
    assert m["info"]["tau"] == 1.0 and m["info"]["tuned"] is False
    assert "overlaps train" in m["info"]["tune_note"]
    assert read_json(tmp_path / "lp" / "config.json")["tune"] is False
    m = train_run("tau_norm", fd, tmp_path / "tn", 0, base_runs={"ce": ce},
                  hparams={"tau": 0.5})
    assert m["info"]["tau"] == 0.5 and m["info"]["tuned"] is False
    # the CLI switch overrides the dataset default
    assert main(["fit", "--method", "la_posthoc", "--features-dir", str(fd), "--out",
                 str(tmp_path / "lp2"), "--base", f"ce={ce}", "--tune"]) == 0
    assert read_json(tmp_path / "lp2" / "metrics.json")["info"]["tuned"] is True


def test_every_run_gets_p_groups_with_a_prior(world):
    m = read_json(world["runs"]["ce"] / "metrics.json")
    for key in ("p_many", "p_medium", "p_few", "dp_many_p_few", "dp_few_p_many"):
        assert key in m
    cfg = read_json(world["runs"]["ce"] / "config.json")
    assert cfg["prior"] == str(world["prior"])


def test_prior_of_another_class_set_is_an_error(world, tmp_path):
    bad = make_prior(tmp_path / "p.parquet", np.ones(4))
    with pytest.raises(ValueError, match="expected one row per class with labels 0..5, got 4 rows"):
        train_run("ce", world["fd"], tmp_path / "x", 0, hparams=FAST, prior=bad)


def test_logits_cli_on_posthoc_run(world, tmp_path):
    out, _ = _posthoc(world, "tau_norm", "tau_norm_cli")
    assert main(["logits", str(out), "--split", "val", "--out", str(tmp_path / "l.parquet")]) == 0
    labels, z = read_logits(tmp_path / "l.parquet")
    m = read_json(out / "metrics.json")
    assert m["val_top1"] == pytest.approx((z.argmax(1) == labels).mean())
    assert json.loads((out / "predictor.json").read_text())["kind"] == "linear"


# --- five-crop TTE: knobs fitted on what is reported (crop-averaged val logits) ---------


@pytest.fixture(scope="module")
def tte_world(tmp_path_factory):
    """The synthetic features with five test-time crops on val and test: the centre crop
    (torchvision's order puts it last) is the plain feature, the four corners are shifted
    views, so a knob fitted on the centre alone differs from one fitted on the average."""
    import shutil

    from lt_bench.features.store import features_table, write_table

    root = tmp_path_factory.mktemp("posthoc_tte")
    plain = make_features_dir(root / "plain")
    fd = root / "tte" / "toy" / "bb0"
    fd.mkdir(parents=True)
    for f in ("train.parquet", "text.parquet"):
        shutil.copy(plain / f, fd / f)
    rng = np.random.default_rng(11)
    for split in ("val", "test"):
        s = read_features(plain / f"{split}.parquet")
        corners = s.features[:, None, :] + rng.normal(0, 1.5, (len(s), 4, s.features.shape[1]))
        crops = np.concatenate([corners, s.features[:, None, :]], 1).astype(np.float32)
        write_table(features_table(s.paths, s.labels, s.features, dict(s.meta), crops=crops),
                    fd / f"{split}.parquet")
    return _with_ce_la_runs(root, fd)


def _crop_logits(w, scale, crops, bias=None, power=1.0):
    """A cosine head's logits averaged over crops, by hand: s · x̂ · (w / ‖w‖^p)ᵀ (+ b)."""
    x = crops / np.linalg.norm(crops, axis=2, keepdims=True)
    w = w / np.linalg.norm(w, axis=1, keepdims=True) ** power
    z = scale * np.einsum("ncd,kd->nck", x, w).mean(1)
    return z if bias is None else z + bias


def test_posthoc_knobs_are_fitted_on_the_crop_averaged_val_logits(tte_world):
    w = load_file(str(tte_world["runs"]["ce"] / "predictor.safetensors"))["term0.weight"]
    w = w.astype(np.float64)
    val = read_features(tte_world["fd"] / "val.parquet")
    assert val.crops is not None and val.crops.shape[1] == 5
    counts = np.bincount(read_features(tte_world["fd"] / "train.parquet").labels)
    log_pi = np.log(counts / counts.sum())
    grid = float_grid(0.0, 2.0, 0.1)

    def acc(z):
        return float((z.argmax(1) == val.labels).mean())

    # la_posthoc: z − τ log π on the average over crops
    want = _best(grid, lambda t: acc(_crop_logits(w, 25.0, val.crops) - t * log_pi), 1.0)
    centre = _best(grid, lambda t: acc(_crop_logits(w, 25.0, val.crops[:, -1:]) - t * log_pi),
                   1.0)
    m = train_run("la_posthoc", tte_world["fd"], tte_world["root"] / "runs" / "lp", 0,
                  base_runs={"ce": tte_world["runs"]["ce"]})
    assert m["info"]["tau"] == pytest.approx(want)
    # τ-norm: rows w / ‖w‖^τ, the same average
    want_tn = _best(grid, lambda t: acc(_crop_logits(w, 25.0, val.crops, power=t)), 1.0)
    centre_tn = _best(grid, lambda t: acc(_crop_logits(w, 25.0, val.crops[:, -1:], power=t)),
                      1.0)
    m = train_run("tau_norm", tte_world["fd"], tte_world["root"] / "runs" / "tn", 0,
                  base_runs={"ce": tte_world["runs"]["ce"]})
    assert m["info"]["tau"] == pytest.approx(want_tn)
    # the case discriminates: the centre view alone picks another τ for at least one knob
    assert (want, want_tn) != (centre, centre_tn)


def test_gla_temperature_and_prior_are_fitted_on_crop_averages(tte_world, tmp_path):
    from lt_bench.prior import calibrate_temperature, zero_shot_logits

    val = read_features(tte_world["fd"] / "val.parquet")
    text = read_text_embeddings(tte_world["fd"] / "text.parquet")
    # q̂'s zero-shot logits: the average of each crop's s · cos(f, t_k)
    x = val.crops / np.linalg.norm(val.crops, axis=2, keepdims=True)
    want = text.logit_scale * np.einsum("ncd,kd->nck", x, text.embeddings).mean(1)
    labels, z = zero_shot_logits(tte_world["fd"])
    np.testing.assert_allclose(z, want, rtol=1e-5, atol=1e-5)
    assert not np.allclose(z, text.logit_scale * x[:, -1] @ text.embeddings.T, atol=1e-3)
    # GLA's T_la: calibrated on the LA run's crop-averaged val logits (what the seam reports)
    y_val, z_la_val = run_logits(tte_world["runs"]["la"], "val")
    out = tmp_path / "gla"
    m = train_run("gla", tte_world["fd"], out, 0, prior=tte_world["prior"],
                  base_runs={"la": tte_world["runs"]["la"]})
    assert m["info"]["temperature_la"] == pytest.approx(calibrate_temperature(z_la_val, y_val))
    w = load_file(str(tte_world["runs"]["la"] / "predictor.safetensors"))["term0.weight"]
    np.testing.assert_allclose(z_la_val, _crop_logits(w.astype(np.float64), 25.0, val.crops),
                               rtol=1e-4, atol=1e-4)
def test_linear_predictor_sums_terms_and_bias_as_written_out():
    """LinearPredictor.logits (summed in place, for memory) against the formula of
    lt_bench/methods/_predictor.py computed term by term: bit-identical float32."""
    from lt_bench.methods._predictor import LinearPredictor, LinearTerm

    rng = np.random.default_rng(3)
    f = rng.normal(size=(40, 6)).astype(np.float32)
    proj = rng.normal(size=(6, 5)).astype(np.float32)
    terms = [LinearTerm(rng.normal(size=(7, 6)), scale=20.0, weight_power=0.7),
             LinearTerm(rng.normal(size=(7, 5)), scale=3.0, normalize_features=False,
                        projection=proj)]
    bias = rng.normal(size=7).astype(np.float32)

    def by_hand(t):
        x = f.astype(np.float64)
        if t.projection is not None:
            x = x @ t.projection.astype(np.float64)
        if t.normalize_features:
            x = x / np.linalg.norm(x, axis=1, keepdims=True)
        w = t.weight.astype(np.float64)
        return t.scale * x @ (w / np.linalg.norm(w, axis=1, keepdims=True) ** t.weight_power).T

    want = (by_hand(terms[0]) + by_hand(terms[1]) + bias).astype(np.float32)
    np.testing.assert_array_equal(LinearPredictor(terms, bias).logits(f), want)
    np.testing.assert_array_equal(LinearPredictor(terms[:1]).logits(f),
                                  by_hand(terms[0]).astype(np.float32))
