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
from lt_bench.io import sha256_file
from lt_bench.predictor_spec import write_predictor_spec
from lt_bench.runs.folder import (
    EVAL_SPLITS,
    run_features_path,
    train_counts_of,
    unfinish,
    write_run,
    write_run_features,
)

log = logging.getLogger(__name__)


def _items(split_dir: Path, split: str, k: int) -> list[tuple[str, int]]:
    from lt_bench.data.splits import read_split

    paths, labels = read_split(Path(split_dir) / f"{split}.txt", k)
    return list(zip(paths, labels, strict=True))


def write_finetuned_run(out_dir: Path, *, labels: dict[str, np.ndarray],
                        features: dict[str, dict[str, np.ndarray]],
                        trainable: dict[str, np.ndarray], scale: float, view: str,
                        train_counts: np.ndarray, config: dict[str, Any],
                        info: dict[str, Any], **write_run_kw) -> dict[str, Any]:
    """Write a fine-tuned run folder and evaluate it from what it stores.

    ``labels[split]`` (N,) and ``features[split][view]`` (N, D float32; views "centre"
    and/or "tte") for the val and test splits; ``trainable`` the trained parameters by name,
    ``"head.weight"`` (K, D) among them; ``scale`` the cosine head's; ``view`` the view this
    run reports. Writes ``trainable.safetensors``, ``features_{val,test}.parquet``,
    ``predictor.json``, then :func:`write_run` (``write_run_kw``: history, pretrain_prior,
    group_counts, started_at, extra_metrics) on the logits the seam computes from the
    stored files, so ``lt-bench logits`` equals what the metrics saw. Returns the metrics.
    """
    from safetensors.numpy import save_file

    from lt_bench.io import atomic_path
    from lt_bench.runs.predictors import FinetunedRun

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    # the fine-tuning loop builds both arguments: a miss is its bug, not a user's input
    if "head.weight" not in trainable:
        raise AssertionError("write_finetuned_run: trainable has no 'head.weight'")
    with atomic_path(out_dir / "trainable.safetensors") as tmp:
        save_file({n: np.ascontiguousarray(v, dtype=np.float32)
                   for n, v in trainable.items()}, str(tmp))
    for s in EVAL_SPLITS:
        if view not in features[s]:
            raise AssertionError(f"write_finetuned_run: no {view!r} features for {s}")
        write_run_features(labels[s], features[s], run_features_path(out_dir, s))
    spec = {"kind": "finetuned", "view": view, "views": sorted(features["test"]),
            "scale": float(scale), "head": "trainable.safetensors", "head_key": "head.weight",
            "source": None, "splits": list(EVAL_SPLITS)}
    write_predictor_spec(out_dir, spec)
    seam = FinetunedRun(out_dir, spec)
    logits = {s: seam.split_logits(s) for s in EVAL_SPLITS}
    return write_run(out_dir, logits, train_counts=train_counts, config=config, info=info,
                     **write_run_kw)


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
                                   "`lt-bench fit` or `combine` makes its runs")
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
        # the arithmetic actually used (train autocast, grad scaler, float32 head and eval)
        "precision": result.info["precision"], "view": result.info["view"],
    }
    info = {**result.info, "loss": m.hparams["loss"]}
    metrics = write_finetuned_run(
        out_dir, labels={s: result.logits[s][0] for s in EVAL_SPLITS},
        features={s: result.features[s] for s in EVAL_SPLITS}, trainable=result.trainable,
        scale=result.info["scale"], view=result.info["view"], train_counts=counts,
        config=config, info=info, history=result.history,
        pretrain_prior=lctx.pretrain_prior, group_counts=group_counts, started_at=started,
        extra_metrics={"n_trainable_params": int(result.info.get("n_trainable_params", 0)),
                       "inference_cost": 5.0 if result.info["view"] == "tte" else 1.0})
    from lt_bench.finetune.state import CHECKPOINT_NAME

    (out_dir / CHECKPOINT_NAME).unlink(missing_ok=True)  # finished: the resume state is spent
    return metrics


def finetuned_view_run(method: str, member: Path, out_dir: Path,
                       hparams: dict[str, Any] | None = None) -> dict[str, Any]:
    """A run of a ``FinetunedViewMethod`` from one finished fine-tuning ``member``: another
    stored view through its head (the TTE row), or the k-NN probe of its stored features.
    Nothing is trained; the predictor points at the member's files (``source``)."""
    from lt_bench.methods import METHODS
    from lt_bench.predictor_spec import read_predictor_spec
    from lt_bench.runs.folder import require_finished
    from lt_bench.runs.predictors import FinetunedRun

    started = time.time()
    cls = METHODS.get(method)
    if not getattr(cls, "derived", False):
        raise InputValidationError(f"method {method!r} is not made from a fine-tuned run")
    hp = cls(**(hparams or {})).hparams
    member, out_dir = Path(member), Path(out_dir)
    cfg = require_finished(member, f"{method} member")
    if cfg.get("method") != hp["members"]:
        raise InputValidationError(f"{method} member {member} is a run of method "
                                   f"{cfg.get('method')!r}; expected {hp['members']!r}")
    mspec = read_predictor_spec(member)
    if mspec.get("kind") != "finetuned":
        raise InputValidationError(f"{method} member {member}: predictor kind "
                                   f"{mspec.get('kind')!r}; expected a fine-tuned run that "
                                   "stores its features (kind 'finetuned')")
    if hp["view"] not in mspec.get("views", []):
        raise InputValidationError(
            f"{method} member {member} stores the views {mspec.get('views')}, not "
            f"{hp['view']!r}; fine-tune {hp['members']} with tte: both")
    k = int(cfg["num_classes"])
    spec = {"kind": "finetuned", "view": hp["view"], "views": [hp["view"]],
            "scale": mspec["scale"], "head": mspec["head"], "head_key": mspec["head_key"],
            "source": str(member), "splits": list(EVAL_SPLITS), "num_classes": k}
    if "k" in hp:
        spec["knn"] = {"k": int(hp["k"]), "temperature": float(hp["temperature"]),
                       "bank": "val"}
    unfinish(out_dir)
    write_predictor_spec(out_dir, spec)
    seam = FinetunedRun(out_dir, spec)
    logits = {s: seam.split_logits(s) for s in EVAL_SPLITS}
    from lt_bench.io import read_json
    from lt_bench.runs.ensemble import _train_counts

    mm = read_json(member / "metrics.json")
    config = {
        "method": method, "consumes": "runs", "hparams": hp, "vary": "seed",
        "seed": cfg.get("seed"), "dataset": cfg.get("dataset"), "backbone": cfg.get("backbone"),
        "members": [{"run_dir": str(member), "backbone": cfg.get("backbone"),
                     "method": cfg.get("method"), "seed": cfg.get("seed")}],
        "features_dir": None, "num_classes": k, "split_sha256": cfg.get("split_sha256"),
        "classnames_sha256": cfg.get("classnames_sha256"), "prior": cfg.get("prior"),
        "precision": cfg.get("precision"), "view": hp["view"],
    }
    pretrain_prior = None
    if cfg.get("prior"):
        from lt_bench.prior import read_prior
        from lt_bench.runs.folder import resolve_recorded

        pretrain_prior = read_prior(resolve_recorded(cfg["prior"], member), k).q_hat
    knn = spec.get("knn")
    info = {"member": str(member), "view": hp["view"], **({"k": knn["k"], "bank": "val",
                                                           "temperature": knn["temperature"]}
                                                          if knn else {})}
    return write_run(out_dir, logits, train_counts=_train_counts(member), config=config,
                     info=info, started_at=started, pretrain_prior=pretrain_prior,
                     extra_metrics={
                         # the fine-tuning is the member's: same parameters, its seconds
                         "n_trainable_params": mm.get("n_trainable_params"),
                         "train_seconds": mm.get("train_seconds"),
                         "inference_cost": 5.0 if hp["view"] == "tte" else 1.0})
