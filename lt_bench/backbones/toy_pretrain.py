"""Contrastive pre-training of a toy CLIP on its own long-tailed class prior.

Why the extra class-caption term: with plain contrastive loss (ClipLoss) the zero-shot
logits carry almost no label prior (measured: rho(q_hat, true prior) ~ 0), unlike real
CLIPs. Adding a softmax over the K class captions (0.5 ClipLoss + 0.5 CE) puts the
pre-training prior into the logits as real CLIPs have it (docs/architecture.md §5).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from scipy.stats import spearmanr
from tqdm import tqdm

from lt_bench.backbones.base import ensure_model_configs
from lt_bench.backbones.catalog import TOY_MODEL
from lt_bench.data.toy import CAPTION_TEMPLATES, class_names, render
from lt_bench.io import atomic_path, write_json

log = logging.getLogger(__name__)

PRETRAIN_DEFAULTS: dict[str, Any] = {
    "num_pairs": 50000,
    "epochs": 3,
    "batch_size": 256,
    "lr": 2e-3,
    "weight_decay": 0.1,
    "imbalance": 100,
    "caption_ce_weight": 0.5,
    "eval_per_class": 20,
}

# OpenAI normalisation, as open_clip's preprocess applies at extraction time.
_MEAN = torch.tensor((0.48145466, 0.4578275, 0.40821073)).view(1, 3, 1, 1)
_STD = torch.tensor((0.26862954, 0.26130258, 0.27577711)).view(1, 3, 1, 1)


def pretrain_prior(num_classes: int, index: int, imbalance: float) -> np.ndarray:
    """Backbone ``index``'s pre-training label prior: exponential over its own class order.

    The order is seeded by the index only, so it is independent of the downstream
    order (seeded by the dataset seed) and differs between backbones.
    """
    order = np.random.default_rng([7919, index]).permutation(num_classes)
    weights = np.empty(num_classes)
    weights[order] = imbalance ** (-np.arange(num_classes) / max(num_classes - 1, 1))
    return weights / weights.sum()


def _to_tensor(images: np.ndarray) -> torch.Tensor:
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float().div_(255)
    return (x - _MEAN) / _STD


def pretrain_toy_clip(out_dir: str | Path, num_classes: int, index: int,
                      image_size: int = 32, seed: int = 0, **params: Any) -> dict[str, Any]:
    """Pre-train toy CLIP ``index``; write ``checkpoint.pt``, ``prior.parquet``, ``pretrain.json``."""
    import open_clip

    unknown = set(params) - set(PRETRAIN_DEFAULTS)
    if unknown:
        raise ValueError(f"unknown toy pre-training parameter(s) {sorted(unknown)}; "
                         f"valid: {sorted(PRETRAIN_DEFAULTS)}")
    p = {**PRETRAIN_DEFAULTS, **params}
    out_dir = Path(out_dir)
    ensure_model_configs()
    torch.manual_seed(seed * 1000 + index)
    rng = np.random.default_rng([seed, index, 99])

    prior = pretrain_prior(num_classes, index, p["imbalance"])
    names = class_names(num_classes)
    model = open_clip.create_model(TOY_MODEL)
    tokenizer = open_clip.get_tokenizer(TOY_MODEL)
    # Every (class, template) caption tokenised once; a pair draws a random template.
    caption_tokens = torch.stack([tokenizer([t.format(n) for t in CAPTION_TEMPLATES])
                                  for n in names])  # (K, T, ctx)
    class_prompt = tokenizer([CAPTION_TEMPLATES[0].format(n) for n in names])

    labels = rng.choice(num_classes, size=p["num_pairs"], p=prior)
    t0 = time.time()
    images = torch.cat([_to_tensor(render(labels[i:i + 4096], rng, num_classes, image_size))
                        for i in range(0, len(labels), 4096)])
    log.info("rendered %d pre-training pairs in %.1fs", len(labels), time.time() - t0)
    labels_t = torch.from_numpy(labels)

    steps_per_epoch = len(labels) // p["batch_size"]
    total = steps_per_epoch * p["epochs"]
    opt = torch.optim.AdamW(model.parameters(), lr=p["lr"], weight_decay=p["weight_decay"])
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=p["lr"], total_steps=total,
                                                pct_start=0.1, anneal_strategy="cos")
    clip_loss = open_clip.ClipLoss()
    w = p["caption_ce_weight"]
    history = []
    model.train()
    bar = tqdm(total=total, desc=f"pretrain toyclip{index}", unit="step", mininterval=5)
    t0 = time.time()
    # a line a user can `tail -f` in the rule's log (tqdm redraws one line in place)
    report_every, done = max(1, total // 20), 0
    for epoch in range(p["epochs"]):
        perm = torch.from_numpy(rng.permutation(len(labels)))
        running = 0.0
        for s in range(steps_per_epoch):
            idx = perm[s * p["batch_size"]:(s + 1) * p["batch_size"]]
            y = labels_t[idx]
            tmpl = torch.from_numpy(rng.integers(0, len(CAPTION_TEMPLATES), len(idx)))
            img_f = F.normalize(model.encode_image(images[idx]), dim=-1)
            txt_f = F.normalize(model.encode_text(caption_tokens[y, tmpl]), dim=-1)
            scale = model.logit_scale.exp()
            loss = (1 - w) * clip_loss(img_f, txt_f, scale)
            if w > 0:
                cls_f = F.normalize(model.encode_text(class_prompt), dim=-1)
                loss = loss + w * F.cross_entropy(scale * img_f @ cls_f.T, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            with torch.no_grad():  # CLIP clamps the learned temperature at 100
                model.logit_scale.clamp_(0, np.log(100))
            running += loss.item()
            bar.update(1)
            done += 1
            if done % report_every == 0 or done == total:
                el = time.time() - t0
                log.info("pretrain toyclip%d: step %d/%d (%.0f%%), loss %.4f, %.0f samples/s, "
                         "ETA %.0f s", index, done, total, 100 * done / total, loss.item(),
                         done * p["batch_size"] / el, el / done * (total - done))
        history.append({"epoch": epoch, "loss": running / steps_per_epoch})
        log.info("epoch %d loss %.4f", epoch, history[-1]["loss"])
    bar.close()
    train_seconds = time.time() - t0

    stats = evaluate_zero_shot(model, tokenizer, names, prior, p["eval_per_class"],
                               image_size, rng)
    out_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(out_dir / "checkpoint.pt") as tmp:
        torch.save(model.state_dict(), tmp)
    with atomic_path(out_dir / "prior.parquet") as tmp:
        pd.DataFrame({"label": np.arange(num_classes, dtype=np.int32),
                      "classname": names, "prior": prior}).to_parquet(tmp, index=False)
    summary = {"model": TOY_MODEL, "index": index, "num_classes": num_classes,
               "params": p, "history": history, "train_seconds": train_seconds,
               "samples_per_second": p["epochs"] * steps_per_epoch * p["batch_size"] / train_seconds,
               **stats}
    write_json(out_dir / "pretrain.json", summary)
    log.info("pretrain toyclip%d done in %.0f s -> %s (checkpoint.pt, prior.parquet, "
             "pretrain.json): zero-shot top-1 %.3f, rho(acc, prior) %.3f", index,
             time.time() - t0, out_dir, summary.get("zero_shot_top1", float("nan")),
             summary.get("rho_acc_vs_prior", float("nan")))
    return summary


@torch.no_grad()
def evaluate_zero_shot(model, tokenizer, names, prior, per_class, image_size, rng):
    """Zero-shot top-1 on a fresh balanced set, and rho(per-class accuracy, prior)."""
    from lt_bench.backbones.prompts import class_text_embeddings

    model.eval()
    k = len(names)
    labels = np.repeat(np.arange(k), per_class)
    text = class_text_embeddings(model, tokenizer, names, CAPTION_TEMPLATES)
    preds = []
    for i in range(0, len(labels), 1024):
        x = _to_tensor(render(labels[i:i + 1024], rng, k, image_size))
        preds.append((F.normalize(model.encode_image(x), dim=-1) @ text.T).argmax(1).numpy())
    pred = np.concatenate(preds)
    per_class_acc = np.bincount(labels, weights=pred == labels, minlength=k) / per_class
    rho = spearmanr(per_class_acc, prior).statistic
    return {"zero_shot_top1": float((pred == labels).mean()),
            "rho_acc_vs_prior": float(rho)}
