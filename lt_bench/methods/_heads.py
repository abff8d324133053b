"""Training a classifier head on frozen features (LIFT's recipe, DESIGN §1).

Cosine classifier with scale 25, initialised from the class text embeddings (class
means of the train features for backbones without a text tower), SGD with momentum,
cosine learning-rate schedule over all iterations. A subclass only says what its loss
is (``loss``) and, optionally, how batches are sampled or logits post-processed.
"""

from __future__ import annotations

import logging
import time
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from lt_bench.methods.base import FitContext, FitResult, Method
from lt_bench.methods.predictor import LinearPredictor, LinearTerm

log = logging.getLogger(__name__)

HEAD_DEFAULTS: dict[str, Any] = {
    "lr": 0.01,
    "epochs": 10,
    "batch_size": 128,
    "weight_decay": 5e-4,
    "momentum": 0.9,
    "scale": 25.0,
    "init": "text",  # "text" | "class_mean" | "random"
    "sampler": "instance",  # "instance" | "class_balanced"
}


def class_means(features: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    f = features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)
    sums = np.zeros((k, f.shape[1]))
    np.add.at(sums, labels, f)
    return sums / np.maximum(np.bincount(labels, minlength=k), 1)[:, None]


def initial_weight(ctx: FitContext, init: str, rng: np.random.Generator) -> np.ndarray:
    if init == "text":
        if ctx.text.embeddings is None:  # non-CLIP backbone: fall back to class means
            init = "class_mean"
        else:
            return ctx.text.embeddings.copy()
    if init == "class_mean":
        return class_means(ctx.train.features, ctx.train.labels, ctx.num_classes)
    if init == "random":
        return rng.normal(0, 0.01, (ctx.num_classes, ctx.train.features.shape[1]))
    raise ValueError(f"unknown head init {init!r}; valid: text, class_mean, random")


class CosineHead(torch.nn.Module):
    def __init__(self, weight: np.ndarray, scale: float):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.as_tensor(weight, dtype=torch.float32).clone())
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * F.normalize(x, dim=-1) @ F.normalize(self.weight, dim=-1).T


def batch_indices(labels: np.ndarray, batch_size: int, sampler: str,
                  rng: np.random.Generator) -> list[np.ndarray]:
    """One epoch of batches: a random permutation, or class-balanced draws (as many
    samples as the split has, each drawn by picking a class uniformly, then an image)."""
    n = len(labels)
    if sampler == "instance":
        order = rng.permutation(n)
    elif sampler == "class_balanced":
        classes = np.unique(labels)
        by_class = {c: np.flatnonzero(labels == c) for c in classes}
        picks = rng.choice(classes, size=n)
        order = np.array([rng.choice(by_class[c]) for c in picks])
    else:
        raise ValueError(f"unknown sampler {sampler!r}; valid: instance, class_balanced")
    return [order[i:i + batch_size] for i in range(0, n, batch_size)]


class HeadMethod(Method):
    """A cosine head trained with ``self.loss``; subclasses override ``loss``."""

    defaults: ClassVar[dict[str, Any]] = HEAD_DEFAULTS
    uses_val_for_selection: ClassVar[bool] = False

    def setup(self, ctx: FitContext) -> None:
        """Precompute loss constants (log priors, weights, margins) from the context."""

    def init_weight(self, ctx: FitContext, rng: np.random.Generator) -> np.ndarray:
        """Initial head weights (K, D); cRT overrides this to start from the CE head."""
        return initial_weight(ctx, self.hparams["init"], rng)

    def loss(self, logits: torch.Tensor, y: torch.Tensor, epoch: int) -> torch.Tensor:
        return F.cross_entropy(logits, y)

    def predictor(self, head: CosineHead, ctx: FitContext) -> LinearPredictor:
        return LinearPredictor([LinearTerm(head.weight.detach().numpy().copy(), head.scale)])

    def fit(self, ctx: FitContext) -> FitResult:
        hp = self.hparams
        torch.manual_seed(ctx.seed)
        rng = np.random.default_rng(ctx.seed)
        self.setup(ctx)
        head = CosineHead(self.init_weight(ctx, rng), hp["scale"])
        opt = torch.optim.SGD(head.parameters(), lr=hp["lr"], momentum=hp["momentum"],
                              weight_decay=hp["weight_decay"])
        x_all = torch.from_numpy(ctx.train.features)
        y_all = torch.from_numpy(ctx.train.labels)
        steps = hp["epochs"] * -(-len(y_all) // hp["batch_size"])
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(steps, 1))
        x_val = torch.from_numpy(ctx.val.features)
        history = []
        t0 = time.time()
        for epoch in range(hp["epochs"]):
            total, n = 0.0, 0
            for idx in batch_indices(ctx.train.labels, hp["batch_size"], hp["sampler"], rng):
                idx_t = torch.from_numpy(idx)
                loss = self.loss(head(x_all[idx_t]), y_all[idx_t], epoch)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                total += loss.item() * len(idx)
                n += len(idx)
            with torch.no_grad():
                val_acc = float((head(x_val).argmax(1).numpy() == ctx.val.labels).mean())
            history.append({"epoch": epoch, "train_loss": total / n, "val_top1": val_acc,
                            "lr": sched.get_last_lr()[0]})
            log.info("epoch %d/%d loss %.4f val top1 %.4f", epoch + 1, hp["epochs"],
                     total / n, val_acc)
        return FitResult(self.predictor(head, ctx),
                         info={"train_seconds": time.time() - t0}, history=history)
