"""Runs that consume runs: the backdoor adjustment over M backbones and its controls (DESIGN
§1 → docs/architecture.md, "Methods"; issue 13 §1), combining finished runs, no retraining.

``P(y | do(x)) = Σ_c P(y | f_c(x), c) · P(c)`` with one foundation model per confounder
value c and ``P(c) = 1/M``. The authors' code fine-tunes each backbone with the
logit-adjusted loss and, at test time, **sums the raw logits** of the M models
(``rule: sum``, the default). ``rule: prob_mean`` averages the softmax probabilities
instead (the literal reading of the formula; logits returned as ``log mean p``).
``rule: weighted_sum`` is ``Σ_c w_c z_c`` with one weight ``w_c ≥ 0`` per member fitted on
**val** (minimum val NLL, :func:`fit_member_weights`); the weights are stored in
``predictor.json`` so the seam rebuilds the same logits.

Members are combined row by row through the seam (``split_logits``), so any kind of run
can be a member (heads on features, fine-tuned models, other ensembles); nothing here
reads a feature file. They are checked to be combinable by what defines their rows — the
split lists' sha256 and the labels — and to differ only in what the ensemble varies
(``vary="backbone"``: same method and seed; ``vary="seed"``: same method and backbone,
the same-backbone control). Where the hyper-parameters name the member method
(``members``) every member must be a run of it; ``seed_offsets`` fixes the member seeds of
a seed ensemble to ``s + o`` (s: the first member's seed, which is the ensemble's seed).

``metrics.json`` reports, besides the usual metrics of the full ensemble, for each subset
size m = 1..M the mean over all ``C(M, m)`` subsets (``m{m}_top1`` …, the paper's
M-ablation; learned weights are refitted on val per subset); ``best_member_*`` is the
member with the best **test** top-1 (an oracle, labelled as such) and
``val_best_member_*`` the member chosen on val (ties: the first); ``gain_*`` is the
ensemble's gain over the oracle member, ``val_gain_*`` over the val-chosen one. Compute,
so rows compare at equal cost: ``n_trainable_params`` (the members' sum, plus the M
weights where learned), ``inference_cost`` (the members' sum, in single-backbone forward
passes per image) and ``train_seconds`` (the members' sum plus the weight fit); None
where a member does not record it. P-groups use the mean of the members' q̂
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
from lt_bench.io import read_json, sha256_cached, write_json
from lt_bench.metrics import D_GROUPS
from lt_bench.runs.folder import (
    EVAL_SPLITS,
    require_finished,
    resolve_recorded,
    unfinish,
    write_run,
)
from lt_bench.runs.predictors import check_members_fresh

log = logging.getLogger(__name__)

RULES = ("sum", "prob_mean", "weighted_sum")
ABLATION_KEYS = ("top1", *D_GROUPS)
#: what members of an ensemble may differ in, and what they must then share
VARY = {"backbone": ("method", "seed"), "seed": ("method", "backbone")}
#: members' compute fields summed into the ensemble's (issue 13 §1, "compute")
COMPUTE_KEYS = ("n_trainable_params", "inference_cost", "train_seconds")
MAX_WEIGHT = 100.0


def _check_rule(rule: str) -> None:
    if rule not in RULES:
        raise InputValidationError(f"unknown ensemble rule {rule!r}; valid: {', '.join(RULES)}")


def combine(logits: list[np.ndarray], rule: str = "sum",
            weights: np.ndarray | list[float] | None = None) -> np.ndarray:
    """Combine member logits: ``Σ_c z_c`` (sum), ``log((1/M) Σ_c softmax(z_c))``
    (prob_mean) or ``Σ_c w_c z_c`` (weighted_sum, ``weights``: one ``w_c ≥ 0`` per member)."""
    from scipy.special import logsumexp

    _check_rule(rule)
    stack = np.stack([np.asarray(z, dtype=np.float64) for z in logits])
    if rule == "weighted_sum":
        w = np.asarray(weights if weights is not None else [], dtype=np.float64)
        if w.shape != (len(logits),) or not np.isfinite(w).all() or (w < 0).any():
            raise InputValidationError(
                f"ensemble rule 'weighted_sum': weights {w.tolist()} are invalid; expected "
                f"{len(logits)} finite non-negative numbers (one per member)")
        return np.tensordot(w, stack, axes=1)
    if weights is not None:
        raise InputValidationError(f"ensemble rule {rule!r} takes no weights "
                                   "(only 'weighted_sum' does)")
    if rule == "sum":
        return stack.sum(0)
    logp = stack - logsumexp(stack, axis=2, keepdims=True)
    return logsumexp(logp, axis=0) - np.log(len(logits))


def fit_member_weights(val_logits: list[np.ndarray], labels: np.ndarray,
                       max_weight: float = MAX_WEIGHT) -> tuple[np.ndarray, dict[str, Any]]:
    """Weights ``w ∈ [0, max_weight]^M`` minimising the mean val NLL of ``Σ_c w_c z_c``.

    The NLL is convex in w (log-sum-exp of a linear map minus a linear term), so L-BFGS-B
    on w itself (not log w, which would break convexity and could not reach w_c = 0) finds
    the minimum from any start: deterministic. It starts from w = 1, the backdoor. Where
    val is separable the NLL falls forever as w grows: the fit then stops at the box
    ``max_weight`` (``at_max_weight`` in the returned info) or where the NLL no longer
    falls by the tolerance; either way the weights stay finite.
    """
    from scipy.optimize import minimize
    from scipy.special import logsumexp

    # float32 as stored (iNat2018's val is 24k x 8142 per member); sums in float64
    z = np.stack([np.asarray(v, dtype=np.float32) for v in val_logits])  # (M, N, K)
    y = np.asarray(labels, dtype=np.int64)
    if z.ndim != 3 or z.shape[1] != len(y) or len(y) == 0:
        raise InputValidationError(f"fitting ensemble weights: member val logits of shape "
                                   f"{z.shape} for {len(y)} labels; expected (M, N, K), N > 0")
    rows = np.arange(len(y))
    z_true = z[:, rows, y].astype(np.float64)  # (M, N): each member's true-class logit

    def nll_and_grad(w):
        s = np.zeros(z.shape[1:])
        for wc, zc in zip(w, z, strict=True):
            s += wc * zc
        lse = logsumexp(s, axis=1)
        p = np.exp(s - lse[:, None])
        nll = float(np.mean(lse - s[rows, y]))
        # d NLL / d w_c = mean_i (E_p[z_c,i] − z_c,i,y_i)
        grad = np.array([np.sum(p * zc) for zc in z]) - z_true.sum(1)
        return nll, grad / len(y)

    res = minimize(nll_and_grad, np.ones(len(z)), jac=True, method="L-BFGS-B",
                   bounds=[(0.0, float(max_weight))] * len(z),
                   options={"maxiter": 1000, "ftol": 1e-13, "gtol": 1e-9})
    w = np.clip(res.x, 0.0, float(max_weight))
    at_max = bool(np.any(w >= max_weight * (1 - 1e-9)))
    if at_max:
        log.warning("ensemble weights reached max_weight %s (val nearly separable): %s",
                    max_weight, w.tolist())
    return w, {"val_nll": float(res.fun), "val_nll_equal_weights": nll_and_grad(
        np.ones(len(z)))[0], "converged": bool(res.success), "n_iter": int(res.nit),
        "at_max_weight": at_max}


class EnsembleRun:
    """An ensemble run behind the seam: its logits come from its member runs."""

    def __init__(self, members: list[Path | str], rule: str = "sum",
                 where: Path | None = None, weights: list[float] | None = None):
        _check_rule(rule)
        if (rule == "weighted_sum") != (weights is not None):
            raise InputValidationError(f"ensemble rule {rule!r}: weights "
                                       f"{'missing' if weights is None else 'unexpected'}")
        self.members = [Path(m) for m in members]
        self.rule = rule
        self.weights = None if weights is None else [float(w) for w in weights]
        self.where = where  # the ensemble's own folder, to find members after a move

    @classmethod
    def from_folder(cls, run_path: Path) -> EnsembleRun:
        spec = read_json(Path(run_path) / "predictor.json")
        members = [resolve_recorded(m, Path(run_path)) for m in spec["members"]]
        check_members_fresh(Path(run_path), members)  # runs/predictors.py
        return cls(members, spec.get("rule", "sum"), Path(run_path), spec.get("weights"))

    def member_logits(self, split: str) -> tuple[np.ndarray, list[np.ndarray]]:
        from lt_bench.runs.predictors import run_logits

        labels, out = None, []
        for m in self.members:
            y, z = run_logits(m, split)
            if labels is not None and not np.array_equal(labels, y):
                raise InputValidationError(
                    f"ensemble members {self.members[0]} and {m} have different {split} rows "
                    "(their labels differ row by row: different split lists or row order)")
            labels = y
            out.append(z)
        return labels, out

    def split_logits(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        labels, zs = self.member_logits(split)
        return labels, combine(zs, self.rule, self.weights).astype(np.float32)

    def save(self, run_path: Path) -> None:
        spec = {"kind": "ensemble", "rule": self.rule, "members": [str(m) for m in self.members]}
        if self.weights is not None:
            spec["weights"] = self.weights
        write_json(Path(run_path) / "predictor.json", spec)


def check_members(run_dirs: list[Path], vary: str = "backbone",
                  member_method: str | None = None) -> list[dict[str, Any]]:
    """Configs of the member runs; an error naming both runs where two are not combinable
    (dataset, class count and names, split lists) or differ in more than ``vary``, and
    naming the run where ``member_method`` is given and a member is not a run of it."""
    if vary not in VARY:
        raise InputValidationError(f"unknown ensemble axis {vary!r}; valid: {', '.join(VARY)}")
    if len(run_dirs) < 2:
        raise InputValidationError(f"an ensemble needs at least two member runs, "
                                   f"got {len(run_dirs)}")
    if len(set(map(str, run_dirs))) != len(run_dirs):
        raise InputValidationError(f"ensemble members repeat a run: {[str(r) for r in run_dirs]}")
    cfgs = [require_finished(r, "ensemble member") for r in run_dirs]
    if member_method is not None:
        for r, cfg in zip(run_dirs, cfgs, strict=True):
            if cfg.get("method") != member_method:
                raise InputValidationError(
                    f"ensemble member {r} is a run of method {cfg.get('method')!r}; this "
                    f"ensemble combines runs of {member_method!r} (hyper-parameter members)")
    ref, ref_cfg = run_dirs[0], cfgs[0]
    for r, cfg in zip(run_dirs[1:], cfgs[1:], strict=True):
        both = f"ensemble members {ref} and {r}"
        for key in ("dataset", "num_classes", *VARY[vary]):
            if cfg.get(key) != ref_cfg.get(key):
                raise InputValidationError(
                    f"{both} differ in {key}: {ref_cfg.get(key)!r} vs {cfg.get(key)!r} (an "
                    f"ensemble over {vary}s needs the same dataset, class set and "
                    f"{' and '.join(VARY[vary])})")
        a, b = ref_cfg.get("classnames_sha256"), cfg.get("classnames_sha256")
        if a and b and a != b:  # recorded by runs that know their class names
            raise InputValidationError(f"{both} have different class sets (class names "
                                       f"sha256 {a[:12]}… vs {b[:12]}…)")
        for s in EVAL_SPLITS:
            a = (ref_cfg.get("split_sha256") or {}).get(s)
            b = (cfg.get("split_sha256") or {}).get(s)
            if a is None or b is None:
                raise InputValidationError(
                    f"{ref if a is None else r}: config.json records no sha256 of its {s} "
                    "split list; an ensemble member must, so rows can be matched")
            if a != b:
                raise InputValidationError(
                    f"{both} were built from different {s} split lists (split sha256 "
                    f"{str(a)[:12]}… vs {str(b)[:12]}…); logits combine only row by row")
    seen: dict[Any, Path] = {}
    for r, cfg in zip(run_dirs, cfgs, strict=True):
        if cfg.get(vary) in seen:
            raise InputValidationError(
                f"ensemble members {seen[cfg.get(vary)]} and {r} have the same {vary} "
                f"{cfg.get(vary)!r}; an ensemble over {vary}s needs different ones")
        seen[cfg.get(vary)] = r
    return cfgs


def ensemble_seed(run_dirs: list[Path], cfgs: list[dict[str, Any]], vary: str,
                  seed_offsets: list[int] | None = None) -> int | None:
    """The ensemble's seed: its members' common seed (over backbones), or the first
    member's (over seeds), whose seeds must then be ``seed + o`` for ``o`` in
    ``seed_offsets`` in that order where given."""
    seeds = [c.get("seed") for c in cfgs]
    if vary == "backbone":
        return seeds[0]
    if seed_offsets is not None:
        base = seeds[0]
        want = [base + int(o) for o in seed_offsets] if isinstance(base, int) else None
        if want != seeds:
            raise InputValidationError(
                f"same-backbone ensemble: member seeds {seeds} (runs "
                f"{[str(r) for r in run_dirs]}) do not follow seed_offsets {seed_offsets}; "
                f"expected seeds {want or '[s + o ...]'} with s the first member's seed")
    return seeds[0]


def _mean_prior(run_dirs: list[Path], cfgs: list[dict[str, Any]]):
    from lt_bench.prior import read_prior

    paths = [c.get("prior") for c in cfgs]
    if not all(paths):
        return None, paths
    q = np.mean([read_prior(resolve_recorded(p, r), c.get("num_classes")).q_hat
                 for p, r, c in zip(paths, run_dirs, cfgs, strict=True)], axis=0)
    return q / q.sum(), paths


def _train_counts(run_path: Path) -> np.ndarray:
    # not pandas (nor pyarrow's to_numpy, which imports it): 0.4 s of every ensemble
    # job's ~2 s (issue 12)
    import pyarrow.parquet as pq

    from lt_bench.features.store import column_numpy

    with pq.ParquetFile(Path(run_path) / "per_class.parquet") as f:
        t = f.read(columns=["label", "train_count"])
    order = np.argsort(column_numpy(t.column("label")), kind="stable")
    return column_numpy(t.column("train_count"))[order]


def member_compute(run_dirs: list[Path]) -> dict[str, Any]:
    """Σ over the members' ``metrics.json`` of each compute field (None if one lacks it)."""
    ms = [read_json(Path(r) / "metrics.json") for r in run_dirs]
    out: dict[str, Any] = {}
    for key in COMPUTE_KEYS:
        vals = [m.get(key) for m in ms]
        out[key] = None if any(v is None for v in vals) else sum(vals)
    out["n_trainable_params"] = (None if out["n_trainable_params"] is None
                                 else int(out["n_trainable_params"]))
    out["members_train_seconds"] = [m.get("train_seconds") for m in ms]
    return out


def _subset_metrics(zs: list[np.ndarray], labels: np.ndarray, counts: np.ndarray,
                    rule: str, weights_of=None) -> dict[str, Any]:
    from lt_bench.metrics import evaluate

    out: dict[str, Any] = {}
    for m in range(1, len(zs) + 1):
        rows = []
        for sub in itertools.combinations(range(len(zs)), m):
            w = weights_of(sub) if weights_of is not None else None
            rows.append(evaluate(combine([zs[i] for i in sub], rule, w), labels, counts)[0])
        for key in ABLATION_KEYS:
            vals = [r[key] for r in rows if r[key] is not None]
            out[f"m{m}_{key}"] = float(np.mean(vals)) if vals else None
        out[f"m{m}_n_subsets"] = len(rows)
    return out


def _diff(a, b):
    return None if a is None or b is None else a - b


def ensemble_run(members: list[Path | str], out_dir: Path | str, rule: str = "sum",
                 method: str = "backdoor", vary: str = "backbone",
                 hparams: dict[str, Any] | None = None) -> dict:
    """Combine finished member runs into an ensemble run folder; returns its metrics.

    ``hparams`` (recorded with ``rule`` in config.json) may hold ``members`` (the member
    runs' method, checked), ``seed_offsets`` (vary="seed": the member seeds, checked) and
    ``max_weight`` (weighted_sum: the weights' upper bound)."""
    from lt_bench.metrics import evaluate

    started = time.time()
    hparams = dict(hparams or {})
    _check_rule(rule)
    run_dirs = [Path(m) for m in members]
    out_dir = Path(out_dir)
    cfgs = check_members(run_dirs, vary, hparams.get("members"))
    seed = ensemble_seed(run_dirs, cfgs, vary, hparams.get("seed_offsets"))
    counts = _train_counts(run_dirs[0])
    q_hat, prior_paths = _mean_prior(run_dirs, cfgs)
    loader = EnsembleRun(run_dirs)  # reads member logits only; the rule is applied below
    member_y, member_z = {}, {}
    for s in EVAL_SPLITS:
        member_y[s], member_z[s] = loader.member_logits(s)
    y_test, y_val = member_y["test"], member_y["val"]
    t0 = time.time()
    weights, fit_info, weights_of = None, None, None
    if rule == "weighted_sum":  # fitted on val only: test logits never reach the fit
        max_w = float(hparams.get("max_weight", MAX_WEIGHT))
        w, fit_info = fit_member_weights(member_z["val"], y_val, max_w)
        weights = w.tolist()

        def weights_of(sub):
            if len(sub) == len(run_dirs):
                return w
            if len(sub) == 1:  # a positive scale leaves a single member's argmax alone
                return np.ones(1)
            return fit_member_weights([member_z["val"][i] for i in sub], y_val, max_w)[0]
    weight_fit_seconds = time.time() - t0
    ens = EnsembleRun(run_dirs, rule, weights=weights)
    logits = {s: (member_y[s], combine(member_z[s], rule, weights).astype(np.float32))
              for s in EVAL_SPLITS}
    member_m = [evaluate(z, y_test, counts)[0] for z in member_z["test"]]
    member_val = [float((z.argmax(1) == y_val).mean()) for z in member_z["val"]]
    best = int(np.argmax([m["top1"] for m in member_m]))
    val_best = int(np.argmax(member_val))  # ties: the first member, as significance does
    names = [c.get(vary) for c in cfgs]
    test_m, _ = evaluate(logits["test"][1], y_test, counts)
    compute = member_compute(run_dirs)
    if weights is not None and compute["n_trainable_params"] is not None:
        compute["n_trainable_params"] += len(weights)  # the M weights are fitted too
    if compute["train_seconds"] is not None:
        compute["train_seconds"] += weight_fit_seconds
    unfinish(out_dir)
    ens.save(out_dir)
    config = {
        "method": method, "consumes": "runs", "hparams": {"rule": rule, **hparams},
        "vary": vary, "seed": seed, "dataset": cfgs[0].get("dataset"),
        "backbone": "ensemble" if vary == "backbone" else cfgs[0].get("backbone"),
        "members": [{"run_dir": str(r), "backbone": c.get("backbone"),
                     "method": c.get("method"), "seed": c.get("seed"),
                     # what it was made from, checked where it is read (check_members_fresh)
                     "metrics_sha256": sha256_cached(Path(r) / "metrics.json")}
                    for r, c in zip(run_dirs, cfgs, strict=True)],
        "features_dir": None, "num_classes": cfgs[0].get("num_classes"),
        "split_sha256": cfgs[0].get("split_sha256"),
        "classnames_sha256": cfgs[0].get("classnames_sha256"),
        "prior": None, "member_priors": prior_paths,
    }
    extra = {
        "n_members": len(run_dirs),
        **_subset_metrics(member_z["test"], y_test, counts, rule, weights_of),
        **{f"best_member_{k}": member_m[best][k] for k in ABLATION_KEYS},
        **{f"val_best_member_{k}": member_m[val_best][k] for k in ABLATION_KEYS},
        **{f"gain_{k}": _diff(test_m[k], member_m[best][k]) for k in ABLATION_KEYS},
        **{f"val_gain_{k}": _diff(test_m[k], member_m[val_best][k]) for k in ABLATION_KEYS},
        "n_trainable_params": compute["n_trainable_params"],
        "inference_cost": compute["inference_cost"],
        # here, not in info: write_run lets extra metrics override, and None stays None
        "train_seconds": compute["train_seconds"],
    }
    info = {"rule": rule, "vary": vary, "members": names, "best_member": names[best],
            "best_member_chosen_on": "test (oracle; val_best_member_* is chosen on val)",
            "val_best_member": names[val_best],
            "member_top1": {str(b): m["top1"] for b, m in zip(names, member_m, strict=True)},
            "member_val_top1": {str(b): v for b, v in zip(names, member_val, strict=True)},
            "p_groups_prior": "mean of the members' q̂" if q_hat is not None else None,
            "members_train_seconds": compute["members_train_seconds"],
            "weight_fit_seconds": weight_fit_seconds}
    if weights is not None:
        total = sum(weights) or 1.0  # the weights also set a temperature: shares compare
        info.update(weights={str(b): w for b, w in zip(names, weights, strict=True)},
                    weight_shares={str(b): w / total
                                   for b, w in zip(names, weights, strict=True)},
                    weights_fitted_on="val", weight_fit=fit_info)
    metrics = write_run(out_dir, logits, train_counts=counts, config=config, info=info,
                        pretrain_prior=q_hat, started_at=started, extra_metrics=extra)
    log.info("%s: %s (%s over %s) test top1 %.4f, best member %s %.4f", out_dir, method, rule,
             ", ".join(map(str, names)), metrics["top1"], names[best], member_m[best]["top1"])
    return metrics


def backdoor_run(members: list[Path | str], out_dir: Path | str, rule: str = "sum") -> dict:
    """The backdoor adjustment: members are one run per backbone (same method and seed)."""
    return ensemble_run(members, out_dir, rule=rule, method="backdoor", vary="backbone")
