"""The head's hand-written SGD (lt_bench/methods/_heads.py: HeadSGD, cosine_lr) follows
torch.optim.SGD + CosineAnnealingLR step for step (it exists only to keep torch._dynamo's
import out of every job's start-up)."""

from __future__ import annotations

import math

import pytest
import torch

from lt_bench.methods._heads import HeadSGD, cosine_lr


@pytest.mark.parametrize("momentum,wd", [(0.9, 5e-4), (0.0, 0.0), (0.9, 0.0)])
def test_head_sgd_matches_torch_sgd_with_cosine_annealing(momentum, wd):
    g = torch.Generator().manual_seed(0)
    w0 = torch.randn(7, 5, generator=g, dtype=torch.float64)
    grads = [torch.randn(7, 5, generator=g, dtype=torch.float64) for _ in range(12)]
    ref = torch.nn.Parameter(w0.clone())
    opt = torch.optim.SGD([ref], lr=0.1, momentum=momentum, weight_decay=wd)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=12)
    ours = torch.nn.Parameter(w0.clone())
    head_sgd = HeadSGD(ours, momentum=momentum, weight_decay=wd)
    for t, grad in enumerate(grads):
        assert cosine_lr(0.1, t, 12) == pytest.approx(sched.get_last_lr()[0], rel=1e-12)
        ref.grad = grad.clone()
        opt.step()
        sched.step()
        ours.grad = grad.clone()
        head_sgd.step(cosine_lr(0.1, t, 12))
        torch.testing.assert_close(ours.detach(), ref.detach(), rtol=1e-12, atol=1e-12)


def test_cosine_lr_hand_worked():
    assert cosine_lr(0.01, 0, 10) == 0.01
    assert cosine_lr(0.01, 5, 10) == pytest.approx(0.005)
    assert cosine_lr(0.01, 10, 10) == pytest.approx(0.0, abs=1e-18)
    assert cosine_lr(1.0, 1, 4) == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)))
