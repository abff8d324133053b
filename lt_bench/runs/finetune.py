"""A run of a method that consumes images: fine-tune one backbone (PEFT + cosine head) on
one dataset and seed, store its val/test logits and trained parameters, and finish through
:func:`lt_bench.runs.folder.write_run` like every other run (docs/architecture.md §4).

The head starts from LIFT's text initialisation of the features folder's ``text.parquet``
(single prompt through the projection: the same numbers the frozen-feature heads start
from); the loss is the named head method's; the val/test logits are stored
(``logits_{split}.parquet``), so ``lt-bench logits``, the backdoor and the report need no
images or GPU afterwards. A killed job resumes from its last finished epoch
(``finetune_state.pt`` in the run folder, removed when the run finishes).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from lt_bench.errors import InputValidationError
from lt_bench.io import sha256_file, write_json
from lt_bench.runs.folder import (
    logits_path,
    train_counts_of,
    unfinish,
    write_logits,
    write_run,
)

log = logging.getLogger(__name__)


def _items(split_dir: Path, split: str, k: int) -> list[tuple[str, int]]:
    from lt_bench.data.splits import read_split

    paths, labels = read_split(Path(split_dir) / f"{split}.txt", k)
    return list(zip(paths, labels, strict=True))


def finetune_run(method: str, split_dir: Path, image_root: Path, backbone: str,
                 features_dir: Path, out_dir: Path, seed: int,
                 hparams: dict[str, Any] | None = None, checkpoint: Path | None = None,
                 prior: Path | None = None, device: str = "cpu",
                 group_counts: np.ndarray | None = None) -> dict[str, Any]:
    """Fine-tune ``backbone`` with ``method`` (consumes "images") and write its run folder."""
    from lt_bench.backbones import load_backbone
    from lt_bench.backbones.weights import weights_id
    from lt_bench.data.splits import read_classnames, split_hash
    from lt_bench.features.store import check_origin, read_text_embeddings
    from lt_bench.finetune.loop import finetune
    from lt_bench.methods import METHODS, FitContext
    from lt_bench.prior import read_prior

    started = time.time()
    cls = METHODS.get(method)
    if cls.consumes != "images":
        raise InputValidationError(f"method {method!r} consumes {cls.consumes}, not images; "
                                   f"use `lt-bench train --method {method}`")
    m = cls(**(hparams or {}))
    split_dir, out_dir = Path(split_dir), Path(out_dir)
    names = read_classnames(split_dir / "classnames.txt")
    k = len(names)
    text = read_text_embeddings(Path(features_dir) / "text.parquet")
    # the head starts from this file's text init: it must be this backbone's
    check_origin(Path(features_dir) / "text.parquet", text.meta, backbone=backbone)
    if text.classnames != names:
        raise InputValidationError(f"{features_dir}/text.parquet has other classes than "
                                   f"{split_dir}/classnames.txt; re-extract the features")
    head_init = text.head_init()
    if head_init is None:
        raise InputValidationError(f"backbone {backbone!r} has no text tower: the fine-tuning "
                                   "track starts its head from the text init (LIFT)")
    train = _items(split_dir, "train", k)
    counts = train_counts_of([y for _, y in train], names, f"{split_dir}/train.txt")
    pf = read_prior(prior, k, dataset=text.meta.get("dataset"), backbone=backbone,
                    used_with="this fine-tuning") if prior is not None else None
    loss_method = m.loss_method()
    lctx = FitContext(train=None, val=None, text=text, train_counts=counts, seed=seed,
                      pretrain_prior=pf.q_hat if pf else None, device=device)
    loss_fn = loss_method.prepare_loss(lctx)
    bb = load_backbone(backbone, checkpoint=checkpoint, device="cpu")
    weights = weights_id(bb)  # sha256 of the loaded file (checked against the weights lock)
    cfg = bb.preprocess_cfg()
    unfinish(out_dir)
    result = finetune(model=bb.model, train_items=train,
                      eval_items={s: _items(split_dir, s, k) for s in ("val", "test")},
                      image_root=Path(image_root), num_classes=k, head_init=head_init,
                      loss_fn=loss_fn, hparams=m.engine_hparams(), seed=seed, device=device,
                      work_dir=out_dir, mean=tuple(cfg["mean"]), std=tuple(cfg["std"]),
                      image_size=int(cfg["size"]))
    from safetensors.numpy import save_file

    from lt_bench.io import atomic_path

    with atomic_path(out_dir / "trainable.safetensors") as tmp:
        save_file({n: np.ascontiguousarray(v, dtype=np.float32)
                   for n, v in result.trainable.items()}, str(tmp))
    for s in ("val", "test"):
        write_logits(*result.logits[s], logits_path(out_dir, s))
    write_json(out_dir / "predictor.json", {"kind": "stored", "splits": ["val", "test"],
                                            "trainable": "trainable.safetensors"})
    config = {
        "method": method, "consumes": "images", "hparams": m.hparams, "seed": seed,
        "dataset": text.meta.get("dataset"), "backbone": backbone,
        "split_dir": str(split_dir), "image_root": str(image_root),
        "features_dir": None, "text_features": str(Path(features_dir) / "text.parquet"),
        "text_sha256": sha256_file(Path(features_dir) / "text.parquet"),
        "checkpoint": str(checkpoint) if checkpoint else None,
        "weights": weights,
        "split_sha256": {s: split_hash(split_dir / f"{s}.txt") for s in ("train", "val", "test")},
        "num_classes": k, "prior": str(prior) if prior else None, "device": device,
    }
    info = {**result.info, "loss": m.hparams["loss"]}
    metrics = write_run(out_dir, result.logits, train_counts=counts, config=config, info=info,
                        history=result.history, pretrain_prior=lctx.pretrain_prior,
                        group_counts=group_counts, started_at=started,
                        extra_metrics={"n_trainable_params":
                                       int(result.info.get("n_trainable_params", 0)),
                                       "inference_cost": 1.0})
    from lt_bench.finetune.state import CHECKPOINT_NAME

    (out_dir / CHECKPOINT_NAME).unlink(missing_ok=True)  # finished: the resume state is spent
    return metrics
