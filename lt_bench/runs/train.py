"""One run: fit a method on a (dataset, backbone, seed), evaluate, write the run folder.

Run folder (DESIGN §3 stage 5): ``config.json`` (resolved: method, hyper-parameters,
inputs with their hashes), ``predictor.json`` + ``predictor.safetensors`` (rebuild the
logits without retraining), ``metrics.json``, ``per_class.parquet``, ``history.json``.
``metrics.json`` is written last: its presence marks a finished run.
"""

from __future__ import annotations

import json
import logging
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from lt_bench.features.store import (
    FeatureSplit,
    TextEmbeddings,
    read_features,
    read_text_embeddings,
)
from lt_bench.io import atomic_path, read_json, sha256_file, write_json
from lt_bench.methods import METHODS, FitContext
from lt_bench.methods.predictor import load_predictor
from lt_bench.metrics import evaluate

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")


def load_features_dir(features_dir: Path) -> tuple[dict[str, FeatureSplit], TextEmbeddings]:
    features_dir = Path(features_dir)
    splits = {s: read_features(features_dir / f"{s}.parquet") for s in SPLITS}
    text = read_text_embeddings(features_dir / "text.parquet")
    ids = {(s, f.meta.get("dataset"), f.meta.get("backbone")) for s, f in splits.items()}
    if len({(d, b) for _, d, b in ids}) != 1:  # features from different stages mixed up
        raise ValueError(f"{features_dir}: splits disagree on dataset/backbone: {sorted(ids)}")
    return splits, text


def read_prior(path: Path | None) -> np.ndarray | None:
    if path is None:
        return None
    df = pd.read_parquet(path)
    return df.sort_values("label")["q_hat"].to_numpy()


def read_prior_temperature(path: Path | None) -> float | None:
    """The temperature T the prior q̂ was fitted at (schema metadata of the prior file)."""
    if path is None:
        return None
    meta = json.loads((pq.read_schema(path).metadata or {}).get(b"lt_bench", b"{}"))
    return meta.get("temperature")


def may_tune(dataset: str | None) -> bool:
    """False where the dataset's val split (at its default parameters) overlaps train."""
    from lt_bench.data import DATASETS

    if dataset not in DATASETS:
        return True
    return not DATASETS.get(dataset)().val_overlaps_train


def train_run(method: str, features_dir: Path, out_dir: Path, seed: int,
              hparams: dict[str, Any] | None = None, prior: Path | None = None,
              base_runs: dict[str, Path] | None = None,
              tune: bool | None = None) -> dict[str, Any]:
    """Fit ``method`` and write its run folder. ``tune``: may knobs be tuned on val (None:
    decided by the dataset's default ``val_overlaps_train``; the workflow passes it)."""
    features_dir, out_dir = Path(features_dir), Path(out_dir)
    cls = METHODS.get(method)
    if getattr(cls, "kind", None) == "ensemble":
        raise ValueError(f"method {method!r} combines runs of several backbones and is not "
                         f"trained on one; use `lt-bench {method} --members RUN_DIR... --out DIR`")
    m = cls(**(hparams or {}))
    base_runs = {k: Path(v) for k, v in (base_runs or {}).items()}
    missing = [r for r in cls.requires if r not in base_runs]
    if missing:
        raise ValueError(f"method {method!r} builds on {list(cls.requires)}; "
                         f"missing base run(s): {missing}")
    for name, d in base_runs.items():
        if not (d / "metrics.json").is_file():
            raise FileNotFoundError(f"method {method!r}: base run {name!r} not finished "
                                    f"(no metrics.json in {d})")
    splits, text = load_features_dir(features_dir)
    k = len(text.classnames)
    counts = np.bincount(splits["train"].labels, minlength=k)
    q_hat = read_prior(prior)
    if cls.needs_prior and q_hat is None:
        raise ValueError(f"method {method!r} needs the backbone's estimated prior (--prior)")
    if q_hat is not None and len(q_hat) != k:
        raise ValueError(f"prior {prior} covers {len(q_hat)} classes; the features in "
                         f"{features_dir} have {k}")
    if tune is None:
        tune = may_tune(splits["train"].meta.get("dataset"))
    ctx = FitContext(train=splits["train"], val=splits["val"], test=splits["test"], text=text,
                     train_counts=counts, hparams=m.hparams, seed=seed, prior=q_hat,
                     base={n: load_predictor(d) for n, d in base_runs.items()},
                     tune=tune, features_dir=features_dir,
                     prior_temperature=read_prior_temperature(prior))
    t0 = time.time()
    result = m.fit(ctx)
    fit_seconds = time.time() - t0

    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "metrics.json").unlink(missing_ok=True)  # a rerun is unfinished until the end
    result.predictor.save(out_dir)
    meta = splits["train"].meta
    config = {
        "method": method, "hparams": m.hparams, "seed": seed,
        "dataset": meta.get("dataset"), "backbone": meta.get("backbone"),
        "features_dir": str(features_dir),
        "feature_sha256": {s: sha256_file(features_dir / f"{s}.parquet") for s in SPLITS},
        "split_sha256": {s: f.meta.get("split_sha256") for s, f in splits.items()},
        "prior": str(prior) if prior else None,
        "tune": tune,
        "base_runs": {k: str(v) for k, v in base_runs.items()},
        "platform": platform.platform(),
    }
    write_json(out_dir / "config.json", config)
    write_json(out_dir / "history.json", result.history)
    return finish_run(out_dir, result.predictor.logits, splits, counts, q_hat,
                      info={**result.info, "fit_seconds": fit_seconds}, config=config)


def finish_run(out_dir: Path, logits_fn, splits, counts, q_hat, info, config) -> dict[str, Any]:
    """Evaluate on val and test, write per_class.parquet and (last) metrics.json."""
    val_m, _ = evaluate(logits_fn(splits["val"].features), splits["val"].labels, counts, q_hat)
    test_m, per_class = evaluate(logits_fn(splits["test"].features), splits["test"].labels,
                                 counts, q_hat)
    with atomic_path(out_dir / "per_class.parquet") as tmp:
        pd.DataFrame(per_class).to_parquet(tmp, index=False)
    metrics = {**test_m, "val_top1": val_m["top1"], "n_train": int(counts.sum()),
               "train_seconds": float(info.get("train_seconds", info.get("fit_seconds", 0.0))),
               "info": info, "method": config["method"], "dataset": config["dataset"],
               "backbone": config["backbone"], "seed": config["seed"]}
    write_json(out_dir / "metrics.json", metrics)
    log.info("%s: test top1 %.4f (many %s, medium %s, few %s)", out_dir, metrics["top1"],
             metrics["many"], metrics["medium"], metrics["few"])
    return metrics


def run_logits(run_dir: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Rebuild a finished run's logits on ``split``: (labels, logits) in split-list order."""
    run_dir = Path(run_dir)
    cfg_path = run_dir / "config.json"
    if not cfg_path.is_file():
        raise FileNotFoundError(f"{run_dir}: not a run folder (no config.json)")
    cfg = read_json(cfg_path)
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; valid: {', '.join(SPLITS)}")
    predictor = load_predictor(run_dir)
    if getattr(predictor, "kind", None) == "ensemble":
        return predictor.split_logits(split)
    feats = read_features(Path(cfg["features_dir"]) / f"{split}.parquet")
    return feats.labels, predictor.logits(feats.features)


def write_logits(labels: np.ndarray, logits: np.ndarray, out: Path) -> None:
    """Contract: ``label`` int32, ``logits`` fixed_size_list<float32, K>, split-list order."""
    logits = np.ascontiguousarray(logits, dtype=np.float32)
    table = pa.table({
        "label": pa.array(np.asarray(labels, dtype=np.int32)),
        "logits": pa.FixedSizeListArray.from_arrays(pa.array(logits.reshape(-1)),
                                                    logits.shape[1]),
    })
    with atomic_path(out) as tmp:
        pq.write_table(table, tmp)


def read_logits(path: Path) -> tuple[np.ndarray, np.ndarray]:
    table = pq.read_table(path)
    col = table.column("logits").combine_chunks()
    return (table.column("label").to_numpy().astype(np.int64),
            col.flatten().to_numpy().reshape(-1, col.type.list_size))
