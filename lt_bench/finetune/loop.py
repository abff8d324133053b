"""The fine-tuning loop: PEFT + cosine head on an open_clip CLIP, resumable per epoch.

LIFT's recipe (``shijxcs/LIFT``: ``trainer.py``, ``utils/config.py``,
``configs/model/clip_vit_b16.yaml``): SGD (lr 0.01, momentum 0.9, weight decay 5e-4 on the
PEFT parameters and the head alike), ``CosineAnnealingLR(epochs)`` stepped once per epoch,
batch 128 (micro-batches accumulate to the same effective batch), 10 epochs, cosine head
with scale 25 on the pre-projection CLS feature, ``RandomResizedCrop`` + flip for training,
the LIFT test transform, optional five-crop test-time ensembling (logits averaged).

Differences from LIFT, each on purpose
    * A partial last batch is the mean over its own images (LIFT divides every micro-batch
      by the full accumulation count), so the effective batch is exactly the same whatever
      the micro-batch size.
    * The shuffle and every random crop are functions of ``(seed, epoch)``
      (:mod:`lt_bench.finetune.images`), so a resumed run repeats the uninterrupted one.
    * The cosine head runs in float32 outside autocast, in training and evaluation alike
      (LIFT runs it inside ``autocast()`` while training, so its logits there are fp16);
      evaluation runs the whole model in float32, as LIFT's ``test()`` does (no autocast).

Precision (``amp``): ``auto`` is LIFT's ``prec: "amp"`` on CUDA — ``torch.cuda.amp.autocast()``
(float16) with a ``GradScaler`` (``trainer.py``: ``self.scaler = GradScaler() if cfg.prec ==
"amp"``) — and float32 on CPU; ``bf16`` and ``off`` are opt-ins. What a run used is recorded
in its config.json (``precision``).

What the loop returns for each eval split is the pre-head feature (float32, D a row) and,
with test-time ensembling, the mean over the five crops of the **unit-normalised** feature:
the cosine head is linear in the unit feature, so ``scale · m · ŵᵀ`` is exactly the mean of
the crops' logits (LIFT's ``test()``: ``output.view(bsz, ncrops, -1).mean(1)``). The run
layer stores these and the head, and computes every logit from them.

``loss_fn(logits, labels, epoch)`` gets the raw head logits (float32), the labels and the
0-based epoch, and returns the mean loss of the micro-batch.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# re-exported: callers import the options from here
from lt_bench.finetune.options import (  # noqa: F401
    AMP_MODES,
    FINETUNE_DEFAULTS,
    NOT_FINGERPRINTED,
    FinetuneConfigError,
    FinetuneDivergedError,
    FinetuneResult,
    _positive_int,
    autocast,
    make_grad_scaler,
    precision_record,
    reported_view,
    resolve_amp,
    resolve_hparams,
    resolve_workers,
    tte_views,
)

log = logging.getLogger(__name__)


@dataclass
class Trainer:
    """What one optimiser step needs: the tuned tower, the head and the optimiser state."""

    visual: Any
    head: Any
    optimizer: Any
    scheduler: Any
    scaler: Any          # torch.amp.GradScaler for fp16, else None
    loss_fn: Callable
    amp: str
    device: Any
    batch_size: int
    micro_batch_size: int

    def features(self, images, amp: str | None = None):
        """Pre-head features (float32) under ``amp`` (default: the training autocast)."""
        from lt_bench.finetune.peft import pre_projection_features

        with autocast(self.amp if amp is None else amp, self.device):
            return pre_projection_features(self.visual, images).float()

    def head_logits(self, features):
        """The cosine head in float32, with any enclosing autocast switched off."""
        import torch

        with torch.autocast(self.device.type, enabled=False):
            return self.head(features.float())

    def forward(self, images):
        return self.head_logits(self.features(images))

    def train_epoch(self, batches: Iterable, n_images: int, epoch: int, progress=None) -> float:
        """One pass over ``batches`` (micro-batches in order); returns the mean loss.

        Micro-batch ``j`` belongs to optimiser step ``j // accum``; its loss is weighted by
        its share of that step's images, so the step's gradient is the mean over the step.
        """
        import torch

        accum = self.batch_size // self.micro_batch_size
        n_micro = -(-n_images // self.micro_batch_size)
        total = torch.zeros((), device=self.device)
        self.optimizer.zero_grad(set_to_none=True)
        for j, (x, y) in enumerate(batches):
            x = x.to(self.device, non_blocking=True)
            y = y.to(self.device, non_blocking=True)
            step = j // accum
            in_step = min(self.batch_size, n_images - step * self.batch_size)
            loss = self.loss_fn(self.forward(x), y, epoch)
            weighted = loss * (y.shape[0] / in_step)
            (self.scaler.scale(weighted) if self.scaler is not None else weighted).backward()
            total += loss.detach() * y.shape[0]
            if (j + 1) % accum == 0 or j + 1 == n_micro:
                if self.scaler is not None:
                    self.scaler.step(self.optimizer)
                    self.scaler.update()
                else:
                    self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
            if progress is not None:
                progress.update(y.shape[0])
        mean = float(total) / max(n_images, 1)
        if mean != mean or mean in (float("inf"), float("-inf")):
            raise FinetuneDivergedError(
                f"the training loss became {mean} in epoch {epoch + 1}; lower finetune.lr "
                f"(now {self.optimizer.param_groups[0]['initial_lr']}) or use amp off/bf16")
        return mean

    def embed(self, loader) -> tuple[Any, Any, str]:
        """Labels, float32 features and their view ("centre" / "tte") over ``loader``, the model in float32 (LIFT's
        ``test()`` runs without autocast). A 5-D batch (B, crops, C, H, W) gives the mean of
        the crops' unit-normalised features: the cosine head's logits of that mean are the
        mean of the crops' logits (LIFT ``test()``)."""
        import numpy as np
        import torch
        import torch.nn.functional as F

        labels, feats, view = [], [], "centre"
        with torch.no_grad():
            for x, y in loader:
                x = x.to(self.device, non_blocking=True)
                if x.dim() == 5:
                    view = "tte"
                    b, c = x.shape[:2]
                    f = F.normalize(self.features(x.flatten(0, 1), amp="off"), dim=-1)
                    f = f.view(b, c, -1).mean(1)
                else:
                    f = self.features(x, amp="off")
                feats.append(f.cpu())
                labels.append(y)
        return (torch.cat(labels).numpy().astype(np.int64),
                torch.cat(feats).numpy().astype(np.float32), view)

    def logits_of(self, features, view: str):
        """float32 head logits of ``embed``'s features: the centre view is normalised by the
        head; the crop view is already a mean of unit features (``scale · m · ŵᵀ``)."""
        import torch
        import torch.nn.functional as F

        f = torch.as_tensor(features, dtype=torch.float32, device=self.device)
        with torch.no_grad(), torch.autocast(self.device.type, enabled=False):
            if view == "tte":
                w = F.normalize(self.head.weight.float(), dim=-1)
                z = F.linear(f, w) * self.head.scale
            else:
                z = self.head_logits(f)
        return z.cpu().numpy().astype("float32")

    def predict(self, loader) -> tuple[Any, Any]:
        """Labels and float32 logits over ``loader`` (5-D batches: the crops' mean logits)."""
        labels, feats, view = self.embed(loader)
        return labels, self.logits_of(feats, view)


def _train_transform(size: int, mean, std, crop_scale):
    """LIFT's train transform with the crop's area range set to ``crop_scale``."""
    from torchvision.transforms import RandomResizedCrop

    from lt_bench.backbones.transforms import lift_train_transform

    tf = lift_train_transform(size, mean, std)
    crops = [t for t in tf.transforms if isinstance(t, RandomResizedCrop)]
    if len(crops) != 1:
        raise RuntimeError("lift_train_transform no longer has one RandomResizedCrop")
    crops[0].scale = tuple(crop_scale)
    return tf


def _check_items(name: str, items, num_classes: int) -> None:
    if not items:
        raise FinetuneConfigError(f"the {name} split has no images")
    bad = [(p, y) for p, y in items if not 0 <= int(y) < num_classes][:3]
    if bad:
        raise FinetuneConfigError(f"{name} split: labels outside [0, {num_classes}): {bad}")


def _top1(labels, logits) -> float:
    return float((logits.argmax(1) == labels).mean())


def finetune(*, model, train_items: list[tuple[str, int]],
             eval_items: dict[str, list[tuple[str, int]]], image_root: Path, num_classes: int,
             head_init, loss_fn: Callable, hparams: dict, seed: int, device: str,
             work_dir: Path, mean: tuple, std: tuple, image_size: int) -> FinetuneResult:
    """Fine-tune ``model.visual`` with PEFT + a cosine head; resume from ``work_dir``.

    ``model`` (an open_clip CLIP) is modified in place: PEFT modules are injected into its
    image tower, which moves to ``device``. ``head_init`` (K x D, D = the tower's width) is
    the head's initial weight on the pre-projection feature. A checkpoint is written to
    ``work_dir`` after every epoch and a rerun continues from the last finished epoch.
    """
    import numpy as np
    import torch
    from torch.utils.data import DataLoader
    from tqdm import tqdm

    from lt_bench.backbones.transforms import five_crop_transform, lift_test_transform
    from lt_bench.finetune import state as st
    from lt_bench.finetune.images import EpochSampler, ImageItems
    from lt_bench.finetune.peft import CosineHead, inject_peft, peft_sizes

    hp = resolve_hparams(hparams)
    dev = torch.device(device)
    amp = resolve_amp(hp["amp"], dev)
    workers = resolve_workers(hp["num_workers"], dev)
    visual = getattr(model, "visual", None)
    if visual is None:
        raise FinetuneConfigError(f"finetune needs an open_clip CLIP (with .visual), got "
                                  f"{type(model).__name__}")
    _check_items("train", train_items, num_classes)
    for name, items in eval_items.items():
        _check_items(name, items, num_classes)
    width = visual.positional_embedding.shape[-1]
    head_init = np.asarray(head_init, dtype=np.float32)
    if head_init.shape != (num_classes, width) or not np.isfinite(head_init).all():
        raise FinetuneConfigError(
            f"head_init must be a finite {num_classes} x {width} array (K classes x the image "
            f"tower's pre-projection width), got shape {head_init.shape}")
    sizes = peft_sizes(hp["peft"], num_classes, len(visual.transformer.resblocks),
                       **{k: hp[k] for k in ("bottleneck", "vpt_length", "lora_rank")})
    fingerprint = {
        "hparams": {k: v for k, v in hp.items() if k not in NOT_FINGERPRINTED},
        "peft_sizes": sizes, "seed": int(seed), "num_classes": int(num_classes),
        "image_size": int(image_size), "mean": list(mean), "std": list(std),
        "train_items": st.sha256_items(train_items), "head_init": st.sha256_array(head_init),
        "model": st.sha256_module(visual),
    }

    for p in model.parameters():  # the text tower too: only PEFT + head train
        p.requires_grad_(False)
    peft_params = inject_peft(visual, hp["peft"], num_classes, seed=seed, **sizes)
    visual.to(dev).eval()  # eval: no patch dropout; CLIP towers have no dropout/BN to train
    head = CosineHead(torch.from_numpy(head_init), hp["scale"]).to(dev)
    optimizer = torch.optim.SGD([{"params": peft_params}, {"params": list(head.parameters())}],
                                lr=hp["lr"], momentum=hp["momentum"],
                                weight_decay=hp["weight_decay"])
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, hp["epochs"])
    scaler = make_grad_scaler(amp, dev)
    trainer = Trainer(visual, head, optimizer, scheduler, scaler, loss_fn, amp, dev,
                      hp["batch_size"], hp["micro_batch_size"])
    named = {f"visual.{n}": p for n, p in visual.named_parameters() if p.requires_grad}
    named["head.weight"] = head.weight

    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    history: list[dict] = []
    start = 0
    ckpt = st.load_checkpoint(work_dir, fingerprint)
    if ckpt is not None:
        with torch.no_grad():
            for name, p in named.items():
                p.copy_(ckpt["trainable"][name].to(p.device, p.dtype))
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        if scaler is not None and ckpt.get("scaler"):
            scaler.load_state_dict(ckpt["scaler"])
        st.set_rng_state(ckpt["rng"])
        history, start = list(ckpt["history"]), int(ckpt["epoch"])
        log.info("resuming fine-tuning from epoch %d/%d (%s)", start, hp["epochs"],
                 work_dir / st.CHECKPOINT_NAME)

    pin = dev.type == "cuda"
    loader_kw = {"num_workers": workers, "pin_memory": pin,
                 "persistent_workers": workers > 0}
    train_ds = ImageItems(image_root, train_items,
                          _train_transform(image_size, mean, std, hp["crop_scale"]), "train")
    sampler = EpochSampler(len(train_ds), seed)
    train_loader = DataLoader(train_ds, batch_size=hp["micro_batch_size"], sampler=sampler,
                              **loader_kw)

    def eval_loader(split: str, tte: bool):
        tf = (five_crop_transform(image_size, mean, std) if tte
              else lift_test_transform(image_size, mean, std, kind=hp["test_transform"]))
        per = hp["eval_batch_size"] // 5 if tte else hp["eval_batch_size"]
        ds = ImageItems(image_root, eval_items[split], tf, split)
        return DataLoader(ds, batch_size=max(1, per), shuffle=False,
                          **{**loader_kw, "persistent_workers": False})

    val_loader = (eval_loader("val", False)
                  if hp["val_every_epoch"] and "val" in eval_items else None)
    last_val = None
    tty = sys.stderr.isatty()
    for epoch in range(start, hp["epochs"]):
        sampler.epoch = epoch
        lr = optimizer.param_groups[0]["lr"]
        t0 = time.perf_counter()
        with tqdm(total=len(train_ds), desc=f"fine-tune epoch {epoch + 1}/{hp['epochs']}",
                  unit="img", file=sys.stderr, mininterval=1 if tty else 30,
                  leave=False) as bar:
            loss = trainer.train_epoch(train_loader, len(train_ds), epoch, bar)
        train_s = time.perf_counter() - t0
        val_top1 = None
        if val_loader is not None:
            last_val = trainer.embed(val_loader)
            val_top1 = _top1(last_val[0], trainer.logits_of(last_val[1], "centre"))
        scheduler.step()  # per epoch, as LIFT's trainer.py
        record = {"epoch": epoch + 1, "train_loss": loss, "val_top1": val_top1, "lr": lr,
                  "seconds": time.perf_counter() - t0, "train_seconds": train_s,
                  "images": len(train_ds)}
        history.append(record)
        st.save_checkpoint(work_dir, {
            "fingerprint": st.fingerprint_text(fingerprint), "epoch": epoch + 1,
            "trainable": {n: p.detach().cpu().clone() for n, p in named.items()},
            "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict() if scaler is not None else {},
            "history": history, "rng": st.rng_state()})
        val_text = f"{val_top1:.4f}" if val_top1 is not None else "-"
        log.info("fine-tune epoch %d/%d: train loss %.4f, val top-1 %s, lr %.3g, %.1f s "
                 "(%.0f img/s)", epoch + 1, hp["epochs"], loss, val_text, lr, record["seconds"],
                 len(train_ds) / max(train_s, 1e-9))

    features: dict[str, dict[str, Any]] = {}
    logits = {}
    view = reported_view(hp["tte"])
    for split in eval_items:
        features[split] = {}
        for v in tte_views(hp["tte"]):
            if split == "val" and v == "centre" and last_val is not None:
                labels, feats = last_val[0], last_val[1]  # the last epoch's val pass is final
            else:
                labels, feats, _ = trainer.embed(eval_loader(split, v == "tte"))
            features[split][v] = feats
            if v == view:
                logits[split] = (labels, trainer.logits_of(feats, v))
    train_seconds = sum(h["train_seconds"] for h in history)
    n_peft = sum(p.numel() for p in peft_params)
    info = {
        "peft": hp["peft"], **sizes, "n_trainable_params": n_peft + head.weight.numel(),
        "n_peft_params": n_peft, "n_head_params": head.weight.numel(),
        "train_seconds": train_seconds,
        "images_per_second": sum(h["images"] for h in history) / max(train_seconds, 1e-9),
        "amp": amp, "device": str(dev), "num_workers": workers,
        "micro_batch_size": hp["micro_batch_size"],
        "accumulation_steps": hp["batch_size"] // hp["micro_batch_size"],
        "epochs": hp["epochs"], "epochs_resumed_from": start, "tte": hp["tte"],
        "view": view, "precision": precision_record(amp, scaler), "scale": hp["scale"],
        "torch": torch.__version__,
    }
    trainable = {n: p.detach().float().cpu().numpy() for n, p in named.items()}
    return FinetuneResult(logits=logits, info=info, history=history, trainable=trainable,
                          features=features)
