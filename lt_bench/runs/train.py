"""A run of a features-consuming method: fit it on one (dataset, backbone, seed)'s cached
features, save its predictor, and finish through :func:`lt_bench.runs.folder.write_run`."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from lt_bench.errors import InputValidationError
from lt_bench.io import sha256_file
from lt_bench.runs.folder import (
    SPLITS,
    require_finished,
    train_counts_of,
    unfinish,
    write_run,
)
from lt_bench.runs.predictors import load_run_predictor, split_logits_of

log = logging.getLogger(__name__)


def load_features_dir(features_dir: Path):
    """(splits by name, text embeddings) of one (dataset, backbone) features folder."""
    from lt_bench.features.store import read_features, read_text_embeddings

    features_dir = Path(features_dir)
    splits = {s: read_features(features_dir / f"{s}.parquet") for s in SPLITS}
    text = read_text_embeddings(features_dir / "text.parquet")
    ids = {(s, f.meta.get("dataset"), f.meta.get("backbone")) for s, f in splits.items()}
    if len({(d, b) for _, d, b in ids}) != 1:  # features from different stages mixed up
        raise InputValidationError(
            f"{features_dir}: splits disagree on dataset/backbone: {sorted(ids)}")
    return splits, text


def _train_views(features_dir: Path, train) -> np.ndarray | None:
    """The cached augmented train views (``extract.train_views``), if that file exists;
    their rows must be the train split's (same labels, same order)."""
    path = Path(features_dir) / "train_views.parquet"
    if not path.is_file():
        return None
    from lt_bench.features.store import read_feature_views

    labels, views, _ = read_feature_views(path)
    if not np.array_equal(labels, train.labels):
        raise InputValidationError(f"{path}: its rows are not train.parquet's (labels differ); "
                                   "re-extract the features")
    return views


def may_tune(dataset: str | None) -> bool:
    """False where the dataset's val split (at its default parameters) overlaps train."""
    from lt_bench.data import DATASETS

    if dataset not in DATASETS:
        return True
    return not DATASETS.get(dataset)().val_overlaps_train


def check_base_runs(method: str, requires: tuple[str, ...], base_runs: dict[str, Path],
                    dataset: str | None, backbone: str | None, seed: int) -> None:
    """Each base run exists, is finished, and is the required method on the same dataset,
    backbone and seed (every stage is a public command, so nothing is assumed)."""
    missing = [r for r in requires if r not in base_runs]
    if missing:
        raise InputValidationError(f"method {method!r} builds on {list(requires)}; "
                                   f"missing base run(s): {missing} (--base NAME=RUN_DIR)")
    extra = sorted(set(base_runs) - set(requires))
    if extra:
        raise InputValidationError(f"method {method!r} builds on {list(requires) or 'nothing'}; "
                                   f"unexpected base run(s): {extra}")
    for name, d in base_runs.items():
        cfg = require_finished(d, f"method {method!r}: base run {name!r}")
        want = {"method": name, "dataset": dataset, "backbone": backbone, "seed": seed}
        got = {k: cfg.get(k) for k in want}
        wrong = {k: (got[k], v) for k, v in want.items() if got[k] != v}
        if wrong:
            detail = ", ".join(f"{k} {g!r} (expected {w!r})" for k, (g, w) in wrong.items())
            raise InputValidationError(f"method {method!r}: base run {name!r} at {d} does not "
                                       f"match this run: {detail}")


def train_run(method: str, features_dir: Path, out_dir: Path, seed: int,
              hparams: dict[str, Any] | None = None, prior: Path | None = None,
              base_runs: dict[str, Path] | None = None, tune: bool | None = None,
              device: str = "cpu", group_counts: np.ndarray | None = None) -> dict[str, Any]:
    """Fit ``method`` (consumes "features") and write its run folder. ``tune``: may knobs be
    tuned on val (None: decided by the dataset's default ``val_overlaps_train``; the
    workflow passes it from the configured dataset parameters)."""
    from lt_bench.methods import METHODS, FitContext
    from lt_bench.prior import read_prior

    started = time.time()
    features_dir, out_dir = Path(features_dir), Path(out_dir)
    cls = METHODS.get(method)
    if cls.consumes != "features":
        raise InputValidationError(
            f"method {method!r} consumes {cls.consumes}, not cached features; "
            + ("give its member runs: `lt-bench train --method "
               f"{method} --members RUN_DIR... --out DIR`" if cls.consumes == "runs" else
               f"run it with `lt-bench finetune --method {method}`"))
    m = cls(**(hparams or {}))
    base_runs = {k: Path(v) for k, v in (base_runs or {}).items()}
    splits, text = load_features_dir(features_dir)
    meta = splits["train"].meta
    check_base_runs(method, cls.requires, base_runs, meta.get("dataset"),
                    meta.get("backbone"), seed)
    k = len(text.classnames)
    counts = train_counts_of(splits["train"].labels, text.classnames,
                             f"{features_dir}/train.parquet")
    pf = read_prior(prior, k) if prior is not None else None
    if cls.needs_prior and pf is None:
        raise InputValidationError(f"method {method!r} needs the backbone's estimated prior "
                                   "(--prior results/prior/{dataset}/{backbone}.parquet)")
    if tune is None:
        tune = may_tune(meta.get("dataset"))
    ctx = FitContext(train=splits["train"], val=splits["val"], text=text, train_counts=counts,
                     seed=seed, pretrain_prior=pf.q_hat if pf else None,
                     pretrain_prior_temperature=pf.temperature if pf else None,
                     base_predictors={n: load_run_predictor(d) for n, d in base_runs.items()},
                     tune=tune, features_dir=features_dir, device=device,
                     train_views=_train_views(features_dir, splits["train"]))
    unfinish(out_dir)
    t0 = time.time()
    result = m.fit(ctx)
    fit_seconds = time.time() - t0
    result.predictor.save(out_dir)
    config = {
        "method": method, "consumes": "features", "hparams": m.hparams, "seed": seed,
        "dataset": meta.get("dataset"), "backbone": meta.get("backbone"),
        "features_dir": str(features_dir),
        "feature_sha256": {s: sha256_file(features_dir / f"{s}.parquet") for s in SPLITS},
        "split_sha256": {s: f.meta.get("split_sha256") for s, f in splits.items()},
        "num_classes": k,
        "prior": str(prior) if prior else None,
        "tune": tune, "device": device,
        "base_runs": {n: str(v) for n, v in base_runs.items()},
    }
    logits = {s: (splits[s].labels, split_logits_of(result.predictor, splits[s]))
              for s in ("val", "test")}
    n_params = int(sum(np.asarray(t.weight).size for t in getattr(result.predictor, "terms", [])
                       )) if result.history else 0
    return write_run(out_dir, logits, train_counts=counts, config=config,
                     info={**result.info, "fit_seconds": fit_seconds}, history=result.history,
                     pretrain_prior=ctx.pretrain_prior, group_counts=group_counts,
                     started_at=started,
                     extra_metrics={"n_trainable_params": n_params, "inference_cost": 1.0})


