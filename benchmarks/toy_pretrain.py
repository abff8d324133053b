"""Toy-CLIP pre-training speed: the previous recipe vs today's, measured side by side.

    .venv/bin/python benchmarks/toy_pretrain.py [--threads 1] [--repeats 3] [--full]

(a) One optimiser step at the demo's shape (config.yaml ``datasets: toy``), interleaved in
    blocks so machine load hits both alike; prints samples/s of each and the ratio:
    old = the step before the speed-up (``old_loss``: model config ``OLD_MODEL_CFG`` - vision
    width 128, text width 128 x 3 layers -, batch 256, every pair's caption encoded plus
    the K "a photo of a {}." prompts, dense 49,408-row token embedding in AdamW);
    new = ``lt_bench.pretrain.model.contrastive_loss`` with the shipped model
    config, config.yaml's batch, K captions of one template per step, compact embedding.
(b) Whole-run training time: the old recipe (3 epochs x 50k pairs) at the old rate vs
    config.yaml's recipe at the new rate.
(c) ``--full``: one real pre-training with config.yaml's values (toyclip0) and its
    pretrain.json numbers (wall, zero-shot top-1, the three rho's).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from lt_bench.backbones.catalog import TOY_MODEL  # noqa: E402
from lt_bench.backbones.spec import ensure_model_configs  # noqa: E402
from lt_bench.data.toy import CAPTION_TEMPLATES, class_names  # noqa: E402
from lt_bench.pretrain.model import (  # noqa: E402
    CaptionBank,
    compact_token_embedding,
    contrastive_loss,
    render_tensor,
)
from lt_bench.pretrain.toy_clip import (  # noqa: E402
    PRETRAIN_DEFAULTS,
    pretrain_prior,
    pretrain_toy_clip,
)

OLD_RECIPE = {"num_pairs": 50000, "epochs": 3, "batch_size": 256}
#: lt-toy-vit-p8.json before the speed-up (git show 2e15568:lt_bench/backbones/model_configs/...)
OLD_MODEL_CFG = {
    "embed_dim": 128,
    "vision_cfg": {"image_size": 32, "layers": 4, "width": 128, "head_width": 32,
                   "patch_size": 8},
    "text_cfg": {"context_length": 12, "vocab_size": 49408, "width": 128, "heads": 4,
                 "layers": 3},
}


def old_loss(model, caption_tokens, class_prompt, images, y, tmpl, w, clip_loss):
    """The training step as it was before the speed-up (git show 2e15568:lt_bench/backbones/
    toy_pretrain.py): a template per pair, every pair's caption encoded, plus the K prompts."""
    img_f = F.normalize(model.encode_image(images), dim=-1)
    txt_f = F.normalize(model.encode_text(caption_tokens[y, tmpl]), dim=-1)
    scale = model.logit_scale.exp()
    loss = (1 - w) * clip_loss(img_f, txt_f, scale)
    cls_f = F.normalize(model.encode_text(class_prompt), dim=-1)
    return loss + w * F.cross_entropy(scale * img_f @ cls_f.T, y)


def _old_model_name() -> str:
    import open_clip

    d = tempfile.mkdtemp(prefix="lt-toy-old-")
    Path(d, "lt-toy-old-p8.json").write_text(json.dumps(OLD_MODEL_CFG))
    open_clip.add_model_config(d)
    return "lt-toy-old-p8"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3, help="interleaved blocks per variant")
    ap.add_argument("--steps", type=int, default=4, help="steps per block")
    ap.add_argument("--full", action="store_true", help="also run one real pre-training")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    import open_clip

    cfg = yaml.safe_load((REPO / "config.yaml").read_text())
    new = {**PRETRAIN_DEFAULTS, **cfg["toy_pretrain"]}
    toy = cfg["datasets"]["toy"]
    k, size = toy["num_classes"], toy["image_size"]
    regime = toy.get("regime", "compositional")
    ensure_model_configs()
    old_model = _old_model_name()
    tok = open_clip.get_tokenizer(TOY_MODEL)
    names = class_names(k, regime)
    clip_loss = open_clip.ClipLoss()
    rng = np.random.default_rng(0)
    prior = pretrain_prior(k, 0, new["imbalance"])

    def batch(bs):
        y = rng.choice(k, size=bs, p=prior)
        return (render_tensor(y, rng, k, size, regime), torch.from_numpy(y),
                torch.from_numpy(rng.integers(0, len(CAPTION_TEMPLATES), bs)))

    def make(kind):
        torch.manual_seed(0)
        model = open_clip.create_model(old_model if kind == "old" else TOY_MODEL)
        model.train()
        bank = CaptionBank(tok, names)
        if kind == "old":
            caps, prompt = bank.tokens, bank.tokens[:, 0]
            ctx, bs = contextlib.nullcontext(), OLD_RECIPE["batch_size"]

            def loss_fn(x, y, t):
                return old_loss(model, caps, prompt, x, y, t, new["caption_ce_weight"],
                                clip_loss)
        else:
            ctx, bs = compact_token_embedding(model, bank.tokens), new["batch_size"]

            def loss_fn(x, y, t):
                return contrastive_loss(model, bank, x, y, int(t[0]),
                                           new["caption_ce_weight"], clip_loss)
        ctx.__enter__()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.1)
        data = [batch(bs) for _ in range(a.steps)]

        def block():
            t0 = time.perf_counter()
            for x, y, t in data:
                loss = loss_fn(x, y, t)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            return a.steps * bs / (time.perf_counter() - t0)
        block()  # warm-up
        return block

    runs = {"old": make("old"), "new": make("new")}
    rates: dict[str, list[float]] = {"old": [], "new": []}
    for _ in range(a.repeats):
        for kind, block in runs.items():
            rates[kind].append(block())
    old_r, new_r = (statistics.median(rates[x]) for x in ("old", "new"))
    print(f"(a) one step, {k} classes, {regime} regime, {a.threads} thread(s), "
          f"median of {a.repeats} blocks of {a.steps} steps")
    print(f"    old step (batch {OLD_RECIPE['batch_size']}, vision/text width 128): "
          f"{old_r:7.0f} samples/s")
    print(f"    new step (batch {new['batch_size']}, {TOY_MODEL}): {new_r:7.0f} samples/s"
          f"   ratio new/old {new_r / old_r:.2f}x")
    old_samples = OLD_RECIPE["num_pairs"] // 256 * 256 * OLD_RECIPE["epochs"]
    new_samples = new["num_pairs"] // new["batch_size"] * new["batch_size"] * new["epochs"]
    print(f"(b) training samples: old {old_samples} -> new {new_samples}; training time "
          f"old {old_samples / old_r:.0f}s -> new {new_samples / new_r:.0f}s "
          f"({old_samples / old_r / (new_samples / new_r):.1f}x)")
    if a.full:
        with tempfile.TemporaryDirectory() as d:
            s = pretrain_toy_clip(d, num_classes=k, index=0, image_size=size,
                                     seed=toy.get("seed", 0), regime=regime,
                                     **cfg["toy_pretrain"])
        keys = ("total_seconds", "render_seconds", "train_seconds", "eval_seconds",
                "samples_per_second", "zero_shot_top1", "rho_acc_vs_prior",
                "rho_qhat_vs_prior", "rho_probe_vs_prior")
        print("(c) full run:", json.dumps({x: s[x] for x in keys}))


if __name__ == "__main__":
    main()
