"""The controls beside the backdoor (is its gain the backbones' diversity, or any
ensemble's?), as ordinary ensemble runs: the
same-backbone ensemble over seeds, CE members, the probability mean, weights learned on
val, the val-chosen best member and the compute each row records."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.optimize import minimize
from scipy.special import log_softmax
from synth_runs import FAST, make_features_dir, make_prior

from lt_bench.cli import main
from lt_bench.errors import EXIT_USER_ERROR
from lt_bench.features.store import features_table, read_features, write_table
from lt_bench.io import read_json
from lt_bench.methods import METHODS
from lt_bench.methods._combine import combine, fit_member_weights
from lt_bench.metrics import evaluate
from lt_bench.runs import run_logits, train_run
from lt_bench.runs.ensemble import ensemble_run

BACKBONES = ("bb0", "bb1", "bb2")
SAME_SEEDS = (0, 1000, 2000)  # backdoor_same_backbone's default seed_offsets for seed 0
COUNTS = np.array([120, 60, 30, 15, 8, 4])


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """results/runs/toy/{bb}/{la,ce}/seed0 for three backbones, and bb0's LA at the seeds
    of its same-backbone ensemble."""
    root = tmp_path_factory.mktemp("controls")
    runs = root / "results" / "runs" / "toy"
    for i, bb in enumerate(BACKBONES):
        fd = make_features_dir(root / "features", backbone=bb, view_seed=i)
        prior = make_prior(root / "prior" / f"{bb}.parquet", np.arange(1, 7.0) + i)
        for m in ("la", "ce"):
            train_run(m, fd, runs / bb / m / "seed0", seed=0, hparams=FAST, prior=prior)
        if bb == "bb0":
            for s in SAME_SEEDS[1:]:
                train_run("la", fd, runs / bb / "la" / f"seed{s}", seed=s, hparams=FAST,
                          prior=prior)
    return root, runs


def _members(runs, method="la", seed=0):
    return [runs / bb / method / f"seed{seed}" for bb in BACKBONES]


def _combine(method, members, out, params=None):
    argv = ["combine", "--method", method, "--members", *map(str, members), "--out", str(out)]
    assert main(argv + (["--params", json.dumps(params)] if params else [])) == 0
    return read_json(out / "metrics.json")


# --- probability mean -------------------------------------------------------------------

def test_prob_mean_hand_worked_two_members():
    # row 0: p1 = (1/4, 3/4), p2 = (1/2, 1/2) -> mean (3/8, 5/8)
    # row 1: p1 = (4/5, 1/5), p2 = (1/5, 4/5) -> mean (1/2, 1/2)
    z1 = np.array([[0.0, np.log(3)], [np.log(4), 0.0]])
    z2 = np.array([[5.0, 5.0], [-1.0, np.log(4) - 1.0]])
    out = combine([z1, z2], "prob_mean")
    np.testing.assert_allclose(out, np.log([[3 / 8, 5 / 8], [1 / 2, 1 / 2]]), atol=1e-12)
    # the logit sum ranks row 0 the same but is no log-probability
    np.testing.assert_allclose(combine([z1, z2], "sum"), z1 + z2)


def test_backdoor_prob_mean_method_row(world, tmp_path):
    _, runs = world
    out = runs / "ensemble" / "backdoor_prob_mean" / "seed0"
    m = _combine("backdoor_prob_mean", _members(runs), out)
    zs = [run_logits(r, "test")[1].astype(np.float64) for r in _members(runs)]
    expected = np.log(np.mean([np.exp(log_softmax(z, axis=1)) for z in zs], axis=0))
    np.testing.assert_allclose(run_logits(out, "test")[1], expected, atol=1e-5)
    assert m["method"] == "backdoor_prob_mean" and m["backbone"] == "ensemble"
    assert read_json(out / "config.json")["hparams"] == {"rule": "prob_mean", "members": "la"}
    with pytest.raises(ValueError, match="rule = 'sum'; valid: prob_mean"):
        METHODS.get("backdoor_prob_mean")(rule="sum")


# --- learned weights --------------------------------------------------------------------

def _nll(w, zs, y):
    s = sum(wc * z for wc, z in zip(w, zs, strict=True))
    return -log_softmax(s, axis=1)[np.arange(len(y)), y].mean()


def _reference_fit(zs, y):
    """The same NLL minimised over log w by Nelder-Mead (no gradients, no bounds)."""
    ref = minimize(lambda t: _nll(np.exp(t), zs, y), np.zeros(len(zs)), method="Nelder-Mead",
                   options={"xatol": 1e-10, "fatol": 1e-14, "maxiter": 20000, "maxfev": 40000})
    return np.exp(ref.x), ref.fun


def _hand_made(strengths, seed=0, n=120, k=4):
    """Members whose logits carry the true class with the given strength, plus noise: val
    is not separable, so the NLL has a finite minimum."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    return [s * np.eye(k)[y] + rng.normal(0, 1.0, (n, k)) for s in strengths], y


def test_learned_weights_match_an_independent_fit():
    zs, y = _hand_made((1.5, 0.8, 0.0))
    w, info = fit_member_weights(zs, y)
    ref_w, ref_nll = _reference_fit(zs, y)
    np.testing.assert_allclose(w, ref_w, rtol=1e-5)
    assert w[0] > w[1] > w[2] > 0  # the better member weighs more
    assert info["val_nll"] == pytest.approx(ref_nll, abs=1e-7)  # float32 logits
    assert info["val_nll"] < info["val_nll_equal_weights"] and not info["at_max_weight"]
    np.testing.assert_array_equal(w, fit_member_weights(zs, y)[0])  # deterministic


def test_learned_weight_of_a_harmful_member_is_zero():
    zs, y = _hand_made((1.5, 0.8, -0.5))  # the third member points away from the truth
    w, _ = fit_member_weights(zs, y)
    ref_w, _ = _reference_fit(zs, y)  # its log w runs off to −∞
    assert w[2] == 0.0 and ref_w[2] < 1e-6
    np.testing.assert_allclose(w[:2], ref_w[:2], rtol=1e-5)


def test_learned_weights_stop_at_max_weight_where_val_is_separable():
    y = np.array([0, 1, 0, 1])
    z = np.array([[1.0, -1.0], [-1.0, 1.0], [1.0, -1.0], [-1.0, 1.0]])
    w, info = fit_member_weights([z, z], y, max_weight=3.0)
    assert info["at_max_weight"]
    np.testing.assert_array_equal(w, [3.0, 3.0])


def test_weighted_sum_refuses_bad_weights():
    z = np.zeros((2, 3))
    with pytest.raises(ValueError, match=r"weights \[1.0, -0.5\] are invalid; expected 2"):
        combine([z, z], "weighted_sum", [1.0, -0.5])
    with pytest.raises(ValueError, match="takes no weights"):
        combine([z, z], "sum", [1.0, 1.0])
    with pytest.raises(ValueError, match="max_weight = 0"):
        METHODS.get("backdoor_learned")(max_weight=0)


def test_backdoor_learned_cli_end_to_end(world, capsys):
    _, runs = world
    members = _members(runs)
    out = runs / "ensemble" / "backdoor_learned" / "seed0"
    capsys.readouterr()
    m = _combine("backdoor_learned", members, out)
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    names = list(BACKBONES)
    w = np.array([m["info"]["weights"][b] for b in names])
    assert printed["weights"] == m["info"]["weights"] and m["info"]["weights_fitted_on"] == "val"
    shares = [m["info"]["weight_shares"][b] for b in names]
    np.testing.assert_allclose(shares, w / w.sum())
    # the weights are the val fit of the members' val logits
    yv, zv = zip(*(run_logits(r, "val") for r in members), strict=True)
    np.testing.assert_allclose(w, fit_member_weights(list(zv), yv[0])[0], rtol=1e-6)
    # the seam rebuilds Σ_c w_c z_c from predictor.json, and the metrics are of those logits
    assert read_json(out / "predictor.json")["weights"] == pytest.approx(w.tolist())
    y, zt = zip(*(run_logits(r, "test") for r in members), strict=True)
    expected = sum(wc * z.astype(np.float64) for wc, z in zip(w, zt, strict=True))
    np.testing.assert_allclose(run_logits(out, "test")[1], expected, rtol=1e-5, atol=1e-4)
    assert m["top1"] == pytest.approx(evaluate(expected, y[0], COUNTS)[0]["top1"])
    assert m["m3_top1"] == pytest.approx(m["top1"])
    # compute: the members' parameters plus the three weights
    msum = sum(read_json(r / "metrics.json")["n_trainable_params"] for r in members)
    assert m["n_trainable_params"] == msum + 3
    assert read_json(out / "config.json")["hparams"] == {
        "rule": "weighted_sum", "members": "la", "max_weight": 100.0}


def _shuffle_test_labels(fd, seed=3):
    t = read_features(fd / "test.parquet")
    labels = np.random.default_rng(seed).permutation(t.labels)
    write_table(features_table(t.paths, labels, t.features, t.meta), fd / "test.parquet")


def test_learned_weights_never_look_at_test(world, tmp_path):
    """Members trained on the same train/val but with the test labels shuffled (the same
    way for every backbone) give the very same weights; the test metrics change."""
    _, runs = world
    shuffled = []
    for i, bb in enumerate(BACKBONES):
        fd = make_features_dir(tmp_path / "features", backbone=bb, view_seed=i)
        _shuffle_test_labels(fd)
        out = tmp_path / "runs" / bb / "la" / "seed0"
        prior = make_prior(tmp_path / f"{bb}.parquet", np.arange(1, 7.0) + i)
        train_run("la", fd, out, seed=0, hparams=FAST, prior=prior)
        shuffled.append(out)
    a = ensemble_run(_members(runs), tmp_path / "a", "backdoor_learned")
    b = ensemble_run(shuffled, tmp_path / "b", "backdoor_learned")
    assert a["info"]["weights"] == b["info"]["weights"]
    assert a["val_top1"] == b["val_top1"]
    assert not np.array_equal(run_logits(_members(runs)[0], "test")[0],
                              run_logits(shuffled[0], "test")[0])


# --- same-backbone ensemble -------------------------------------------------------------

def test_same_backbone_ensemble_over_seeds(world, capsys):
    _, runs = world
    members = [runs / "bb0" / "la" / f"seed{s}" for s in SAME_SEEDS]
    out = runs / "bb0" / "backdoor_same_backbone" / "seed0"
    m = _combine("backdoor_same_backbone", members, out)
    assert (m["method"], m["backbone"], m["seed"]) == ("backdoor_same_backbone", "bb0", 0)
    cfg = read_json(out / "config.json")
    assert cfg["vary"] == "seed" and [x["seed"] for x in cfg["members"]] == list(SAME_SEEDS)
    zs = [run_logits(r, "test")[1] for r in members]
    assert not np.allclose(zs[0], zs[1])  # the seeds do change the members
    np.testing.assert_allclose(run_logits(out, "test")[1], sum(zs), rtol=1e-5, atol=1e-4)
    assert m["best_member_top1"] == max(read_json(r / "metrics.json")["top1"] for r in members)
    assert m["info"]["members"] == list(SAME_SEEDS)


def test_same_backbone_refuses_two_backbones_and_wrong_seeds(world, tmp_path, capsys):
    _, runs = world
    la = runs / "bb0" / "la"
    two = [la / "seed0", runs / "bb1" / "la" / "seed0", la / "seed2000"]
    argv = ["combine", "--method", "backdoor_same_backbone", "--out", str(tmp_path / "x"),
            "--members"]
    assert main(argv + list(map(str, two))) == 2
    err = capsys.readouterr().err
    assert "differ in backbone: 'bb0' vs 'bb1'" in err and str(two[1]) in err
    # seeds not s + seed_offsets (here: out of order)
    assert main(argv + [str(la / "seed0"), str(la / "seed2000"), str(la / "seed1000")]) == 2
    assert "do not follow seed_offsets [0, 1000, 2000]" in capsys.readouterr().err
    # a CE run among LA members
    assert main(argv + [str(la / "seed0"), str(runs / "bb0/ce/seed0")]) == 2
    assert "is a run of method 'ce'" in capsys.readouterr().err
    # and the backdoor over backbones refuses members of two seeds
    assert main(["combine", "--method", "backdoor", "--out", str(tmp_path / "y"), "--members",
                 str(la / "seed1000"), str(runs / "bb1/la/seed0")]) == 2
    assert "differ in seed: 1000 vs 0" in capsys.readouterr().err
    with pytest.raises(ValueError, match="seed_offsets = \\[1000, 2000\\]"):
        METHODS.get("backdoor_same_backbone")(seed_offsets=[1000, 2000])


# --- CE members, val-chosen member, compute ---------------------------------------------

def test_ce_members_and_compute_fields(world, tmp_path):
    _, runs = world
    ce = _members(runs, "ce")
    out = runs / "ensemble" / "backdoor_ce" / "seed0"
    m = _combine("backdoor_ce", ce, out)
    zs = [run_logits(r, "test")[1] for r in ce]
    np.testing.assert_allclose(run_logits(out, "test")[1], sum(zs), rtol=1e-5, atol=1e-4)
    member = [read_json(r / "metrics.json") for r in ce]
    assert m["n_trainable_params"] == sum(x["n_trainable_params"] for x in member) > 0
    assert m["inference_cost"] == sum(x["inference_cost"] for x in member) == 3.0
    assert m["train_seconds"] == pytest.approx(sum(x["train_seconds"] for x in member),
                                               abs=0.05)
    assert m["train_seconds"] >= sum(x["train_seconds"] for x in member)
    # best member on val vs the test oracle
    val = [x["val_top1"] for x in member]
    chosen = member[int(np.argmax(val))]
    assert m["val_best_member_top1"] == chosen["top1"]
    assert m["val_gain_top1"] == pytest.approx(m["top1"] - chosen["top1"])
    assert m["best_member_top1"] == max(x["top1"] for x in member)
    assert m["info"]["val_best_member"] == chosen["backbone"]
    assert m["info"]["best_member_chosen_on"].startswith("test (oracle")
    # LA runs are not CE members
    with pytest.raises(ValueError, match="is a run of method 'la'"):
        ensemble_run(_members(runs), tmp_path / "x", hparams={"members": "ce"})



# --- one job for every ensemble of a (dataset, seed): `lt-bench combine --runs` -----------

def test_one_process_combines_the_same_runs_as_one_process_each(world, tmp_path):
    root, runs = world
    entries = [
        {"method": "backdoor", "seed": 0, "out": str(tmp_path / "job" / "backdoor"),
         "params": {"members": "la", "rule": "sum"}, "members": list(map(str, _members(runs)))},
        {"method": "backdoor_learned", "seed": 0, "out": str(tmp_path / "job" / "learned"),
         "params": {"members": "la", "rule": "weighted_sum"},
         "members": list(map(str, _members(runs)))},
        {"method": "backdoor_same_backbone", "seed": 0, "out": str(tmp_path / "job" / "same"),
         "params": {"members": "la", "rule": "sum", "seed_offsets": list(SAME_SEEDS)},
         "members": [str(runs / "bb0" / "la" / f"seed{s}") for s in SAME_SEEDS]},
    ]
    assert main(["combine", "--runs", json.dumps(entries)]) == 0
    for e in entries:
        alone = _combine(e["method"], e["members"], tmp_path / "alone" / e["method"], e["params"])
        got = read_json(tmp_path / "job" / e["out"].rsplit("/", 1)[1] / "metrics.json")
        for key in ("top1", "many", "few", "m1_top1", "val_best_member_top1", "gain_top1"):
            assert got[key] == alone[key], (e["method"], key)
        assert got["method"] == e["method"]
        np.testing.assert_array_equal(run_logits(tmp_path / "job" / e["out"].rsplit("/", 1)[1],
                                                 "test")[1],
                                      run_logits(tmp_path / "alone" / e["method"], "test")[1])


def test_bad_ensemble_run_lists_name_the_problem(world, tmp_path, capsys):
    root, runs = world
    members = list(map(str, _members(runs)))
    ok = {"method": "backdoor", "seed": 0, "out": str(tmp_path / "b"), "members": members}
    cases = [
        ([{**ok, "members": []}], "combines finished runs: give them"),
        ([ok, {**ok, "out": str(tmp_path / "c"), "seed": 3}],
         "members make an ensemble of seed 0, the run list says seed 3"),
        ([ok, {"method": "la", "seed": 0, "out": str(tmp_path / "la")}],
         "consumes features, which `lt-bench combine` does not make runs from"),
        ([{**ok, "member": members}], "unknown key(s) ['member']"),
    ]
    for entries, message in cases:
        assert main(["combine", "--runs", json.dumps(entries)]) == EXIT_USER_ERROR
        assert message in capsys.readouterr().err, message
        # refused before anything was written (the first entry of a list too)
        assert not (tmp_path / "b").exists() and not (tmp_path / "c").exists()


# --- the same verb makes the views of a fine-tuning -------------------------------------

def _fake_finetuning(out, seed: int, k: int = 6, d: int = 8):
    """A fine-tuned run folder (the stored features, both views, and the head) written by
    the fine-tuning's own writer from random numbers: no fine-tuning needed."""
    from lt_bench.runs.finetune import write_finetuned_run

    rng = np.random.default_rng(seed)
    labels = {s: np.arange(n) % k for s, n in (("val", 18), ("test", 24))}
    feats = {s: {v: rng.normal(size=(len(y), d)).astype(np.float32) for v in ("centre", "tte")}
             for s, y in labels.items()}
    config = {"method": "adaptformer_la", "consumes": "images", "hparams": {}, "seed": seed,
              "dataset": "toy", "backbone": "bb0", "num_classes": k,
              "split_sha256": {s: s * 8 for s in ("train", "val", "test")}}
    write_finetuned_run(out, labels=labels, features=feats,
                        trainable={"head.weight": rng.normal(size=(k, d))}, scale=25.0,
                        view="centre", train_counts=COUNTS, config=config, info={})
    return out


def test_combine_makes_a_view_of_a_finetuning_like_an_ensemble(tmp_path, capsys):
    """A view of one fine-tuning (adaptformer_la_tte) is a runs-consuming run too: the
    `combine` verb checks its one member as the method declares it (seed offset 0), in a
    run list as well, and routes it to the view's driver."""
    from lt_bench.runs.predictors import cosine_head_logits

    ft = _fake_finetuning(tmp_path / "bb0" / "adaptformer_la" / "seed0", 0)
    one = tmp_path / "one" / "adaptformer_la_tte"
    assert main(["combine", "--method", "adaptformer_la_tte", "--members", str(ft),
                 "--out", str(one)]) == 0
    from safetensors.numpy import load_file

    from lt_bench.runs.folder import read_run_features

    y, f = read_run_features(ft / "features_test.parquet", "tte")
    head = load_file(str(ft / "trainable.safetensors"))["head.weight"]
    labels, z = run_logits(one, "test")
    np.testing.assert_array_equal(labels, y)
    np.testing.assert_allclose(z, cosine_head_logits(f, head, 25.0, "tte"), rtol=1e-6)
    listed = {"method": "adaptformer_la_tte", "seed": 0, "out": str(tmp_path / "job"),
              "members": [str(ft)]}
    assert main(["combine", "--runs", json.dumps([listed])]) == 0
    np.testing.assert_array_equal(run_logits(tmp_path / "job", "test")[1], z)
    capsys.readouterr()
    assert main(["combine", "--runs", json.dumps([{**listed, "seed": 1, "out": str(
        tmp_path / "job1")}])]) == EXIT_USER_ERROR
    assert "members make an ensemble of seed 0, the run list says seed 1" in \
        capsys.readouterr().err
    other = _fake_finetuning(ft.parent / "seed1000", 1000)
    assert main(["combine", "--method", "adaptformer_la_tte", "--out", str(tmp_path / "two"),
                 "--members", str(ft), str(other)]) == EXIT_USER_ERROR
    assert "member seeds [0, 1000] do not follow seed_offsets [0]" in capsys.readouterr().err
    assert not (tmp_path / "two").exists() and not (tmp_path / "job1").exists()
