"""Each loss of the grid on a hand-worked 3-class case: its value and gradient direction."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lt_bench.methods import get_method
from lt_bench.methods._base import FitContext
from lt_bench.methods._losses import (
    class_balanced_weights,
    focal_loss,
    inverse_frequency_weights,
    lade_regulariser,
    ldam_loss,
    ldam_margins,
    weighted_ce,
)

Z = [2.0, 0.0, -1.0]  # logits of one sample, true class 0
COUNTS = np.array([100, 10, 1])


def _softmax(z):
    e = [math.exp(v) for v in z]
    return [v / sum(e) for v in e]


def _ce(z, y):
    return -math.log(_softmax(z)[y])


def _t(z):
    return torch.tensor([z], dtype=torch.float64, requires_grad=True)


Y0 = torch.tensor([0])


def _grad(loss, z):
    loss.backward()
    return z.grad[0].numpy()


def _assert_ce_like_gradient(g, y=0):
    """Raising the true logit lowers the loss, raising any other raises it."""
    assert g[y] < 0
    assert all(g[j] > 0 for j in range(len(g)) if j != y)


def _ctx(counts=COUNTS, prior=None):
    """A FitContext with only what ``setup`` reads (train counts, prior)."""
    return FitContext(train=None, val=None, text=None,  # type: ignore[arg-type]
                      train_counts=np.asarray(counts), seed=0, pretrain_prior=prior)


def test_softmax_reference_numbers():
    # p = e^2, e^0, e^-1 over their sum: 7.389056 + 1 + 0.367879 = 8.756935
    p = _softmax(Z)
    assert p[0] == pytest.approx(7.389056 / 8.756935, rel=1e-6)
    assert _ce(Z, 0) == pytest.approx(math.log(8.756935) - 2, rel=1e-6)


def test_focal_value_and_gradient():
    z = _t(Z)
    loss = focal_loss(z, Y0, gamma=2.0)
    p0 = 7.389056 / 8.756935  # 0.843795
    expected = -((1 - p0) ** 2) * math.log(p0)  # 0.15621² · 0.16984 = 0.0041444
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    assert loss.item() == pytest.approx(0.0041444, rel=1e-3)
    _assert_ce_like_gradient(_grad(loss, z))
    # gamma = 0 is plain CE; focal down-weights the easy sample
    assert focal_loss(_t(Z), Y0, 0.0).item() == pytest.approx(_ce(Z, 0), rel=1e-9)
    assert expected < _ce(Z, 0)


def test_focal_method_uses_gamma():
    m = get_method("focal", gamma=1.0)
    z = _t(Z)
    p0 = _softmax(Z)[0]
    assert m.loss(z, Y0, 0).item() == pytest.approx(-(1 - p0) * math.log(p0), rel=1e-6)


def test_ldam_margins():
    # n^-1/4: 100 -> 0.316228, 10 -> 0.562341, 1 -> 1; scaled so the largest is 0.5
    m = ldam_margins(COUNTS, max_margin=0.5)
    np.testing.assert_allclose(m, [0.158114, 0.281171, 0.5], rtol=1e-5)
    assert ldam_margins([5, 5], 0.3).tolist() == pytest.approx([0.3, 0.3])


def test_ldam_value_and_gradient():
    s = 10.0
    margins = torch.tensor(ldam_margins(COUNTS), dtype=torch.float64)
    for y, z_list in ((0, Z), (2, [0.5, 0.0, 1.0])):
        z = _t(z_list)
        loss = ldam_loss(z, torch.tensor([y]), margins, scale=s)
        adj = list(z_list)
        adj[y] -= s * float(margins[y])  # e.g. class 2: 1 - 10 · 0.5 = -4
        assert loss.item() == pytest.approx(_ce(adj, y), rel=1e-9)
        assert loss.item() > _ce(z_list, y)  # the margin makes the true class harder
        _assert_ce_like_gradient(_grad(loss, z), y)


def test_ldam_drw_switches_weights_on():
    m = get_method("ldam", drw_epoch=1, scale=10.0)
    m.setup(_ctx())
    z = torch.tensor([Z, [0.5, 0.0, 1.0]], dtype=torch.float64)
    y = torch.tensor([0, 2])
    plain = ldam_loss(z, y, m.margins.double(), 10.0)
    assert m.loss(z, y, 0).item() == pytest.approx(plain.item())
    w = class_balanced_weights(COUNTS, 0.9999)
    per = [_ce([2 - 10 * 0.158114, 0, -1], 0), _ce([0.5, 0, 1 - 10 * 0.5], 2)]
    # LIFT's reduction (F.cross_entropy(weight=)): divided by the batch's Σ w_y
    assert m.loss(z, y, 1).item() == pytest.approx((w[0] * per[0] + w[2] * per[1]) / (w[0] + w[2]),
                                               rel=1e-4)


def test_class_balanced_weights():
    b = 0.9999
    raw = [(1 - b) / (1 - b**n) for n in (100, 10, 1)]  # ≈ 1/n: 0.010049, 0.100045, 1
    np.testing.assert_allclose(raw, [0.0100495, 0.1000450, 1.0], rtol=1e-5)
    w = class_balanced_weights(COUNTS, b)
    np.testing.assert_allclose(w, np.array(raw) / np.mean(raw), rtol=1e-9)
    assert w.mean() == pytest.approx(1.0)
    assert w[0] < w[1] < w[2]
    np.testing.assert_allclose(class_balanced_weights(COUNTS, 0.0), 1.0)  # β = 0: plain CE


def test_inverse_frequency_weights():
    # π ∝ (100, 10, 1): 1/π ∝ (1, 10, 100) / 111 · 3
    np.testing.assert_allclose(inverse_frequency_weights(COUNTS),
                               [3 / 111, 30 / 111, 300 / 111], rtol=1e-9)
    np.testing.assert_allclose(inverse_frequency_weights(COUNTS, exponent=0.0), 1.0)
    w = inverse_frequency_weights(COUNTS, exponent=0.5)
    assert w.mean() == pytest.approx(1.0) and w[0] < w[1] < w[2]


@pytest.mark.parametrize("method,weights", [
    ("cb", lambda: class_balanced_weights(COUNTS, 0.9999)),
    ("grw", lambda: inverse_frequency_weights(COUNTS, 1.0)),
])
def test_weighted_methods_value_and_gradient(method, weights):
    m = get_method(method)
    m.setup(_ctx())
    w = weights()
    z = torch.tensor([Z, [0.5, 0.0, 1.0]], dtype=torch.float64, requires_grad=True)
    y = torch.tensor([0, 2])
    loss = m.loss(z, y, 0)
    assert loss.item() == pytest.approx(
        (w[0] * _ce(Z, 0) + w[2] * _ce([0.5, 0, 1], 2)) / (w[0] + w[2]), rel=1e-5)
    loss.backward()
    _assert_ce_like_gradient(z.grad[0].numpy(), 0)
    _assert_ce_like_gradient(z.grad[1].numpy(), 2)
    # the rare class's sample pulls harder than the frequent one's
    assert abs(z.grad[1, 2]) > abs(z.grad[0, 0])


def test_weighted_ce_is_normalised_by_the_batch_weights_like_lift():
    # one sample: the weight cancels (w·CE / w)
    z = torch.tensor([Z], dtype=torch.float64)
    w = torch.tensor([2.0, 1.0, 1.0], dtype=torch.float64)
    assert weighted_ce(z, Y0, w).item() == pytest.approx(_ce(Z, 0))
    assert weighted_ce(z, Y0).item() == pytest.approx(_ce(Z, 0))
    # a 3-class, 3-sample hand-worked case: (2·CE_0 + 1·CE_1 + 3·CE_2) / (2 + 1 + 3)
    zz = [[2.0, 0.0, -1.0], [0.0, 1.0, 0.0], [0.5, 0.5, 2.0]]
    yy = torch.tensor([0, 1, 2])
    w3 = torch.tensor([2.0, 1.0, 3.0], dtype=torch.float64)
    want = (2 * _ce(zz[0], 0) + 1 * _ce(zz[1], 1) + 3 * _ce(zz[2], 2)) / 6
    got = weighted_ce(torch.tensor(zz, dtype=torch.float64), yy, w3).item()
    assert got == pytest.approx(want, rel=1e-12)
    ref = torch.nn.functional.cross_entropy(torch.tensor(zz, dtype=torch.float64), yy, weight=w3)
    assert got == pytest.approx(ref.item(), rel=1e-12)


@pytest.mark.parametrize("method,tau", [("la", 1.0), ("la", 0.5), ("bs", 1.0)])
def test_logit_adjusted_value_and_gradient(method, tau):
    m = get_method(method, **({"tau": tau} if method == "la" else {}))
    m.setup(_ctx())
    z = _t(Z)
    loss = m.loss(z, Y0, 0)
    log_pi = [math.log(n / 111) for n in (100, 10, 1)]
    assert loss.item() == pytest.approx(_ce([a + tau * b for a, b in zip(Z, log_pi, strict=True)], 0),
                                        rel=1e-6)
    _assert_ce_like_gradient(_grad(loss, z))


def test_bs_has_no_tau():
    with pytest.raises(ValueError, match="unknown hyper-parameter"):
        get_method("bs", tau=0.5)


def test_gla_train_loss_uses_both_priors():
    q = np.array([0.2, 0.5, 0.3])
    m = get_method("gla_train")
    m.setup(_ctx(prior=q))
    z = _t(Z)
    loss = m.loss(z, Y0, 0)
    adj = [v + math.log(n / 111) + math.log(qq) for v, n, qq in zip(Z, (100, 10, 1), q, strict=True)]
    assert loss.item() == pytest.approx(_ce(adj, 0), rel=1e-6)
    _assert_ce_like_gradient(_grad(loss, z))
    with pytest.raises(ValueError, match="prior"):
        get_method("gla_train").setup(_ctx())


def _lade_reference(z: np.ndarray, y: np.ndarray, prior: np.ndarray, lam: float) -> float:
    """LADE regulariser re-computed from Hong et al. (2021), Eq. 12, class by class."""
    n, k = z.shape
    total = 0.0
    for c in range(k):
        rows = [i for i in range(n) if y[i] == c]
        first = sum(z[i, c] for i in rows) / len(rows) if rows else 0.0
        # log of the mean over the batch of exp(z_ic) · (1/K) / π_c
        second = math.log(sum(math.exp(z[i, c]) / k / prior[c] for i in range(n)) / n)
        total += prior[c] * (first - second - lam * second**2)
    return -total


def test_lade_regulariser_matches_its_formula():
    rng = np.random.default_rng(0)
    z = rng.normal(0, 2, (7, 3))
    y = np.array([0, 0, 1, 0, 1, 0, 0])  # class 2 absent from the batch
    prior = COUNTS / COUNTS.sum()
    got = lade_regulariser(torch.tensor(z), torch.tensor(y), torch.tensor(prior), 0.1)
    assert got.item() == pytest.approx(_lade_reference(z, y, prior, 0.1), rel=1e-6)
    got0 = lade_regulariser(torch.tensor(z), torch.tensor(y), torch.tensor(prior), 0.0)
    assert got0.item() == pytest.approx(_lade_reference(z, y, prior, 0.0), rel=1e-6)


def test_lade_loss_value_and_gradient():
    m = get_method("lade", alpha=0.1, remine_lambda=0.1)
    m.setup(_ctx())
    z = _t(Z)
    loss = m.loss(z, Y0, 0)
    prior = COUNTS / COUNTS.sum()
    ce = _ce([v + math.log(p) for v, p in zip(Z, prior, strict=True)], 0)
    assert loss.item() == pytest.approx(
        ce + 0.1 * _lade_reference(np.array([Z]), np.array([0]), prior, 0.1), rel=1e-5)
    # gradient: autograd against central differences of the reference formula
    def ref(v):
        return (_ce([a + math.log(p) for a, p in zip(v, prior, strict=True)], 0)
                + 0.1 * _lade_reference(np.array([v]), np.array([0]), prior, 0.1))

    g = _grad(loss, z)
    h = 1e-6
    num = [(ref([v + h * (i == j) for j, v in enumerate(Z)])
            - ref([v - h * (i == j) for j, v in enumerate(Z)])) / (2 * h) for i in range(3)]
    np.testing.assert_allclose(g, num, rtol=1e-4, atol=1e-7)
    # a misclassified sample: the loss pushes the true logit up and the winner down
    z = _t([-1.0, 0.0, 2.0])
    g = _grad(m.loss(z, Y0, 0), z)
    assert g[0] < 0 and g[2] > 0


def test_focal_gradient_smaller_than_ce_on_easy_sample():
    z1, z2 = _t(Z), _t(Z)
    g_focal = _grad(focal_loss(z1, Y0, 2.0), z1)
    g_ce = _grad(torch.nn.functional.cross_entropy(z2, Y0), z2)
    assert abs(g_focal[0]) < abs(g_ce[0])
