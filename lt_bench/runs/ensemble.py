"""Runs that consume runs: the backdoor adjustment over M backbones (DESIGN §1 →
docs/architecture.md, "Methods"), combining finished runs with no retraining.

``P(y | do(x)) = Σ_c P(y | f_c(x), c) · P(c)`` with one foundation model per confounder
value c and ``P(c) = 1/M``. The authors' code fine-tunes each backbone with the
logit-adjusted loss and, at test time, **sums the raw logits** of the M models
(``rule: sum``, the default). ``rule: prob_mean`` averages the softmax probabilities
instead (the literal reading of the formula; logits returned as ``log mean p``).

Members are combined row by row through the seam (``split_logits``), so any kind of run
can be a member (heads on features, fine-tuned models). They are checked to be
combinable by what defines their rows — the split lists' sha256 and the labels — and to
differ only in what the ensemble varies (``vary="backbone"``: same method and seed).

``metrics.json`` reports, besides the usual metrics of the full ensemble, for each subset
size m = 1..M the mean over all ``C(M, m)`` subsets (``m{m}_top1`` …, the paper's
M-ablation); ``best_member_*`` is the member with the best **test** top-1 (an oracle,
labelled as such) and ``val_best_member_*`` the member chosen on val; ``gain_*`` is the
ensemble's gain over the oracle member. P-groups use the mean of the members' q̂
(renormalised), and none if any member has no q̂.
"""

from __future__ import annotations

import itertools
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from lt_bench.errors import InputValidationError
from lt_bench.io import write_json
from lt_bench.metrics import D_GROUPS
from lt_bench.runs.folder import (
    EVAL_SPLITS,
    require_finished,
    resolve_recorded,
    unfinish,
    write_run,
)

log = logging.getLogger(__name__)

RULES = ("sum", "prob_mean")
ABLATION_KEYS = ("top1", *D_GROUPS)
#: what members of an ensemble may differ in, and what they must then share
VARY = {"backbone": ("method", "seed"), "seed": ("method", "backbone")}


def combine(logits: list[np.ndarray], rule: str = "sum") -> np.ndarray:
    """Combine member logits: ``Σ_c z_c`` (sum) or ``log((1/M) Σ_c softmax(z_c))`` (prob_mean)."""
    from scipy.special import logsumexp

    if rule not in RULES:
        raise InputValidationError(f"unknown ensemble rule {rule!r}; valid: {', '.join(RULES)}")
    stack = np.stack([np.asarray(z, dtype=np.float64) for z in logits])
    if rule == "sum":
        return stack.sum(0)
    logp = stack - logsumexp(stack, axis=2, keepdims=True)
    return logsumexp(logp, axis=0) - np.log(len(logits))


class EnsembleRun:
    """An ensemble run behind the seam: its logits come from its member runs."""

    def __init__(self, members: list[Path | str], rule: str = "sum",
                 where: Path | None = None):
        if rule not in RULES:
            raise InputValidationError(f"unknown ensemble rule {rule!r}; "
                                       f"valid: {', '.join(RULES)}")
        self.members = [Path(m) for m in members]
        self.rule = rule
        self.where = where  # the ensemble's own folder, to find members after a move

    @classmethod
    def from_folder(cls, run_path: Path) -> EnsembleRun:
        import json

        spec = json.loads((Path(run_path) / "predictor.json").read_text())
        members = [resolve_recorded(m, Path(run_path)) for m in spec["members"]]
        return cls(members, spec.get("rule", "sum"), Path(run_path))

    def member_logits(self, split: str) -> tuple[np.ndarray, list[np.ndarray]]:
        from lt_bench.runs.predictors import run_logits

        labels, out = None, []
        for m in self.members:
            y, z = run_logits(m, split)
            if labels is not None and not np.array_equal(labels, y):
                raise InputValidationError(
                    f"ensemble members {self.members[0]} and {m} disagree on the labels of "
                    f"their {split} rows (different splits or row order)")
            labels = y
            out.append(z)
        return labels, out

    def split_logits(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        labels, zs = self.member_logits(split)
        return labels, combine(zs, self.rule).astype(np.float32)

    def save(self, run_path: Path) -> None:
        write_json(Path(run_path) / "predictor.json",
                   {"kind": "ensemble", "rule": self.rule,
                    "members": [str(m) for m in self.members]})


def check_members(run_dirs: list[Path], vary: str = "backbone") -> list[dict[str, Any]]:
    """Configs of the member runs; an error naming both runs where two are not combinable
    (dataset, class count, split lists) or differ in more than ``vary``."""
    if vary not in VARY:
        raise InputValidationError(f"unknown ensemble axis {vary!r}; valid: {', '.join(VARY)}")
    if len(run_dirs) < 2:
        raise InputValidationError(f"an ensemble needs at least two member runs, "
                                   f"got {len(run_dirs)}")
    if len(set(map(str, run_dirs))) != len(run_dirs):
        raise InputValidationError(f"ensemble members repeat a run: {[str(r) for r in run_dirs]}")
    cfgs = [require_finished(r, "ensemble member") for r in run_dirs]
    ref, ref_cfg = run_dirs[0], cfgs[0]
    for r, cfg in zip(run_dirs[1:], cfgs[1:], strict=True):
        both = f"ensemble members {ref} and {r}"
        for key in ("dataset", "num_classes", *VARY[vary]):
            if cfg.get(key) != ref_cfg.get(key):
                raise InputValidationError(
                    f"{both} differ in {key}: {ref_cfg.get(key)!r} vs {cfg.get(key)!r} (an "
                    f"ensemble over {vary}s needs the same dataset, class set and "
                    f"{' and '.join(VARY[vary])})")
        if cfg.get(vary) == ref_cfg.get(vary):
            raise InputValidationError(f"{both} have the same {vary} {cfg.get(vary)!r}; "
                                       f"an ensemble over {vary}s needs different ones")
        for s in EVAL_SPLITS:
            a = (ref_cfg.get("split_sha256") or {}).get(s)
            b = (cfg.get("split_sha256") or {}).get(s)
            if a != b:
                raise InputValidationError(
                    f"{both} were built from different {s} split lists (split sha256 "
                    f"{str(a)[:12]}… vs {str(b)[:12]}…); logits combine only row by row")
    return cfgs


def _mean_prior(run_dirs: list[Path], cfgs: list[dict[str, Any]]):
    from lt_bench.prior import read_prior

    paths = [c.get("prior") for c in cfgs]
    if not all(paths):
        return None, paths
    q = np.mean([read_prior(resolve_recorded(p, r), c.get("num_classes")).q_hat
                 for p, r, c in zip(paths, run_dirs, cfgs, strict=True)], axis=0)
    return q / q.sum(), paths


def _train_counts(run_path: Path) -> np.ndarray:
    import pandas as pd

    pc = pd.read_parquet(Path(run_path) / "per_class.parquet").sort_values("label")
    return pc["train_count"].to_numpy()


def _subset_metrics(zs: list[np.ndarray], labels: np.ndarray, counts: np.ndarray,
                    rule: str) -> dict[str, Any]:
    from lt_bench.metrics import evaluate

    out: dict[str, Any] = {}
    for m in range(1, len(zs) + 1):
        rows = [evaluate(combine([zs[i] for i in sub], rule), labels, counts)[0]
                for sub in itertools.combinations(range(len(zs)), m)]
        for key in ABLATION_KEYS:
            vals = [r[key] for r in rows if r[key] is not None]
            out[f"m{m}_{key}"] = float(np.mean(vals)) if vals else None
        out[f"m{m}_n_subsets"] = len(rows)
    return out


def ensemble_run(members: list[Path | str], out_dir: Path | str, rule: str = "sum",
                 method: str = "backdoor", vary: str = "backbone",
                 hparams: dict[str, Any] | None = None) -> dict:
    """Combine finished member runs into an ensemble run folder; returns its metrics."""
    from lt_bench.metrics import evaluate

    started = time.time()
    run_dirs = [Path(m) for m in members]
    out_dir = Path(out_dir)
    cfgs = check_members(run_dirs, vary)
    ens = EnsembleRun(run_dirs, rule)
    counts = _train_counts(run_dirs[0])
    q_hat, prior_paths = _mean_prior(run_dirs, cfgs)
    logits: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    member_z: dict[str, list[np.ndarray]] = {}
    for s in EVAL_SPLITS:
        y, zs = ens.member_logits(s)
        member_z[s] = zs
        logits[s] = (y, combine(zs, rule).astype(np.float32))
    y_test, y_val = logits["test"][0], logits["val"][0]
    member_m = [evaluate(z, y_test, counts)[0] for z in member_z["test"]]
    member_val = [float((z.argmax(1) == y_val).mean()) for z in member_z["val"]]
    best = int(np.argmax([m["top1"] for m in member_m]))
    val_best = int(np.argmax(member_val))
    names = [c.get(vary) for c in cfgs]
    seeds = sorted({c.get("seed") for c in cfgs}, key=str)
    test_m, _ = evaluate(logits["test"][1], y_test, counts)
    unfinish(out_dir)
    ens.save(out_dir)
    config = {
        "method": method, "consumes": "runs", "hparams": {"rule": rule, **(hparams or {})},
        "vary": vary, "seed": seeds[0] if len(seeds) == 1 else None,
        "dataset": cfgs[0].get("dataset"),
        "backbone": "ensemble" if vary == "backbone" else cfgs[0].get("backbone"),
        "members": [{"run_dir": str(r), "backbone": c.get("backbone"),
                     "method": c.get("method"), "seed": c.get("seed")}
                    for r, c in zip(run_dirs, cfgs, strict=True)],
        "features_dir": None, "num_classes": cfgs[0].get("num_classes"),
        "split_sha256": cfgs[0].get("split_sha256"),
        "prior": None, "member_priors": prior_paths,
    }
    extra = {
        "n_members": len(run_dirs),
        **_subset_metrics(member_z["test"], y_test, counts, rule),
        **{f"best_member_{k}": member_m[best][k] for k in ABLATION_KEYS},
        **{f"val_best_member_{k}": member_m[val_best][k] for k in ABLATION_KEYS},
        **{f"gain_{k}": (None if test_m[k] is None or member_m[best][k] is None
                         else test_m[k] - member_m[best][k]) for k in ABLATION_KEYS},
        "n_trainable_params": 0, "inference_cost": float(len(run_dirs)),
    }
    info = {"rule": rule, "members": names, "best_member": names[best],
            "best_member_chosen_on": "test (oracle; val_best_member_* is chosen on val)",
            "val_best_member": names[val_best],
            "member_top1": {str(b): m["top1"] for b, m in zip(names, member_m, strict=True)},
            "p_groups_prior": "mean of the members' q̂" if q_hat is not None else None,
            "train_seconds": 0.0}
    metrics = write_run(out_dir, logits, train_counts=counts, config=config, info=info,
                        pretrain_prior=q_hat, started_at=started, extra_metrics=extra)
    log.info("%s: %s (%s over %s) test top1 %.4f, best member %s %.4f", out_dir, method, rule,
             ", ".join(map(str, names)), metrics["top1"], names[best], member_m[best]["top1"])
    return metrics


def backdoor_run(members: list[Path | str], out_dir: Path | str, rule: str = "sum") -> dict:
    """The backdoor adjustment: members are one run per backbone (same method and seed)."""
    return ensemble_run(members, out_dir, rule=rule, method="backdoor", vary="backbone")
