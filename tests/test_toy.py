"""The toy world's dataset: files on disk like a real dataset, the LT profile, names."""

import numpy as np
import pytest
from PIL import Image

from lt_bench.backbones.toy_pretrain import pretrain_prior
from lt_bench.data import get_dataset
from lt_bench.data.splits import read_classnames, read_split
from lt_bench.data.toy import class_names, exponential_profile, long_tailed_counts, render


def test_exponential_profile_hand_values():
    # LIFT's int(max * IR^(-i/(K-1))): 500 -> 5 over 100 classes
    p = exponential_profile(100, 500, 100)
    assert p[0] == 500 and p[-1] == 5
    assert p[50] == int(500 * 100 ** (-50 / 99))
    assert (np.diff(p) <= 0).all()


def test_long_tailed_counts_are_a_permutation_of_the_profile():
    c = long_tailed_counts(20, 100, 10, order_seed=3)
    assert sorted(c.tolist()) == sorted(exponential_profile(20, 100, 10).tolist())
    assert c.tolist() != sorted(c.tolist(), reverse=True)  # shuffled class order


def test_class_names_read_as_text_and_are_unique():
    names = class_names(100)
    assert len(set(names)) == 100
    assert all(len(n.split()) == 3 for n in names)
    assert "red striped circle" in names


def test_render_is_deterministic_and_depends_on_class():
    a = render(np.array([0, 1]), np.random.default_rng(0), 10)
    b = render(np.array([0, 1]), np.random.default_rng(0), 10)
    assert a.shape == (2, 32, 32, 3) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, b)


def test_pretraining_priors_differ_between_backbones_and_sum_to_one():
    p0, p1 = pretrain_prior(30, 0, 100), pretrain_prior(30, 1, 100)
    assert p0.sum() == pytest.approx(1) and p1.sum() == pytest.approx(1)
    assert p0.max() / p0.min() == pytest.approx(100)
    assert np.argmax(p0) != np.argmax(p1)


def test_prepare_writes_a_dataset_like_a_real_one(tmp_path):
    ds = get_dataset("toy", num_classes=6, max_per_class=20, imbalance=10, val_per_class=2,
                     test_per_class=3, seed=1)
    ds.prepare(tmp_path)
    paths, labels = read_split(tmp_path / "train.txt")
    counts = np.bincount(labels, minlength=6)
    assert counts.tolist() == ds.train_counts().tolist()
    assert counts.max() == 20 and counts.min() == 2
    for split, per in (("val", 2), ("test", 3)):
        _, lab = read_split(tmp_path / f"{split}.txt")
        assert np.bincount(lab).tolist() == [per] * 6
    assert read_classnames(tmp_path / "classnames.txt") == class_names(6)
    with Image.open(tmp_path / paths[0]) as im:
        assert im.size == (32, 32) and im.mode == "RGB"


def test_unknown_toy_parameter_is_named():
    with pytest.raises(ValueError, match=r"unknown toy dataset parameter\(s\) \['num_class'\]"):
        get_dataset("toy", num_class=3)
