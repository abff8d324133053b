"""Hand-written finished run folders (the stage-5 file contract) for report/tracking tests.

Each run folder gets ``config.json``, ``history.json``, ``per_class.parquet``,
``predictor.json`` and, last, ``metrics.json``, with numbers that vary by backbone,
method and seed, D×P keys where the backbone has a prior, and backdoor ensemble runs with
the ``m{M}_*`` ablation keys. No torch, no training: milliseconds per run.
"""

from __future__ import annotations

import json
import zlib
from pathlib import Path

import numpy as np
import pandas as pd

from lt_bench.metrics import D_GROUPS, P_GROUPS, d_groups, p_groups

K = 30
COUNTS = np.round(500 * (5 / 500) ** (np.arange(K) / (K - 1))).astype(int)  # 500 -> 5
METHOD_SKILL = {"zero_shot": 0.0, "ce": 0.1, "la": 0.2, "backdoor": 0.3}


def true_prior(b: int) -> np.ndarray:
    order = np.random.default_rng(100 + b).permutation(K)
    p = np.empty(K)
    p[order] = 0.01 ** (np.arange(K) / (K - 1))
    return p / p.sum()


def _group_mean(acc, mask):
    return float(acc[mask].mean()) if mask.any() else None


def _metrics(acc, counts, q_hat):
    dg = d_groups(counts)
    m = {"top1": float(acc.mean()), "ece": 0.05, "ece_bins": 15, "macro_f1": float(acc.mean()),
         "worst_class": float(acc.min()), "hmean": 0.0, "gmean": 0.0, "n_test": 10 * K,
         "n_classes": K}
    for g in D_GROUPS:
        m[g] = _group_mean(acc, dg == g)
        m[f"n_{g}_classes"] = int((dg == g).sum())
    if q_hat is not None:
        pg = p_groups(q_hat)
        for g in P_GROUPS:
            m[g] = _group_mean(acc, pg == g)
        for d in D_GROUPS:
            for p in P_GROUPS:
                m[f"dp_{d}_{p}"] = _group_mean(acc, (dg == d) & (pg == p))
                m[f"n_dp_{d}_{p}_classes"] = int(((dg == d) & (pg == p)).sum())
    return m


def _write_json(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def write_run(root: Path, dataset: str, backbone: str, method: str, seed: int,
              q_hat: np.ndarray | None, skill: float, extra: dict | None = None,
              config_extra: dict | None = None) -> Path:
    d = Path(root) / dataset / backbone / method / f"seed{seed}"
    d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(zlib.crc32(f"{backbone}/{method}/{seed}".encode()))
    base = 0.25 + skill + 0.3 * np.log(COUNTS) / np.log(500) * (1 - skill)
    acc = np.clip(base + rng.normal(0, 0.08, K), 0, 1).round(2)
    hp = {"lr": 0.01, "epochs": 3, "tau": 1.0} if method != "zero_shot" else {}
    config = {"method": method, "hparams": hp, "seed": seed, "dataset": dataset,
              # absolute, beside the fake runs, never extracted: a relative path would find
              # the features of whatever checkout the tests run in (its demo's results/)
              "backbone": backbone,
              "features_dir": str(Path(root).absolute().parent / "features" / dataset / backbone),
              "feature_sha256": {s: f"{backbone}-{s}-feat" for s in ("train", "val", "test")},
              "split_sha256": {s: f"{dataset}-{s}-split" for s in ("train", "val", "test")},
              "prior": None, "base_runs": {}, "platform": "test", **(config_extra or {})}
    _write_json(d / "config.json", config)
    history = [{"epoch": e, "train_loss": 2.0 / (e + 1) + seed * 0.01, "val_top1": 0.3 + 0.1 * e,
                "lr": 0.01 * (1 - e / 3)} for e in range(hp.get("epochs", 0))]
    _write_json(d / "history.json", history)
    pc = {"label": np.arange(K), "train_count": COUNTS, "d_group": d_groups(COUNTS),
          "accuracy": acc}
    if q_hat is not None:
        pc.update(q_hat=q_hat, p_group=p_groups(q_hat))
    pd.DataFrame(pc).to_parquet(d / "per_class.parquet", index=False)
    _write_json(d / "predictor.json", {"kind": "fake"})
    metrics = {**_metrics(acc, COUNTS, q_hat), "val_top1": float(acc.mean()) - 0.01,
               "n_train": int(COUNTS.sum()), "train_seconds": 0.5 + seed,
               "info": {"fit_seconds": 0.6 + seed}, "method": method, "dataset": dataset,
               "backbone": backbone, "seed": seed, **(extra or {})}
    _write_json(d / "metrics.json", metrics)
    return d


def make_runs(root: Path, dataset: str = "toy", backbones=("toyclip0", "toyclip1"),
              methods=("zero_shot", "ce", "la"), seeds=(0, 1, 2), with_prior: bool = True,
              backdoor: bool = True, prior_dir: Path | None = None) -> list[Path]:
    """Finished run folders under ``root`` (= results/runs); returns them."""
    dirs = []
    qs = {}
    for bi, b in enumerate(backbones):
        q_true = true_prior(bi)
        q_hat = q_true * np.exp(np.random.default_rng(bi).normal(0, 0.3, K))
        q_hat = q_hat / q_hat.sum() if with_prior else None
        qs[b] = q_hat
        if prior_dir is not None and with_prior:
            p = Path(prior_dir) / dataset / f"{b}.parquet"
            p.parent.mkdir(parents=True, exist_ok=True)
            pd.DataFrame({"label": np.arange(K, dtype=np.int32), "q_hat": q_hat,
                          "q_true": q_true}).to_parquet(p, index=False)
        for m in methods:
            for s in seeds:
                dirs.append(write_run(root, dataset, b, m, s, q_hat,
                                      METHOD_SKILL.get(m, 0.1) + 0.02 * bi))
    if backdoor:
        q_mean = None
        if with_prior:
            q_mean = np.mean([qs[b] for b in backbones], axis=0)
            q_mean /= q_mean.sum()
        for s in seeds:
            extra = {}
            for m_size in range(1, len(backbones) + 1):
                for k, v in (("top1", 0.4), ("many", 0.7), ("medium", 0.4), ("few", 0.1)):
                    extra[f"m{m_size}_{k}"] = v + 0.03 * m_size + 0.01 * s
                extra[f"m{m_size}_n_subsets"] = len(backbones) if m_size == 1 else 1
            members = [{"run_dir": str(Path(root) / dataset / b / "la" / f"seed{s}"),
                        "backbone": b} for b in backbones]
            dirs.append(write_run(root, dataset, "ensemble", "backdoor", s, q_mean,
                                  METHOD_SKILL["backdoor"], extra,
                                  {"members": members, "hparams": {"rule": "sum"}}))
    return dirs


def store_matching_logits(run_dir: Path) -> None:
    """Give a hand-written run test logits (kind ``stored``) that get its per-class
    accuracy right on 10 images per class, so `lt-bench significance` can rebuild them."""
    from lt_bench.runs.folder import write_logits

    acc = pd.read_parquet(run_dir / "per_class.parquet")["accuracy"].to_numpy()
    k = len(acc)
    labels = np.repeat(np.arange(k), 10)
    right = np.concatenate([np.arange(10) < round(10 * a) for a in acc])
    pred = np.where(right, labels, (labels + 1) % k)
    write_logits(labels, np.eye(k, dtype=np.float32)[pred], run_dir / "logits_test.parquet")
    (run_dir / "predictor.json").write_text(json.dumps({"kind": "stored"}))
