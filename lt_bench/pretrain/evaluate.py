"""The ground truths a toy CLIP is judged by (``pretrain.json``), on fresh balanced images
of its own world: zero-shot top-1 and ρ(per-class zero-shot accuracy, prior), GLA's q̂ and
ρ(q̂, prior), and ρ(probe, prior) — per-class accuracy of a linear probe on the frozen
image features against the pre-training prior: whether the inherited imbalance lives in
the representation (docs/architecture.md §5, "Two regimes").
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy.stats import spearmanr

from lt_bench.data.toy import CAPTION_TEMPLATES
from lt_bench.pretrain.model import render_tensor
from lt_bench.prior import estimate_prior


@torch.no_grad()
def _image_features(model, labels, rng, num_classes, image_size, regime) -> torch.Tensor:
    out = [model.encode_image(render_tensor(labels[i:i + 1024], rng, num_classes,
                                            image_size, regime))
           for i in range(0, len(labels), 1024)]
    return torch.cat(out)


def per_class_accuracy(pred: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    return (np.bincount(labels, weights=pred == labels, minlength=num_classes)
            / np.maximum(np.bincount(labels, minlength=num_classes), 1))


def linear_probe_accuracy(train_x: torch.Tensor, train_y: torch.Tensor,
                          test_x: torch.Tensor, test_y: torch.Tensor, num_classes: int,
                          weight_decay: float = 1e-3, max_iter: int = 200) -> np.ndarray:
    """Per-class test accuracy of a multinomial logistic probe on frozen features.

    Features are L2-normalised and standardised on the probe's train set; the probe is
    fitted to convergence with L-BFGS from zero (deterministic), as a linear-probe
    evaluation of a representation usually is (CLIP's paper uses L-BFGS logistic
    regression too).
    """
    def prep(x):
        return F.normalize(torch.as_tensor(x, dtype=torch.float64), dim=-1)

    xtr, xte = prep(train_x), prep(test_x)
    mu, sd = xtr.mean(0), xtr.std(0).clamp_min(1e-8)
    xtr, xte = (xtr - mu) / sd, (xte - mu) / sd
    ytr = torch.as_tensor(train_y, dtype=torch.long)
    w = torch.zeros(xtr.shape[1], num_classes, dtype=torch.float64, requires_grad=True)
    b = torch.zeros(num_classes, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=max_iter, history_size=20,
                            line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(xtr @ w + b, ytr) + weight_decay * (w * w).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    pred = (xte @ w + b).argmax(1).numpy()
    return per_class_accuracy(pred, np.asarray(test_y), num_classes)


def probe_vs_prior(train_x, train_y, test_x, test_y, prior: np.ndarray) -> dict[str, Any]:
    """Ground truth of representation imbalance: rho(per-class probe accuracy, prior)."""
    k = len(prior)
    acc = linear_probe_accuracy(train_x, train_y, test_x, test_y, k)
    return {"probe_top1": float(acc.mean()),
            "rho_probe_vs_prior": float(spearmanr(acc, prior).statistic),
            "probe_per_class_accuracy": acc.tolist()}


@torch.no_grad()
def evaluate(model, tokenizer, names, prior, per_class, probe_per_class, image_size,
             regime, rng) -> tuple[dict[str, Any], float]:
    """(stats, T): zero-shot top-1, rho(acc, prior), GLA's q_hat and rho(q_hat, prior) and
    the probe's rho, on fresh balanced sets of the same world (``per_class`` images per
    class); T is the temperature q_hat was fitted at."""
    from lt_bench.backbones.prompts import class_text_embeddings

    model.eval()
    k = len(names)
    labels = np.repeat(np.arange(k), per_class)
    text = class_text_embeddings(model, tokenizer, names, CAPTION_TEMPLATES)
    feats = _image_features(model, labels, rng, k, image_size, regime)
    logits = (model.logit_scale.exp() * F.normalize(feats, dim=-1) @ text.T).double().numpy()
    pred = logits.argmax(1)
    acc = per_class_accuracy(pred, labels, k)
    q_hat, temperature = estimate_prior(logits, labels)  # GLA's estimator, as `lt-bench prior`
    stats = {"zero_shot_top1": float((pred == labels).mean()),
             "rho_acc_vs_prior": float(spearmanr(acc, prior).statistic),
             "rho_qhat_vs_prior": float(spearmanr(q_hat, prior).statistic),
             "eval_per_class": per_class,
             "zero_shot_per_class_accuracy": acc.tolist(), "q_hat": q_hat.tolist()}
    if probe_per_class > 0:
        probe_labels = np.repeat(np.arange(k), probe_per_class)
        probe_x = _image_features(model, probe_labels, rng, k, image_size, regime)
        stats.update(probe_vs_prior(probe_x, probe_labels, feats, labels, prior))
    else:
        stats.update(probe_top1=None, rho_probe_vs_prior=None)
    return stats, temperature
