"""The backdoor ensemble: logits = sum of the members' `lt-bench logits`, the M-ablation,
the gain over members, and errors that name both runs for members that don't line up."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from scipy.special import logsumexp
from synth_runs import FAST, make_features_dir, make_prior

from lt_bench.cli import main
from lt_bench.io import read_json
from lt_bench.methods._combine import combine
from lt_bench.metrics import evaluate
from lt_bench.runs import read_logits, run_logits, train_run
from lt_bench.runs.ensemble import ensemble_run

PRIORS = [np.array([0.4, 0.05, 0.2, 0.1, 0.15, 0.1]), np.array([0.1, 0.1, 0.1, 0.2, 0.2, 0.3]),
          np.array([1, 2, 3, 4, 5, 6.0])]


@pytest.fixture(scope="module")
def members(tmp_path_factory):
    root = tmp_path_factory.mktemp("backdoor")
    runs = []
    for i in range(3):
        fd = make_features_dir(root / "features", backbone=f"bb{i}", view_seed=i)
        prior = make_prior(root / "prior" / f"bb{i}.parquet", PRIORS[i])
        out = root / "runs" / f"bb{i}" / "la" / "seed0"
        train_run("la", fd, out, seed=0, hparams=FAST, prior=prior)
        runs.append(out)
    return root, runs


def _cli_logits(run, path, split="test"):
    assert main(["logits", str(run), "--split", split, "--out", str(path)]) == 0
    return read_logits(path)


def test_backdoor_logits_are_the_sum_of_member_logits(members, tmp_path):
    root, runs = members
    out = tmp_path / "ensemble" / "backdoor" / "seed0"
    assert main(["combine", "--method", "backdoor", "--members", *map(str, runs),
                 "--out", str(out)]) == 0
    labels, z = _cli_logits(out, tmp_path / "ens.parquet")
    member = [_cli_logits(r, tmp_path / f"m{i}.parquet") for i, r in enumerate(runs)]
    for y, _ in member:
        np.testing.assert_array_equal(y, labels)
    np.testing.assert_allclose(z, sum(zm for _, zm in member), rtol=1e-5, atol=1e-4)
    # and on val, where val_top1 comes from
    yv, zv = _cli_logits(out, tmp_path / "ens_val.parquet", "val")
    assert read_json(out / "metrics.json")["val_top1"] == pytest.approx(
        (zv.argmax(1) == yv).mean())
    assert read_json(out / "predictor.json")["kind"] == "ensemble"


def test_backdoor_metrics_m_ablation_and_gain(members, tmp_path):
    root, runs = members
    out = tmp_path / "bd"
    m = ensemble_run(runs, out)
    labels = run_logits(runs[0], "test")[0]
    zs = [run_logits(r, "test")[1] for r in runs]
    counts = np.array([120, 60, 30, 15, 8, 4])
    member_top1 = [read_json(r / "metrics.json")["top1"] for r in runs]
    assert m["m1_top1"] == pytest.approx(np.mean(member_top1))
    pair_top1 = [evaluate(zs[a] + zs[b], labels, counts)[0]["top1"]
                 for a, b in itertools.combinations(range(3), 2)]
    assert m["m2_top1"] == pytest.approx(np.mean(pair_top1))
    assert m["m3_top1"] == pytest.approx(m["top1"])
    assert [m[f"m{i}_n_subsets"] for i in (1, 2, 3)] == [3, 3, 1]
    for key in ("many", "medium", "few"):
        assert m[f"m3_{key}"] == pytest.approx(m[key])
        assert f"m1_{key}" in m and f"m2_{key}" in m
    assert m["best_member_top1"] == pytest.approx(max(member_top1))
    assert m["gain_top1"] == pytest.approx(m["top1"] - max(member_top1))
    # the best members by index into predictor.json's members: on val, and the test oracle
    spec = read_json(out / "predictor.json")
    val_top1 = [read_json(r / "metrics.json")["val_top1"] for r in runs]
    assert m["best_member"] == {"val": int(np.argmax(val_top1)),
                                "test": int(np.argmax(member_top1))}
    assert spec["members"][m["best_member"]["test"]] == str(runs[int(np.argmax(member_top1))])
    assert m["val_best_member_top1"] == member_top1[m["best_member"]["val"]]
    assert m["method"] == "backdoor" and m["backbone"] == "ensemble" and m["seed"] == 0
    assert m["n_members"] == 3
    # P-groups from the members' mean q̂
    q = np.mean([p / p.sum() for p in PRIORS], axis=0)
    assert m["p_many"] == pytest.approx(evaluate(sum(zs), labels, counts, q)[0]["p_many"])
    cfg = read_json(out / "config.json")
    assert [x["run_dir"] for x in cfg["members"]] == [str(r) for r in runs]
    assert cfg["hparams"] == {"rule": "sum", "members": "la"}
    assert (out / "per_class.parquet").is_file()


def test_prob_mean_variant(members, tmp_path):
    _, runs = members
    out = tmp_path / "pm"
    ensemble_run(runs, out, hparams={"rule": "prob_mean"})
    zs = np.stack([run_logits(r, "test")[1].astype(np.float64) for r in runs])
    logp = zs - logsumexp(zs, axis=2, keepdims=True)
    expected = np.log(np.exp(logp).mean(0))
    np.testing.assert_allclose(run_logits(out, "test")[1], expected, rtol=1e-4, atol=1e-5)
    assert combine([zs[0]], "prob_mean").argmax(1).tolist() == zs[0].argmax(1).tolist()


def test_mismatched_class_sets_error_names_both(members, tmp_path):
    _, runs = members
    fd = make_features_dir(tmp_path / "f", backbone="odd", counts=(120, 60, 30, 15, 8))
    odd = tmp_path / "odd_la"
    train_run("la", fd, odd, 0, hparams=FAST)
    with pytest.raises(ValueError, match="differ in num_classes: 6 vs 5") as e:
        ensemble_run([runs[0], odd], tmp_path / "x")
    assert str(runs[0]) in str(e.value) and str(odd) in str(e.value)


def test_class_names_differ_where_runs_record_them(members, tmp_path):
    """Runs that record ``classnames_sha256`` in config.json are compared on it (a run
    folder copied here and given another class-name hash: same count, other classes)."""
    import shutil

    from lt_bench.io import write_json

    _, runs = members
    assert "classnames_sha256" not in read_json(runs[0] / "config.json")  # train_run: not yet

    def renamed(run, h):
        shutil.copytree(run, tmp_path / h[:4])
        cfg = read_json(run / "config.json")
        write_json(tmp_path / h[:4] / "config.json", {**cfg, "classnames_sha256": h})
        return tmp_path / h[:4]

    a, b = renamed(runs[1], "a" * 64), renamed(runs[2], "b" * 64)
    ensemble_run([runs[0], b], tmp_path / "ok")  # one side unrecorded: nothing to compare
    with pytest.raises(ValueError, match="different class sets") as e:
        ensemble_run([a, b], tmp_path / "x")
    assert str(a) in str(e.value) and str(b) in str(e.value) and "aaaaaaaaaaaa" in str(e.value)


def test_mismatched_row_order_error_names_both(members, tmp_path):
    _, runs = members
    fd = make_features_dir(tmp_path / "f", backbone="perm", permute_test=True)
    perm = tmp_path / "perm_la"
    train_run("la", fd, perm, 0, hparams=FAST)
    with pytest.raises(ValueError, match="different test rows") as e:
        ensemble_run([runs[1], perm], tmp_path / "x")
    assert str(runs[1]) in str(e.value) and str(perm) in str(e.value)
    # the CLI reports it as an error, exit status 2
    assert main(["combine", "--method", "backdoor", "--members", str(runs[1]), str(perm),
                 "--out", str(tmp_path / "y")]) == 2


def test_unfinished_member_and_single_member(members, tmp_path):
    _, runs = members
    with pytest.raises(ValueError, match="at least two"):
        ensemble_run([runs[0]], tmp_path / "x")
    with pytest.raises(FileNotFoundError, match="not a finished run"):
        ensemble_run([runs[0], tmp_path / "nothing"], tmp_path / "x")


def test_backdoor_is_listed_and_not_trainable(members, tmp_path, capsys):
    assert main(["list", "methods"]) == 0
    assert "backdoor" in capsys.readouterr().out
    root, _ = members
    rc = main(["fit", "--method", "backdoor", "--features-dir",
               str(root / "features" / "toy" / "bb0"), "--out", str(tmp_path / "t")])
    assert rc == 2
    assert "--members RUN_DIR" in capsys.readouterr().err
