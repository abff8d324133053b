"""The backdoor adjustment over M backbones (DESIGN §1): combine finished runs, no retraining.

``P(y | do(x)) = Σ_c P(y | f_c(x), c) · P(c)`` with one foundation model per confounder
value c and ``P(c) = 1/M``. The authors' code fine-tunes each backbone with the
logit-adjusted loss and, at test time, **sums the raw logits** of the M models
(``rule: sum``, the default). ``rule: prob_mean`` averages the softmax probabilities
instead (the literal reading of the formula; logits returned as ``log mean p``).

The ensemble run folder (``results/runs/{dataset}/ensemble/backdoor/seed{seed}/``) holds
the usual ``metrics.json`` and ``per_class.parquet``, a ``config.json`` listing the
members, and a ``predictor.json`` of kind ``ensemble``, so ``lt-bench logits`` rebuilds
the combined logits from the members' saved predictors. Besides the usual metrics of the
full ensemble, ``metrics.json`` reports, for each subset size m = 1..M, the mean over all
``C(M, m)`` subsets of members (``m{m}_top1``, ``m{m}_many``, ``m{m}_medium``,
``m{m}_few``, ``m{m}_n_subsets``): the paper's M-ablation table. ``best_member_*`` are
the metrics of the member with the best test top-1 and ``gain_*`` the ensemble's gain
over it.

P-groups need one prior, but each member has its own q̂: the ensemble uses the mean of
its members' q̂ (renormalised), and reports no P-groups if any member has none.
"""

from __future__ import annotations

import itertools
import logging
import platform
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
from scipy.special import logsumexp

from lt_bench.io import atomic_path, read_json, write_json
from lt_bench.methods.predictor import PREDICTOR_LOADERS
from lt_bench.metrics import D_GROUPS, evaluate

log = logging.getLogger(__name__)

RULES = ("sum", "prob_mean")
ABLATION_KEYS = ("top1", *D_GROUPS)
SPLITS = ("train", "val", "test")


def combine(logits: list[np.ndarray], rule: str = "sum") -> np.ndarray:
    """Combine member logits: ``Σ_c z_c`` (sum) or ``log((1/M) Σ_c softmax(z_c))`` (prob_mean)."""
    if rule not in RULES:
        raise ValueError(f"unknown ensemble rule {rule!r}; valid: {', '.join(RULES)}")
    stack = np.stack([np.asarray(z, dtype=np.float64) for z in logits])
    if rule == "sum":
        return stack.sum(0)
    logp = stack - logsumexp(stack, axis=2, keepdims=True)
    return logsumexp(logp, axis=0) - np.log(len(logits))


class EnsemblePredictor:
    """Logits of an ensemble run, rebuilt from its members' saved predictors."""

    kind = "ensemble"

    def __init__(self, members: list[str], rule: str = "sum"):
        if rule not in RULES:
            raise ValueError(f"unknown ensemble rule {rule!r}; valid: {', '.join(RULES)}")
        self.members = [str(m) for m in members]
        self.rule = rule

    def member_logits(self, split: str) -> tuple[np.ndarray, list[np.ndarray]]:
        from lt_bench.runs import run_logits

        labels, out = None, []
        for m in self.members:
            y, z = run_logits(Path(m), split)
            if labels is not None and not np.array_equal(labels, y):
                raise ValueError(f"ensemble members {self.members[0]} and {m} disagree on the "
                                 f"labels of their {split} rows (different splits or row order)")
            labels = y
            out.append(z)
        return labels, out

    def split_logits(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        """(labels, combined logits) on ``split``, in split-list order."""
        labels, zs = self.member_logits(split)
        return labels, combine(zs, self.rule).astype(np.float32)

    def logits(self, features: np.ndarray) -> np.ndarray:
        raise TypeError("an ensemble's logits come from its members' runs, not from one "
                        "feature matrix; use split_logits(split) (lt-bench logits RUN_DIR)")

    def save(self, run_dir: Path) -> None:
        write_json(Path(run_dir) / "predictor.json",
                   {"kind": "ensemble", "rule": self.rule, "members": self.members})


def _load_ensemble(run_dir: Path, spec: dict) -> EnsemblePredictor:
    return EnsemblePredictor(spec["members"], spec.get("rule", "sum"))


PREDICTOR_LOADERS["ensemble"] = _load_ensemble


# --- checks -----------------------------------------------------------------------------

def _member(run_dir: Path) -> dict[str, Any]:
    if not (run_dir / "metrics.json").is_file():
        raise FileNotFoundError(f"ensemble member {run_dir} is not a finished run "
                                "(no metrics.json)")
    cfg = read_json(run_dir / "config.json")
    if not cfg.get("features_dir"):
        raise ValueError(f"ensemble member {run_dir} has no features folder (is it itself an "
                         "ensemble?); members must be single-backbone runs")
    return cfg


def _rows(features_dir: Path, split: str) -> tuple[list[str], np.ndarray]:
    path = features_dir / f"{split}.parquet"
    try:
        t = pq.read_table(path, columns=["path", "label"])
    except FileNotFoundError:
        raise FileNotFoundError(f"features {path} not found") from None
    return t.column("path").to_pylist(), t.column("label").to_numpy()


def _classnames(features_dir: Path) -> list[str]:
    return pq.read_table(features_dir / "text.parquet",
                         columns=["classname"]).column("classname").to_pylist()


def check_members(run_dirs: list[Path]) -> list[dict[str, Any]]:
    """Configs of the member runs; error naming both runs where two are not combinable
    (dataset, class set, or the rows of a split: labels, paths, split-file hash)."""
    if len(run_dirs) < 2:
        raise ValueError(f"an ensemble needs at least two member runs, got {len(run_dirs)}")
    if len(set(map(str, run_dirs))) != len(run_dirs):
        raise ValueError(f"ensemble members repeat a run: {[str(r) for r in run_dirs]}")
    cfgs = [_member(r) for r in run_dirs]
    ref, ref_cfg = run_dirs[0], cfgs[0]
    ref_fd = Path(ref_cfg["features_dir"])
    ref_names = _classnames(ref_fd)
    ref_rows = {s: _rows(ref_fd, s) for s in SPLITS}
    for r, cfg in zip(run_dirs[1:], cfgs[1:], strict=True):
        both = f"ensemble members {ref} and {r}"
        if cfg.get("dataset") != ref_cfg.get("dataset"):
            raise ValueError(f"{both} are on different datasets: "
                             f"{ref_cfg.get('dataset')!r} vs {cfg.get('dataset')!r}")
        fd = Path(cfg["features_dir"])
        names = _classnames(fd)
        if names != ref_names:
            diff = sorted(set(names) ^ set(ref_names))[:5]
            raise ValueError(f"{both} have different class sets ({len(ref_names)} vs "
                             f"{len(names)} classes; e.g. differing: {diff or 'the order'})")
        for s in SPLITS:
            a, b = (ref_cfg.get("split_sha256") or {}).get(s), (cfg.get("split_sha256") or {}).get(s)
            if a and b and a != b:
                raise ValueError(f"{both} were built from different {s} split lists "
                                 f"(split sha256 {a[:12]}… vs {b[:12]}…)")
            paths, labels = _rows(fd, s)
            if paths != ref_rows[s][0] or not np.array_equal(labels, ref_rows[s][1]):
                raise ValueError(f"{both} have different {s} rows (image paths or their order "
                                 f"differ: {len(ref_rows[s][0])} vs {len(paths)} rows); "
                                 "logits can only be combined row by row")
    return cfgs


def _mean_prior(cfgs: list[dict[str, Any]]) -> tuple[np.ndarray | None, list[str | None]]:
    from lt_bench.runs import read_prior

    paths = [c.get("prior") for c in cfgs]
    if not all(paths):
        return None, paths
    q = np.mean([read_prior(Path(p)) for p in paths], axis=0)
    return q / q.sum(), paths


# --- the ensemble run --------------------------------------------------------------------

def _subset_metrics(zs: list[np.ndarray], labels: np.ndarray, counts: np.ndarray,
                    rule: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for m in range(1, len(zs) + 1):
        rows = [evaluate(combine([zs[i] for i in sub], rule), labels, counts)[0]
                for sub in itertools.combinations(range(len(zs)), m)]
        for key in ABLATION_KEYS:
            vals = [r[key] for r in rows if r[key] is not None]
            out[f"m{m}_{key}"] = float(np.mean(vals)) if vals else None
        out[f"m{m}_n_subsets"] = len(rows)
    return out


def backdoor_run(members: list[Path | str], out_dir: Path | str, rule: str = "sum") -> dict:
    """Combine finished member runs into an ensemble run folder; returns its metrics."""
    run_dirs = [Path(m) for m in members]
    out_dir = Path(out_dir)
    if rule not in RULES:
        raise ValueError(f"unknown ensemble rule {rule!r}; valid: {', '.join(RULES)}")
    cfgs = check_members(run_dirs)
    pred = EnsemblePredictor([str(r) for r in run_dirs], rule)
    k = len(_classnames(Path(cfgs[0]["features_dir"])))
    train_labels = _rows(Path(cfgs[0]["features_dir"]), "train")[1]
    counts = np.bincount(train_labels, minlength=k)
    q_hat, prior_paths = _mean_prior(cfgs)

    y_test, z_test = pred.member_logits("test")
    y_val, z_val = pred.member_logits("val")
    test_m, per_class = evaluate(combine(z_test, rule), y_test, counts, q_hat)
    val_m, _ = evaluate(combine(z_val, rule), y_val, counts)
    member_m = [evaluate(z, y_test, counts)[0] for z in z_test]
    best = int(np.argmax([m["top1"] for m in member_m]))

    seeds = sorted({c.get("seed") for c in cfgs}, key=str)
    backbones = [c.get("backbone") for c in cfgs]
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "metrics.json").unlink(missing_ok=True)  # unfinished until the end
    pred.save(out_dir)
    config = {
        "method": "backdoor", "hparams": {"rule": rule},
        "seed": seeds[0] if len(seeds) == 1 else None,
        "dataset": cfgs[0].get("dataset"), "backbone": "ensemble",
        "members": [{"run_dir": str(r), "backbone": c.get("backbone"),
                     "method": c.get("method"), "seed": c.get("seed")}
                    for r, c in zip(run_dirs, cfgs, strict=True)],
        "features_dir": None,
        "split_sha256": cfgs[0].get("split_sha256"),
        "prior": "mean of the members' q̂" if q_hat is not None else None,
        "member_priors": prior_paths,
        "platform": platform.platform(),
    }
    write_json(out_dir / "config.json", config)
    with atomic_path(out_dir / "per_class.parquet") as tmp:
        pd.DataFrame(per_class).to_parquet(tmp, index=False)
    metrics = {
        **test_m, "val_top1": val_m["top1"], "n_train": int(counts.sum()),
        "train_seconds": 0.0, "n_members": len(run_dirs),
        **_subset_metrics(z_test, y_test, counts, rule),
        **{f"best_member_{key}": member_m[best][key] for key in ABLATION_KEYS},
        **{f"gain_{key}": (None if test_m[key] is None or member_m[best][key] is None
                           else test_m[key] - member_m[best][key]) for key in ABLATION_KEYS},
        "info": {"rule": rule, "members": backbones, "best_member": backbones[best],
                 "member_top1": {b: m["top1"] for b, m in zip(backbones, member_m,
                                                               strict=True)},
                 "p_groups_prior": "mean of the members' q̂" if q_hat is not None else None},
        "method": "backdoor", "dataset": config["dataset"], "backbone": "ensemble",
        "seed": config["seed"],
    }
    write_json(out_dir / "metrics.json", metrics)
    log.info("%s: backdoor (%s over %s) test top1 %.4f, best member %s %.4f", out_dir, rule,
             ", ".join(map(str, backbones)), metrics["top1"], backbones[best],
             member_m[best]["top1"])
    return metrics
