"""cRT as classifier-balancing's ``cls_crt.yaml`` on LIFT's head (docs/protocol.md, cRT rows):
the re-initialised classifier starts at LIFT's unit-norm random rows, the class-aware
sampler's epoch is ``max_c n_c × K`` draws cycling ``num_samples_cls`` images a class."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file
from synth_runs import TRAIN_COUNTS, make_features_dir

from lt_bench.io import read_json
from lt_bench.methods._heads import ClassAwareSampler, HeadSGD, cosine_head
from lt_bench.runs import train_run


@pytest.fixture(scope="module")
def fd(tmp_path_factory):
    return make_features_dir(tmp_path_factory.mktemp("crt"))


def test_crt_starts_from_unit_norm_rows_like_lifts_random_init(fd, tmp_path):
    """LIFT models/classifiers.py: ``uniform_(-1, 1).renorm_(2, 0, 1e-5).mul_(1e5)``: every
    row of norm 1. With lr ~ 0 the saved head is the init."""
    out = tmp_path / "crt"
    m = train_run("crt", fd, out, seed=3,
                  hparams={"lr": 1e-12, "epochs": 1, "weight_decay": 0.0})
    w = load_file(str(out / "predictor.safetensors"))["term0.weight"].astype(np.float64)
    np.testing.assert_allclose(np.linalg.norm(w, axis=1), 1.0, rtol=1e-6)
    # the directions are U(-1, 1) rows of the run's seed, normalised
    u = np.random.default_rng(3).uniform(-1, 1, w.shape)
    np.testing.assert_allclose(w, u / np.linalg.norm(u, axis=1, keepdims=True), atol=1e-6)
    # LIFT's own expression gives the same norms (an independent transcription in torch)
    lift = torch.empty(w.shape).uniform_(-1, 1).renorm_(2, 0, 1e-5).mul_(1e5)
    np.testing.assert_allclose(lift.norm(dim=1).numpy(), 1.0, rtol=1e-5)
    assert m["info"]["epoch_draws"] == max(TRAIN_COUNTS) * len(TRAIN_COUNTS)


def _angle(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    return np.arccos(np.clip(cos, -1, 1))


def _numpy_step(w, x, y, scale, lr, wd):
    """One SGD step of CE on ``s · cos(x, w_k)`` written out by hand: with ŵ = w/r,
    ∂L/∂ŵ_k = s/B Σ_i (p_ik − [y_i = k]) x̂_i and ∂L/∂w = (I − ŵŵᵀ) ∂L/∂ŵ / r; the first
    momentum step is the gradient plus wd·w."""
    r = np.linalg.norm(w, axis=1, keepdims=True)
    wh, xh = w / r, x / np.linalg.norm(x, axis=1, keepdims=True)
    z = scale * xh @ wh.T
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    p[np.arange(len(y)), y] -= 1
    g_hat = scale * p.T @ xh / len(y)
    g = (g_hat - (g_hat * wh).sum(1, keepdims=True) * wh) / r
    return w - lr * (g + wd * w)


def test_one_sgd_step_turns_short_rows_about_one_over_r_squared_further():
    """The old N(0, 0.01²) rows (norm r ≈ 0.01·√D ≈ 0.28 at D = 768) against the same
    directions at norm 1: the step turns a row by ≈ lr·|g⊥|/r with |g⊥| ∝ 1/r, so ≈ 1/r²
    ≈ 13× further; weight decay is parallel to w and turns nothing."""
    k, d, b = 20, 768, 128
    rng = np.random.default_rng(0)
    x = rng.normal(size=(b, d))
    y = rng.integers(0, k, b)
    short = rng.normal(0, 0.01, (k, d))
    unit = short / np.linalg.norm(short, axis=1, keepdims=True)
    turned = {}
    for name, w0 in (("short", short), ("unit", unit)):
        head = cosine_head(w0, 25.0)
        opt = HeadSGD(head.weight, momentum=0.9, weight_decay=5e-4)
        loss = torch.nn.functional.cross_entropy(head(torch.as_tensor(x, dtype=torch.float32)),
                                                 torch.as_tensor(y))
        loss.backward()
        opt.step(0.01)
        w1 = head.weight.detach().numpy().astype(np.float64)
        ref = _numpy_step(w0, x, y, 25.0, 0.01, 5e-4)
        np.testing.assert_allclose(w1, ref, rtol=1e-4, atol=1e-7)
        turned[name] = _angle(w0, w1)
    r = np.linalg.norm(short, axis=1)
    assert 0.26 < r.mean() < 0.30
    ratio = turned["short"] / turned["unit"]
    np.testing.assert_allclose(ratio, 1 / r**2, rtol=0.02)  # small angles: tan θ ≈ θ
    assert 12 < ratio.mean() < 14.5


def _tuples(order: np.ndarray, labels: np.ndarray, per: int) -> list[tuple[int, np.ndarray]]:
    out = []
    for i in range(0, len(order), per):
        chunk = order[i:i + per]
        cls = np.unique(labels[chunk])
        assert len(cls) == 1, f"tuple {chunk} mixes classes {cls}"
        out.append((int(cls[0]), chunk))
    return out


def test_class_aware_epoch_is_max_count_times_classes_cycling_four_a_class():
    """Counts (4, 2, 1): an epoch is 4 × 3 = 12 draws = 3 tuples of 4 images of one class;
    over 5 epochs the tuples' classes come in shuffled passes over the 3 classes, and each
    class's images in shuffled passes over its images (the cycles carry over epochs)."""
    labels = np.repeat([0, 1, 2], [4, 2, 1])
    s = ClassAwareSampler(labels, 4, np.random.default_rng(0))
    assert s.epoch_size == 12
    epochs = [s.epoch() for _ in range(5)]
    assert all(len(e) == 12 for e in epochs)
    tuples = [t for e in epochs for t in _tuples(e, labels, 4)]
    classes = [c for c, _ in tuples]
    for i in range(0, len(classes), 3):
        assert sorted(classes[i:i + 3]) == [0, 1, 2], classes
    for c, n_c in ((0, 4), (1, 2), (2, 1)):
        seq = np.concatenate([chunk for cc, chunk in tuples if cc == c])
        own = np.flatnonzero(labels == c)
        for i in range(0, len(seq), n_c):
            assert sorted(seq[i:i + n_c]) == own.tolist()
    # the passes are shuffled: not every epoch visits the classes in the same order
    assert len({tuple(classes[i:i + 3]) for i in range(0, len(classes), 3)}) > 1


class _Unshuffled:
    """A generator whose shuffles leave the order unchanged (the reference's
    ``RandomCycleIter(test_mode=True)``), so the draws are deterministic."""

    def permutation(self, x):
        return np.asarray(x)


def _reference_draws(labels, per, epochs):
    """classifier-balancing's ``class_aware_sample_generator`` written out sequentially,
    without shuffling: a class per tuple, the tuple drawn whole from the class's cycle,
    yielded until the epoch's ``max n_c × K`` draws; the cycles carry over epochs."""
    classes = sorted(set(labels.tolist()))
    own = {c: [i for i, y in enumerate(labels) if y == c] for c in classes}
    n = max(len(v) for v in own.values()) * len(classes)
    ci, pos = -1, {c: -1 for c in classes}
    out = []
    for _ in range(epochs):
        i = j = 0
        ep = []
        while i < n:
            if j >= per:
                j = 0
            if j == 0:
                ci = (ci + 1) % len(classes)
                c = classes[ci]
                tup = []
                for _ in range(per):
                    pos[c] = (pos[c] + 1) % len(own[c])
                    tup.append(own[c][pos[c]])
            ep.append(tup[j])
            i += 1
            j += 1
        out.append(ep)
    return out


@pytest.mark.parametrize("counts", [(5, 2, 1), (3, 3, 1, 2), (1, 1)])
def test_class_aware_epochs_equal_the_reference_generator_unshuffled(counts):
    """(5, 2, 1): 15 draws = 3 whole tuples and 3 of a fourth; the reference draws the
    fourth tuple whole, so that class's next tuple (next epoch) starts one image later."""
    labels = np.repeat(np.arange(len(counts)), counts)
    s = ClassAwareSampler(labels, 4, _Unshuffled())
    got = [s.epoch().tolist() for _ in range(4)]
    assert got == _reference_draws(labels, 4, 4)
    assert all(len(e) == max(counts) * len(counts) for e in got)


def test_crt_epoch_steps_follow_the_class_aware_epoch(fd, tmp_path):
    """max n_c × K draws an epoch in batches of 128: ceil(120·6 / 128) = 6 steps (the
    long-tailed split has 237 images: 2 steps with the instance sampler)."""
    m = train_run("crt", fd, tmp_path / "crt", seed=0, hparams={"epochs": 1})
    assert m["info"]["epoch_draws"] == 720 and m["info"]["steps_per_epoch"] == 6
    hist = read_json(tmp_path / "crt" / "history.json")
    assert len(hist) == 1 and np.isfinite(hist[0]["train_loss"])
