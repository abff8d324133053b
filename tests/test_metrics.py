"""Metrics against hand-worked cases."""

import math

import numpy as np
import pytest

from lt_bench.metrics import (
    d_groups,
    evaluate,
    expected_calibration_error,
    macro_f1,
    p_groups,
    per_class_accuracy,
)


def test_d_group_edges_at_20_and_100():
    counts = np.array([19, 20, 21, 99, 100, 101, 5, 1280])
    assert d_groups(counts).tolist() == [
        "few", "medium", "medium", "medium", "medium", "many", "few", "many"]


def test_p_groups_thirds_by_prior_top_third_is_many():
    prior = np.array([0.05, 0.4, 0.1, 0.2, 0.15, 0.1])
    # order by -prior (stable): 1 (0.4), 3 (0.2), 4 (0.15), 2 (0.1), 5 (0.1), 0 (0.05)
    assert p_groups(prior).tolist() == ["p_few", "p_many", "p_medium", "p_many", "p_medium",
                                        "p_few"]


def test_per_class_accuracy_and_absent_class_is_nan():
    labels = np.array([0, 0, 1, 1, 1, 2])
    pred = np.array([0, 1, 1, 1, 0, 0])
    acc = per_class_accuracy(pred, labels, 4)
    assert acc[:3] == pytest.approx([0.5, 2 / 3, 0.0])
    assert math.isnan(acc[3])


def test_macro_f1_hand_worked():
    labels = np.array([0, 0, 1, 1])
    pred = np.array([0, 1, 1, 1])
    # class 0: tp 1 fp 0 fn 1 -> 2/3 ; class 1: tp 2 fp 1 fn 0 -> 4/5
    assert macro_f1(pred, labels, 2) == pytest.approx((2 / 3 + 4 / 5) / 2)


def test_ece_hand_worked_two_bins():
    probs = np.array([[0.9, 0.1], [0.9, 0.1], [0.3, 0.7], [0.4, 0.6]])
    labels = np.array([0, 1, 1, 0])
    # with 2 bins: (0.5,1.0] holds all 4: confidences 0.9 0.9 0.7 0.6 (mean 0.775),
    # correct 1 0 1 0 (mean 0.5) -> ECE = |0.5 - 0.775| = 0.275
    assert expected_calibration_error(probs, labels, n_bins=2) == pytest.approx(0.275)
    # with 10 bins: bin (0.8,0.9]: conf 0.9 acc .5 (w .5) ; (0.6,0.7]: 0.7, acc 1 (w .25);
    # (0.5,0.6]: 0.6, acc 0 (w .25) -> .5*.4 + .25*.3 + .25*.6 = 0.425
    assert expected_calibration_error(probs, labels, n_bins=10) == pytest.approx(0.425)


def test_evaluate_groups_are_means_of_class_accuracies():
    # 4 classes: train counts many, medium, few, few
    counts = np.array([200, 50, 10, 3])
    labels = np.array([0, 0, 1, 1, 2, 2, 2, 2, 3, 3])
    pred = np.array([0, 0, 1, 0, 2, 0, 0, 0, 3, 3])
    logits = np.full((10, 4), -5.0)
    logits[np.arange(10), pred] = 5.0
    m, per_class = evaluate(logits, labels, counts)
    assert m["top1"] == pytest.approx(6 / 10)
    assert m["many"] == pytest.approx(1.0)
    assert m["medium"] == pytest.approx(0.5)
    assert m["few"] == pytest.approx((0.25 + 1.0) / 2)  # not the pooled 3/6
    assert m["worst_class"] == pytest.approx(0.25)
    accs = [1.0, 0.5, 0.25, 1.0]
    assert m["hmean"] == pytest.approx(4 / sum(1 / a for a in accs))
    assert m["gmean"] == pytest.approx(np.prod(accs) ** 0.25)
    assert m["n_many_classes"] == 1 and m["n_few_classes"] == 2
    assert "p_many" not in m
    assert per_class["accuracy"].tolist() == pytest.approx(accs)


def test_evaluate_with_prior_gives_p_groups_and_dxp():
    counts = np.array([200, 50, 10])
    prior = np.array([0.1, 0.3, 0.6])  # class 2 is P-many, class 0 P-few
    labels = np.array([0, 1, 2])
    logits = np.eye(3)[[0, 0, 2]]  # class 1 wrong
    m, _ = evaluate(logits, labels, counts, prior=prior)
    assert m["p_many"] == 1.0 and m["p_medium"] == 0.0 and m["p_few"] == 1.0
    assert m["dp_few_p_many"] == 1.0
    assert m["dp_medium_p_medium"] == 0.0
    assert m["dp_many_p_few"] == 1.0
    assert m["dp_many_p_many"] is None and m["n_dp_many_p_many_classes"] == 0


def test_hmean_gmean_zero_when_a_class_is_never_right():
    m, _ = evaluate(np.eye(2)[[0, 0]], np.array([0, 1]), np.array([5, 5]))
    assert m["hmean"] == 0.0 and m["gmean"] == 0.0 and m["worst_class"] == 0.0


def test_train_counts_must_match_classes():
    with pytest.raises(ValueError, match="train counts cover 3 classes, logits have 2"):
        evaluate(np.zeros((2, 2)), np.array([0, 1]), np.array([1, 2, 3]))
