"""Training a classifier head on frozen features (LIFT's recipe; docs/protocol.md).

Cosine classifier with scale 25 on the pre-projection feature, initialised from the
single-prompt text embedding mapped back through the projection (LIFT ``trainer.py``;
class means of the train features for backbones without a text tower), SGD with momentum,
cosine learning-rate schedule over epochs stepped once per epoch (LIFT). With cached
augmented views (``extract.train_views``) each epoch draws one view per image. A subclass
only says what its loss is (``loss``) and, optionally, how batches are sampled.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any, ClassVar

import numpy as np

from lt_bench.errors import InputValidationError
from lt_bench.methods._base import FitContext, FitResult, Method, check_number
from lt_bench.methods._predictor import LinearPredictor, LinearTerm

log = logging.getLogger(__name__)

HEAD_DEFAULTS: dict[str, Any] = {
    "lr": 0.01,
    "epochs": 10,
    "batch_size": 128,
    "weight_decay": 5e-4,
    "momentum": 0.9,
    "scale": 25.0,
    "init": "text",  # "text" | "class_mean" | "random"
    "sampler": "instance",  # "instance" | "class_balanced" | "class_aware" (SAMPLERS)
    "lr_schedule": "cosine_epoch",  # LIFT: cosine over epochs, stepped per epoch | "cosine_step"
    # the val/test view read and reported (lt_bench/features/eval_views.py split_view): auto =
    # the extraction's default (the crops under extract.tte: fivecrop), centre, fivecrop
    "view": "auto",
}


def _unit_rows(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def class_means(features: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    """Unit-normalised means of the *raw* features of each class (LIFT ``trainer.py``,
    ``init_head_class_mean``: ``features[class].mean(0)``, then ``F.normalize``)."""
    sums = np.zeros((k, features.shape[1]))
    np.add.at(sums, labels, np.asarray(features, dtype=np.float64))
    return _unit_rows(sums / np.maximum(np.bincount(labels, minlength=k), 1)[:, None])


def random_unit_rows(k: int, d: int, rng: np.random.Generator) -> np.ndarray:
    """LIFT's random head init (``models/classifiers.py``, ``_Classifier``):
    ``uniform_(-1, 1).renorm_(2, 0, 1e-5).mul_(1e5)``, i.e. U(−1, 1) rows scaled to norm 1.
    The norm matters to a cosine head although its logits ignore it: the gradient of
    ``w / ‖w‖`` is ``(I − ŵŵᵀ)/‖w‖``, so an SGD step turns a short row further."""
    return _unit_rows(rng.uniform(-1.0, 1.0, (k, d)))


def initial_weight(ctx: FitContext, init: str, rng: np.random.Generator) -> np.ndarray:
    if init == "text":
        # LIFT (trainer.py, init_head_text_feat): the single-prompt text embedding mapped
        # back into the visual feature space, normalize(normalize(t) @ proj.T)
        w = ctx.text.head_init()
        if w is None:  # non-CLIP backbone: fall back to class means
            init = "class_mean"
        else:
            return np.array(w, dtype=np.float32, copy=True)
    if init == "class_mean":
        return class_means(ctx.train.features, ctx.train.labels, ctx.num_classes)
    if init == "random":
        return random_unit_rows(ctx.num_classes, ctx.train.features.shape[1], rng)
    raise InputValidationError(f"head init = {init!r}; valid: text, class_mean, random")


def cosine_head(weight: np.ndarray, scale: float, device: str = "cpu"):
    """``z = s · cos(f, w_k)``: a torch module built on demand (torch is imported here, not
    at module import, so the method registry stays light)."""
    import torch
    import torch.nn.functional as F

    class CosineHead(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = torch.nn.Parameter(
                torch.as_tensor(weight, dtype=torch.float32).clone())
            self.scale = scale

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.scale * F.normalize(x, dim=-1) @ F.normalize(self.weight, dim=-1).T

    return CosineHead().to(device)


class _Cycle:
    """classifier-balancing's ``RandomCycleIter`` (``data/ClassAwareSampler.py``): its items
    in a random order, reshuffled each time the cycle wraps (the first pass is shuffled
    too); the position carries over from one epoch to the next."""

    def __init__(self, items: np.ndarray, rng: np.random.Generator):
        self.items, self.rng, self.pos = np.asarray(items), rng, len(items)

    def take(self, m: int) -> np.ndarray:
        out, n = [], len(self.items)
        while m > 0:
            if self.pos == n:
                self.items, self.pos = self.rng.permutation(self.items), 0
            k = min(m, n - self.pos)
            out.append(self.items[self.pos:self.pos + k])
            self.pos, m = self.pos + k, m - k
        return np.concatenate(out) if out else self.items[:0]


class ClassAwareSampler:
    """classifier-balancing's ``ClassAwareSampler`` (``data/ClassAwareSampler.py``, as
    ``cls_crt.yaml`` sets it: ``num_samples_cls: 4``): an epoch is ``max_c n_c × K`` draws;
    a class is drawn by cycling through the shuffled classes, and each class drawn yields
    ``num_samples_cls`` consecutive images of its own shuffled cycle. The reference draws a
    whole tuple at a time, so an epoch's cut-off last tuple still advances its class's
    cycle; both cycles carry over between epochs (one sampler object per fit)."""

    def __init__(self, labels: np.ndarray, num_samples_cls: int, rng: np.random.Generator):
        labels = np.asarray(labels)
        classes = np.unique(labels)
        self.per_class = int(num_samples_cls)
        self.classes = _Cycle(classes, rng)
        self.images = [_Cycle(np.flatnonzero(labels == c), rng) for c in classes]
        self.index = {int(c): i for i, c in enumerate(classes)}
        self.epoch_size = int(max(len(c.items) for c in self.images) * len(classes))

    def epoch(self) -> np.ndarray:
        """One epoch's sample indices, in order (``epoch_size`` of them)."""
        tuples = -(-self.epoch_size // self.per_class)
        drawn = self.classes.take(tuples)
        out = np.empty((tuples, self.per_class), dtype=np.int64)
        # each class's tuples take consecutive images of its own cycle, in epoch order:
        # the sequential generator's draws, computed one class at a time
        # (grouped by one stable sort: iNat2018's epoch has 2 M tuples of 8,142 classes)
        by_class = np.argsort(drawn, kind="stable")
        for at in np.split(by_class, np.flatnonzero(np.diff(drawn[by_class])) + 1):
            cycle = self.images[self.index[int(drawn[at[0]])]]
            out[at] = cycle.take(len(at) * self.per_class).reshape(len(at), self.per_class)
        return out.reshape(-1)[:self.epoch_size]


SAMPLERS = ("instance", "class_balanced", "class_aware")


def batch_indices(labels: np.ndarray, batch_size: int, sampler: str,
                  rng: np.random.Generator, class_aware: ClassAwareSampler | None = None
                  ) -> list[np.ndarray]:
    """One epoch of batches: a random permutation (``instance``); i.i.d. class-balanced
    draws, as many as the split has images, each a uniform class, then an image
    (``class_balanced``); or the next epoch of ``class_aware`` (classifier-balancing's
    class-aware sampler: ``max_c n_c × K`` draws)."""
    n = len(labels)
    if sampler == "instance":
        order = rng.permutation(n)
    elif sampler == "class_balanced":
        classes = np.unique(labels)
        by_class = {c: np.flatnonzero(labels == c) for c in classes}
        picks = rng.choice(classes, size=n)
        order = np.array([rng.choice(by_class[c]) for c in picks])
    elif sampler == "class_aware":
        if class_aware is None:
            raise AssertionError("sampler 'class_aware' needs its ClassAwareSampler (state "
                                 "carries over between epochs)")
        order = class_aware.epoch()
    else:
        raise InputValidationError(f"sampler = {sampler!r}; valid: {', '.join(SAMPLERS)}")
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


def cosine_lr(base: float, t: int, t_max: int) -> float:
    """CosineAnnealingLR's closed form (eta_min 0): the lr of step (or epoch) t of t_max."""
    return base * 0.5 * (1 + math.cos(math.pi * t / t_max))


class HeadSGD:
    """torch.optim.SGD (dampening 0, no Nesterov) on the one head tensor, written out:
    constructing any torch.optim optimizer (and its zero_grad) imports torch._dynamo,
    2-5 s of every job's start-up on 2 cores, for an update of three tensor ops. Same
    arithmetic as torch's ``_single_tensor_sgd`` (a test compares the trajectories)."""

    def __init__(self, weight, momentum: float, weight_decay: float):
        self.weight, self.momentum, self.wd, self.buf = weight, momentum, weight_decay, None

    def step(self, lr: float) -> None:
        import torch

        with torch.no_grad():
            d = self.weight.grad
            if self.wd:
                d = d.add(self.weight, alpha=self.wd)
            if self.momentum:
                self.buf = d.clone() if self.buf is None else self.buf.mul_(self.momentum).add_(d)
                d = self.buf
            self.weight.add_(d, alpha=-lr)


class HeadMethod(Method):
    """A cosine head trained with ``self.loss``; subclasses override ``loss``."""

    defaults: ClassVar[dict[str, Any]] = HEAD_DEFAULTS

    def validate(self) -> None:
        hp = self.hparams
        check_number(self.name, "epochs", hp["epochs"], minimum=1, integer=True)
        check_number(self.name, "batch_size", hp["batch_size"], minimum=1, integer=True)
        check_number(self.name, "lr", hp["lr"], above=0)
        check_number(self.name, "weight_decay", hp["weight_decay"], minimum=0)
        check_number(self.name, "momentum", hp["momentum"], minimum=0, maximum=1)
        check_number(self.name, "scale", hp["scale"], above=0)
        if hp.get("init", "text") not in ("text", "class_mean", "random"):
            raise InputValidationError(f"method {self.name!r}: init = {hp['init']!r}; "
                                       "valid: text, class_mean, random")
        if hp["lr_schedule"] not in ("cosine_epoch", "cosine_step"):
            raise InputValidationError(f"method {self.name!r}: lr_schedule = "
                                       f"{hp['lr_schedule']!r}; valid: cosine_epoch, cosine_step")
        if hp["sampler"] not in SAMPLERS:
            raise InputValidationError(f"method {self.name!r}: sampler = {hp['sampler']!r}; "
                                       f"valid: {', '.join(SAMPLERS)}")
        if "num_samples_cls" in hp:
            check_number(self.name, "num_samples_cls", hp["num_samples_cls"], minimum=1,
                         integer=True)
        if hp["sampler"] == "class_aware" and "num_samples_cls" not in hp:
            raise InputValidationError(f"method {self.name!r}: sampler = 'class_aware' needs "
                                       "num_samples_cls, which only crt has")

    def setup(self, ctx: FitContext) -> None:
        """Precompute loss constants (log priors, weights, margins) from the context."""

    def init_weight(self, ctx: FitContext, rng: np.random.Generator) -> np.ndarray:
        """Initial head weights (K, D); cRT overrides this to start from the CE head."""
        return initial_weight(ctx, self.hparams["init"], rng)

    def loss(self, logits, y, epoch: int):
        """The training loss on a batch (torch tensors); plain CE here."""
        import torch.nn.functional as F

        return F.cross_entropy(logits, y)

    def predictor(self, head, ctx: FitContext) -> LinearPredictor:
        return LinearPredictor([LinearTerm(head.weight.detach().cpu().numpy().copy(),
                                           head.scale)])

    def prepare_loss(self, ctx: FitContext):
        """``setup`` + its tensors on ``ctx.device``; returns ``self.loss``. The fine-tuning
        track calls this too, so one definition of each loss serves both tracks."""
        import torch

        self.setup(ctx)
        for key, value in vars(self).items():  # loss constants live beside the head
            if isinstance(value, torch.Tensor):
                setattr(self, key, value.to(ctx.device))
        return self.loss

    def fit(self, ctx: FitContext) -> FitResult:
        import torch

        hp = self.hparams
        torch.manual_seed(ctx.seed)
        rng = np.random.default_rng(ctx.seed)
        loss_fn = self.prepare_loss(ctx)
        head = cosine_head(self.init_weight(ctx, rng), hp["scale"], ctx.device)
        opt = HeadSGD(head.weight, momentum=hp["momentum"], weight_decay=hp["weight_decay"])
        # on the device once per job (shared by its heads); batches are gathered there
        views = ctx.train_views
        x_all = ctx.on_device(ctx.train.features if views is None else views)
        y_all = ctx.on_device(ctx.train.labels)
        n_train = len(ctx.train.labels)
        class_aware = (ClassAwareSampler(ctx.train.labels, hp["num_samples_cls"], rng)
                       if hp["sampler"] == "class_aware" else None)
        n_epoch = n_train if class_aware is None else class_aware.epoch_size
        per_epoch = -(-n_epoch // hp["batch_size"])
        # LIFT (trainer.py) steps CosineAnnealingLR(num_epochs) once per epoch;
        # "cosine_step" (per iteration down to 0) is kept as an option
        by_epoch = hp["lr_schedule"] == "cosine_epoch"
        t_max = max(hp["epochs"] if by_epoch else hp["epochs"] * per_epoch, 1)
        step = 0
        x_val = ctx.on_device(ctx.val.features)
        arange = torch.arange(n_train, device=ctx.device)
        # its own stream: drawing views leaves the batch order of the same seed unchanged
        view_rng = np.random.default_rng([ctx.seed, 1])
        history = []
        t0 = time.time()
        for epoch in range(hp["epochs"]):
            lr = cosine_lr(hp["lr"], epoch, t_max) if by_epoch else cosine_lr(hp["lr"], step, t_max)
            if views is None:
                x_epoch = x_all
            else:  # one of the V cached augmented views per image, drawn afresh each epoch
                pick = torch.from_numpy(view_rng.integers(0, views.shape[0], n_train)).to(ctx.device)
                x_epoch = x_all[pick, arange]
            total = torch.zeros((), device=ctx.device)
            for idx in batch_indices(ctx.train.labels, hp["batch_size"], hp["sampler"], rng,
                                     class_aware):
                idx_t = torch.from_numpy(idx).to(ctx.device)
                loss = loss_fn(head(x_epoch[idx_t]), y_all[idx_t], epoch)
                head.weight.grad = None
                loss.backward()
                opt.step(cosine_lr(hp["lr"], epoch if by_epoch else step, t_max))
                step += 1
                total += loss.detach() * len(idx)  # no per-step host sync on a GPU
            with torch.no_grad():
                val_acc = float((head(x_val).argmax(1).cpu().numpy() == ctx.val.labels).mean())
            train_loss = float(total) / n_epoch
            history.append({"epoch": epoch, "train_loss": train_loss, "val_top1": val_acc,
                            "lr": lr})
            log.info("epoch %d/%d loss %.4f val top1 %.4f", epoch + 1, hp["epochs"],
                     train_loss, val_acc)
        info = {"train_seconds": time.time() - t0,
                "train_views": 0 if views is None else int(views.shape[0])}
        if class_aware is not None:
            info.update(epoch_draws=class_aware.epoch_size, steps_per_epoch=per_epoch)
        return FitResult(self.predictor(head, ctx), info=info,
                         history=history)
