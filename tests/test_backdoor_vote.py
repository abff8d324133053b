"""The vote control (lt_bench/methods/backdoor_vote.py) as an ordinary ensemble run: its
decisions are the members' majority vote with the logit sum breaking ties, computed here
by hand, and its logits a distribution."""

from __future__ import annotations

import numpy as np
import pytest
from synth_runs import FAST, make_features_dir

from lt_bench.cli import main
from lt_bench.io import read_json
from lt_bench.methods import METHODS
from lt_bench.runs import run_logits, train_run

COUNTS = np.array([120, 60, 30, 15, 8, 4])


def vote_by_hand(zs: list[np.ndarray]) -> np.ndarray:
    """Per row: the class most members pick; among tied classes the larger logit sum."""
    total = np.sum([z.astype(np.float64) for z in zs], axis=0)
    out = []
    for i in range(len(total)):
        counts = np.bincount([int(z[i].argmax()) for z in zs], minlength=total.shape[1])
        tied = np.flatnonzero(counts == counts.max())
        out.append(int(tied[np.argmax(total[i, tied])]))
    return np.array(out)


def test_hand_worked_rows():
    vote = METHODS.get("backdoor_vote")
    # row 0: two members pick class 0, one (very sure) picks 1: the vote says 0, the sum 1
    # row 1: one vote each for 0, 1 and 2: the logit sum (1, 2.5, 2) decides
    z1 = np.array([[2.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    z2 = np.array([[1.0, 0.5, 0.0], [0.0, 2.5, 0.0]])
    z3 = np.array([[0.0, 9.0, 0.0], [0.0, 0.0, 2.0]])
    out = vote.combine([z1, z2, z3], {"rule": "vote"})
    assert (z1 + z2 + z3).argmax(1).tolist() == [1, 1]
    assert out.argmax(1).tolist() == [0, 1] == vote_by_hand([z1, z2, z3]).tolist()
    np.testing.assert_allclose(np.exp(out).sum(1), 1.0)  # a distribution
    assert np.isfinite(out).all()  # classes without a vote too


@pytest.fixture(scope="module")
def members(tmp_path_factory):
    root = tmp_path_factory.mktemp("vote")
    runs = []
    for i in range(3):
        fd = make_features_dir(root / "features", backbone=f"bb{i}", view_seed=i)
        out = root / "runs" / f"bb{i}" / "la" / "seed0"
        train_run("la", fd, out, seed=0, hparams=FAST)
        runs.append(out)
    return runs


def test_vote_run_through_the_cli(members, tmp_path):
    out = tmp_path / "ensemble" / "backdoor_vote" / "seed0"
    assert main(["combine", "--method", "backdoor_vote", "--members", *map(str, members),
                 "--out", str(out)]) == 0
    m = read_json(out / "metrics.json")
    labels, z = run_logits(out, "test")  # the seam rebuilds it from predictor.json
    member = [run_logits(r, "test")[1] for r in members]
    want = vote_by_hand(member)
    np.testing.assert_array_equal(z.argmax(1), want)
    assert m["top1"] == pytest.approx(float((want == labels).mean()))
    # one member's vote is its own argmax: the M = 1 ablation is the members' mean top-1
    assert m["m1_top1"] == pytest.approx(np.mean([read_json(r / "metrics.json")["top1"]
                                                  for r in members]))
    assert (m["method"], m["backbone"], m["seed"]) == ("backdoor_vote", "ensemble", 0)
    assert read_json(out / "predictor.json")["method"] == "backdoor_vote"
    assert m["n_trainable_params"] == sum(read_json(r / "metrics.json")["n_trainable_params"]
                                          for r in members)
