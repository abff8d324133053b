"""Contrastive pre-training of a toy CLIP on its own long-tailed class prior.

Why the extra class-caption term: with plain contrastive loss (ClipLoss) the zero-shot
logits carry almost no label prior (measured: rho(q_hat, true prior) ~ 0), unlike real
CLIPs. Adding a softmax over the K class captions (0.5 ClipLoss + 0.5 CE) puts the
pre-training prior into the logits as real CLIPs have it (docs/architecture.md §5).

Why it is fast on a laptop CPU (issue 12 §3; ``benchmarks/toy_pretrain.py`` measures the
old step against this one). Measured at one thread: the image tower's forward+backward is
the cost (vision width 128: 2.8 ms/sample; width 64: 0.65 ms/sample), and the run needs
steps more than samples (40k samples: 6.7 % zero-shot at batch 512 with vision width 96,
30 % at batch 128 with width 64), so at batch 128 the text tower's share per step counts
too. So (config.yaml ``toy_pretrain``: 25k pairs x 3 epochs, batch 128, lr 3e-3):

- a smaller model config (``model_configs/lt-toy-vit-p8.json``: vision width 64 with
  MLP ratio 2, text width 64 x 2 layers, embed dim 128, patch 8 as before);
- one caption template per step: the K class captions under it are encoded once and
  serve both loss terms (a pair's caption is its class's row) - K texts per step instead
  of one per pair plus K prompts;
- the captions use a few hundred of the tokenizer's 49,408 tokens; during training the
  token embedding is a compact table of just those rows (``_compact_token_embedding``),
  so AdamW does not update, decay and zero the whole table every step; the rows are
  written back before saving, so the checkpoint is a plain open_clip one;
- fp32 throughout: CPU bf16 autocast only pays on CPUs with AMX / avx512_bf16; on AVX2
  (this machine) one image-tower step was 12x slower under bf16 (measured).

Besides zero-shot top-1 and rho(per-class zero-shot accuracy, prior), ``pretrain.json``
holds the two ground truths the benchmark is judged by: rho(q_hat, prior) (GLA's
estimate from zero-shot logits on ``eval_per_class`` fresh images per class, as many as
the dataset's val split) and rho(probe, prior): per-class accuracy of a linear probe on
the frozen image features, trained on balanced data, against the pre-training prior -
whether the inherited imbalance lives in the representation (issue 13 §3).
"""

from __future__ import annotations

import contextlib
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy.stats import spearmanr

from lt_bench.backbones.base import ensure_model_configs
from lt_bench.backbones.catalog import TOY_MODEL
from lt_bench.data.toy import CAPTION_TEMPLATES, check_regime, class_names, render
from lt_bench.errors import InputValidationError
from lt_bench.io import atomic_path, write_json

log = logging.getLogger(__name__)

PRETRAIN_DEFAULTS: dict[str, Any] = {
    "num_pairs": 25000,
    "epochs": 3,
    "batch_size": 128,
    "lr": 3e-3,
    "warmup": 0.1,
    "weight_decay": 0.1,
    "imbalance": 100,
    "caption_ce_weight": 0.5,
    "eval_per_class": 50,
    "probe_per_class": 20,
}

# OpenAI normalisation, as open_clip's preprocess applies at extraction time.
_MEAN = torch.tensor((0.48145466, 0.4578275, 0.40821073)).view(1, 3, 1, 1)
_STD = torch.tensor((0.26862954, 0.26130258, 0.27577711)).view(1, 3, 1, 1)
_RENDER_CHUNK = 4096


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


def render_tensor(labels: np.ndarray, rng: np.random.Generator, num_classes: int,
                  image_size: int, regime: str) -> torch.Tensor:
    """Normalised image batch (N, 3, S, S), rendered in chunks to bound memory."""
    return torch.cat([_to_tensor(render(labels[i:i + _RENDER_CHUNK], rng, num_classes,
                                        image_size, regime))
                      for i in range(0, len(labels), _RENDER_CHUNK)])


class _CompactEmbedding(torch.nn.Module):
    """The rows of a token embedding the corpus uses, behind a token-id lookup table."""

    def __init__(self, full: torch.nn.Embedding, used: torch.Tensor):
        super().__init__()
        self.register_buffer("lut", torch.zeros(full.num_embeddings, dtype=torch.long))
        self.lut[used] = torch.arange(len(used))
        self.weight = torch.nn.Parameter(full.weight.detach()[used].clone())

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(self.lut[ids], self.weight)


@contextlib.contextmanager
def _compact_token_embedding(model, tokens: torch.Tensor):
    """Train only the embedding rows of ``tokens``; write them back into the full table."""
    full = model.token_embedding
    used = torch.unique(tokens)
    model.token_embedding = compact = _CompactEmbedding(full, used)
    try:
        yield
    finally:
        with torch.no_grad():
            full.weight[used] = compact.weight.detach()
        model.token_embedding = full


class CaptionBank:
    """Every (class, template) caption of the corpus, tokenised once: (K, T, ctx)."""

    def __init__(self, tokenizer, names: list[str]):
        self.num_classes, self.num_templates = len(names), len(CAPTION_TEMPLATES)
        self.tokens = tokenizer([t.format(n) for n in names for t in CAPTION_TEMPLATES]
                                ).view(self.num_classes, self.num_templates, -1)

    def encode_template(self, model, template: int) -> torch.Tensor:
        """Normalised text features of the K class captions under one template (K, E)."""
        return F.normalize(model.encode_text(self.tokens[:, template]), dim=-1)


def contrastive_loss(model, bank: CaptionBank, images: torch.Tensor, y: torch.Tensor,
                     template: int, caption_ce_weight: float, clip_loss) -> torch.Tensor:
    """(1 - w) ClipLoss(image, its caption) + w CE(image vs the K class captions).

    One template per step for every pair and for the class captions: the text tower then
    encodes K captions per step (each distinct caption of the step once, gathered for
    the pairs - the same loss and gradients as encoding every pair's caption), not one
    per pair plus K prompts. Today's step (``benchmarks/toy_pretrain.py``, ``old_loss``)
    drew a template per pair and always used "a photo of a {}." for the CE term; here the
    CE term sees every template over the run, as the zero-shot prompt ensemble does.
    """
    w = caption_ce_weight
    txt = bank.encode_template(model, template)
    img_f = F.normalize(model.encode_image(images), dim=-1)
    scale = model.logit_scale.exp()
    loss = (1 - w) * clip_loss(img_f, txt[y], scale)
    if w > 0:
        loss = loss + w * F.cross_entropy(scale * img_f @ txt.T, y)
    return loss


def pretrain_toy_clip(out_dir: str | Path, num_classes: int, index: int,
                      image_size: int = 32, seed: int = 0, regime: str = "compositional",
                      **params: Any) -> dict[str, Any]:
    """Pre-train toy CLIP ``index``; write ``checkpoint.pt``, ``prior.parquet``, ``pretrain.json``.

    ``image_size`` and ``regime`` are the toy dataset's (``datasets.toy``), so the
    pre-training pairs are drawn from the same world as the downstream images.
    """
    import open_clip
    import pandas as pd

    unknown = set(params) - set(PRETRAIN_DEFAULTS)
    if unknown:
        raise InputValidationError(f"unknown toy pre-training parameter(s) {sorted(unknown)}; "
                                   f"valid: {sorted(PRETRAIN_DEFAULTS)}")
    check_regime(regime)
    p = {**PRETRAIN_DEFAULTS, **params}
    if p["num_pairs"] < p["batch_size"]:
        raise InputValidationError(f"toy pre-training needs num_pairs >= batch_size; got "
                                   f"{p['num_pairs']} < {p['batch_size']}")
    out_dir = Path(out_dir)
    tag = f"toyclip{index}"
    t_start = time.time()
    ensure_model_configs()
    torch.manual_seed(seed * 1000 + index)
    rng = np.random.default_rng([seed, index, 99])

    prior = pretrain_prior(num_classes, index, p["imbalance"])
    names = class_names(num_classes, regime)
    model = open_clip.create_model(TOY_MODEL)
    tokenizer = open_clip.get_tokenizer(TOY_MODEL)
    bank = CaptionBank(tokenizer, names)

    labels = rng.choice(num_classes, size=p["num_pairs"], p=prior)
    t0 = time.time()
    images = render_tensor(labels, rng, num_classes, image_size, regime)
    render_seconds = time.time() - t0
    log.info("%s: rendered %d pre-training pairs (%s regime) in %.1fs", tag, len(labels),
             regime, render_seconds)
    labels_t = torch.from_numpy(labels)

    bs = p["batch_size"]
    steps_per_epoch = len(labels) // bs
    total = steps_per_epoch * p["epochs"]
    clip_loss = open_clip.ClipLoss()
    history = []
    model.train()
    t0 = time.time()
    with _compact_token_embedding(model, bank.tokens):
        # CLIP's (Radford et al. 2021) beta2 0.98 / eps 1e-6: measured +0.01 zero-shot
        # top-1 over torch's 0.999 / 1e-8 in this short run (0.401 vs 0.388, 2 epochs)
        opt = torch.optim.AdamW(model.parameters(), lr=p["lr"], betas=(0.9, 0.98), eps=1e-6,
                                weight_decay=p["weight_decay"])
        sched = torch.optim.lr_scheduler.OneCycleLR(
            opt, max_lr=p["lr"], total_steps=total, pct_start=p["warmup"],
            anneal_strategy="cos")
        report_every = max(1, total // 10)
        step = 0
        for epoch in range(p["epochs"]):
            perm = torch.from_numpy(rng.permutation(len(labels)))
            running = 0.0
            for s in range(steps_per_epoch):
                idx = perm[s * bs:(s + 1) * bs]
                tmpl = int(rng.integers(0, len(CAPTION_TEMPLATES)))
                loss = contrastive_loss(model, bank, images[idx], labels_t[idx], tmpl,
                                        p["caption_ce_weight"], clip_loss)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                with torch.no_grad():  # CLIP clamps the learned temperature at 100
                    model.logit_scale.clamp_(0, np.log(100))
                running += loss.item()
                step += 1
                if step % report_every == 0 or step == total:
                    el = time.time() - t0
                    log.info("%s: step %d/%d (%d%%) epoch %d loss %.3f, %.0f samples/s, "
                             "eta %.0fs", tag, step, total, 100 * step // total, epoch,
                             loss.item(), step * bs / el, el / step * (total - step))
            history.append({"epoch": epoch, "loss": running / steps_per_epoch})
    train_seconds = time.time() - t0

    t0 = time.time()
    stats = evaluate(model, tokenizer, names, prior, p["eval_per_class"],
                     p["probe_per_class"], image_size, regime, rng)
    eval_seconds = time.time() - t0
    out_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(out_dir / "checkpoint.pt") as tmp:
        torch.save(model.state_dict(), tmp)
    with atomic_path(out_dir / "prior.parquet") as tmp:
        pd.DataFrame({"label": np.arange(num_classes, dtype=np.int32),
                      "classname": names, "prior": prior}).to_parquet(tmp, index=False)
    summary = {"model": TOY_MODEL, "index": index, "num_classes": num_classes,
               "regime": regime, "image_size": image_size, "params": p, "history": history,
               "render_seconds": render_seconds, "train_seconds": train_seconds,
               "eval_seconds": eval_seconds, "total_seconds": time.time() - t_start,
               "samples_per_second": total * bs / train_seconds, **stats}
    write_json(out_dir / "pretrain.json", summary)
    log.info("%s done in %.0fs (render %.0fs, train %.0fs, eval %.0fs): wrote checkpoint.pt, "
             "prior.parquet, pretrain.json to %s; %s regime, zero-shot top-1 %.3f, "
             "rho(acc, prior) %.2f, rho(q_hat, prior) %.2f, rho(probe, prior) %s",
             tag, summary["total_seconds"], render_seconds, train_seconds, eval_seconds,
             out_dir, regime, stats["zero_shot_top1"], stats["rho_acc_vs_prior"],
             stats["rho_qhat_vs_prior"],
             "n/a" if stats["rho_probe_vs_prior"] is None else f"{stats['rho_probe_vs_prior']:.2f}")
    return summary


def _estimate_prior(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    from lt_bench.prior import estimate_prior  # GLA's estimator (the same floor)

    return estimate_prior(logits, labels)[0]


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
             regime, rng) -> dict[str, Any]:
    """Zero-shot top-1, rho(acc, prior), rho(q_hat, prior) and the probe's rho, on fresh
    balanced sets of the same world (``per_class`` images per class)."""
    from lt_bench.backbones.prompts import class_text_embeddings

    model.eval()
    k = len(names)
    labels = np.repeat(np.arange(k), per_class)
    text = class_text_embeddings(model, tokenizer, names, CAPTION_TEMPLATES)
    feats = _image_features(model, labels, rng, k, image_size, regime)
    logits = (model.logit_scale.exp() * F.normalize(feats, dim=-1) @ text.T).double().numpy()
    pred = logits.argmax(1)
    acc = per_class_accuracy(pred, labels, k)
    q_hat = _estimate_prior(logits, labels)
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
    return stats
