"""The driver of ensemble runs: finished member runs in, one run folder out, no retraining.

What is combined and how is the ensemble method's (``lt_bench.methods._ensemble``: its
members, its fit on val, its combine); this module only drives it, the same way for every
ensemble method. It resolves and checks the members once — finished, runs of the method's
member method, combinable row by row (split lists' sha256, class set, then labels row by
row) and differing only along the method's member axis (``vary``) — fits the combiner on
the members' **val** logits, and finishes through :func:`write_run`. Members are read
through the seam (``split_logits``), so any kind of run can be a member (heads on
features, fine-tuned models, other ensembles); nothing here reads a feature file.

``metrics.json`` reports, besides the usual metrics of the ensemble, for each subset size
m = 1..M the mean over all ``C(M, m)`` subsets (``m{m}_top1`` …, the paper's M-ablation;
a fitted combiner is refitted on val per subset); ``best_member`` = ``{"val": i, "test":
j}``, indices into ``predictor.json``'s ``members``: the member chosen on **val** (its val
top-1; ties: the first) and the **test** oracle; ``val_best_member_*``/``best_member_*``
their metrics and ``val_gain_*``/``gain_*`` the ensemble's gain over them. Compute, so rows
compare at equal cost: ``n_trainable_params`` (the members' sum, plus the combiner's
fitted parameters), ``inference_cost`` (the members' sum, in single-backbone forward
passes per image) and ``train_seconds`` (the members' sum plus the combiner's fit); None
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

from lt_bench.blocks import row_blocks
from lt_bench.errors import InputValidationError
from lt_bench.io import read_json, sha256_cached
from lt_bench.methods import METHODS
from lt_bench.methods._base import ENSEMBLE_BACKBONE, IDENTITY, RunsMethod
from lt_bench.methods._ensemble import EnsembleMethod
from lt_bench.metrics import D_GROUPS
from lt_bench.predictor_spec import predictor_spec_of, write_predictor_spec
from lt_bench.runs.folder import (
    EVAL_SPLITS,
    require_finished,
    resolve_recorded,
    unfinish,
    write_run,
)
from lt_bench.runs.predictors import check_members_fresh

log = logging.getLogger(__name__)

ABLATION_KEYS = ("top1", *D_GROUPS)
#: members' compute fields summed into the ensemble's
COMPUTE_KEYS = ("n_trainable_params", "inference_cost", "train_seconds")
#: predictor.json keys that are not the combiner's state
_SPEC_KEYS = ("kind", "method", "members")


def combine_blocks(method: type[EnsembleMethod], logits: list[np.ndarray],
                   state: dict[str, Any], dtype=np.float32, out: np.ndarray | None = None,
                   block_rows: int | None = None) -> np.ndarray:
    """``method.combine(logits, state)`` cast to ``dtype``, computed in row blocks into
    ``out`` (allocated if None): the same bits as one call, as every combine is row by row
    (lt_bench/methods/_combine.py), and memory bounded by one block of the members (each
    member's block 8 MiB in float64 whatever N, lt_bench/blocks.py: the (M, N, K) float64
    stack of three members of iNat2018's test split alone was 4.8 GB)."""
    n, k = np.shape(logits[0])
    out = np.empty((n, k), dtype) if out is None else out
    for b in row_blocks(n, k, block_rows):
        out[b] = method.combine([z[b] for z in logits], state)
    return out


def ensemble_method(method: str, hparams: dict[str, Any] | None = None) -> EnsembleMethod:
    """The ensemble method ``method`` with ``hparams`` (checked); an error for another kind."""
    cls = METHODS.get(method)
    if not issubclass(cls, EnsembleMethod):
        valid = [n for n, c in METHODS.items() if issubclass(c, EnsembleMethod)]
        raise InputValidationError(f"method {method!r} is not an ensemble method; valid: "
                                   f"{', '.join(valid)}")
    return cls(**(hparams or {}))


class EnsembleRun:
    """An ensemble run behind the seam: its members' logits, combined by its method's
    ``combine`` with the fitted ``state`` its predictor.json stores."""

    def __init__(self, members: list[Path | str], method: type[EnsembleMethod] | str,
                 state: dict[str, Any], where: Path | None = None):
        self.members = [Path(m) for m in members]
        self.method = METHODS.get(method) if isinstance(method, str) else method
        self.state = dict(state)
        self.where = where  # the ensemble's own folder, to find members after a move

    @classmethod
    def from_folder(cls, folder) -> EnsembleRun:
        """The ``ensemble`` predictor kind (``lt_bench.predictor_spec``)."""
        run_path = Path(folder)
        spec = predictor_spec_of(folder)
        members = [resolve_recorded(m, run_path) for m in spec["members"]]
        check_members_fresh(run_path, members)  # runs/predictors.py
        # a folder written before the spec named its method: the rule alone says how
        method = spec.get("method") or EnsembleMethod
        state = {k: v for k, v in spec.items() if k not in _SPEC_KEYS}
        return cls(members, method, state, run_path)

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

    def combine(self, logits: list[np.ndarray]) -> np.ndarray:
        """float32 ensemble logits of member logits (in this run's member order)."""
        return combine_blocks(self.method, logits, self.state)

    def split_logits(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        labels, zs = self.member_logits(split)
        return labels, self.combine(zs)

    def save(self, run_path: Path) -> None:
        write_predictor_spec(run_path, {"kind": "ensemble", "method": self.method.name,
                                        "members": [str(m) for m in self.members],
                                        **self.state})


def _few(n: int) -> str:
    return {1: "one", 2: "two"}.get(n, str(n))


def check_members(run_dirs: list[Path], method: RunsMethod) -> tuple[list[dict], int]:
    """(member configs, the run's seed) of a run of the runs-consuming ``method`` over
    ``run_dirs``: an error naming the runs where they are not runs of its member method,
    not combinable (dataset, class count and names, split lists) or differ in more than
    its member axis, or where their seeds are not the ones it declares."""
    vary = method.vary
    shared = tuple(k for k in IDENTITY if k != vary)
    if len(run_dirs) < method.min_members:
        raise InputValidationError(
            f"{'an ensemble' if method.min_members > 1 else f'method {method.name!r}'} "
            f"needs at least {_few(method.min_members)} member run(s), got {len(run_dirs)}")
    if len(set(map(str, run_dirs))) != len(run_dirs):
        raise InputValidationError(f"ensemble members repeat a run: {[str(r) for r in run_dirs]}")
    cfgs = [require_finished(r, "ensemble member") for r in run_dirs]
    for r, cfg in zip(run_dirs, cfgs, strict=True):
        if cfg.get("method") != method.member_method:
            raise InputValidationError(
                f"member {r} is a run of method {cfg.get('method')!r}; expected "
                f"{method.member_method!r} (method {method.name!r}, hyper-parameter members)")
    ref, ref_cfg = run_dirs[0], cfgs[0]
    for r, cfg in zip(run_dirs[1:], cfgs[1:], strict=True):
        both = f"ensemble members {ref} and {r}"
        for key in ("dataset", "num_classes", *shared):
            if cfg.get(key) != ref_cfg.get(key):
                raise InputValidationError(
                    f"{both} differ in {key}: {ref_cfg.get(key)!r} vs {cfg.get(key)!r} (an "
                    f"ensemble over {vary}s needs the same dataset, class set and "
                    f"{' and '.join(shared)})")
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
    try:
        seed = method.run_seed([c.get("seed") for c in cfgs])
    except InputValidationError as e:
        raise InputValidationError(f"{e} (runs {[str(r) for r in run_dirs]})") from None
    return cfgs, seed


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
    # job's ~2 s
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


def _subset_metrics(method: EnsembleMethod, zs: list[np.ndarray], labels: np.ndarray,
                    counts: np.ndarray, states: dict[tuple[int, ...], dict[str, Any]]
                    ) -> dict[str, Any]:
    """The M-ablation: each subset's metrics, its combiner fitted on val (``states``)."""
    from lt_bench.metrics import evaluate

    out: dict[str, Any] = {}
    buf = np.empty(np.shape(zs[0]))  # one float64 N x K for every subset's logits
    for m in range(1, len(zs) + 1):
        rows = []
        for sub in itertools.combinations(range(len(zs)), m):
            logits = combine_blocks(type(method), [zs[i] for i in sub], states[sub],
                                    np.float64, buf)
            rows.append(evaluate(logits, labels, counts)[0])
        for key in ABLATION_KEYS:
            vals = [r[key] for r in rows if r[key] is not None]
            out[f"m{m}_{key}"] = float(np.mean(vals)) if vals else None
        out[f"m{m}_n_subsets"] = len(rows)
    return out


def _diff(a, b):
    return None if a is None or b is None else a - b


def _best_members(member_m: list[dict], member_val: list[float]) -> dict[str, int]:
    """Indices of the member chosen on val (ties: the first) and of the test oracle."""
    return {"val": int(np.argmax(member_val)), "test": int(np.argmax([m["top1"]
                                                                       for m in member_m]))}


def ensemble_run(members: list[Path | str], out_dir: Path | str, method: str = "backdoor",
                 hparams: dict[str, Any] | None = None) -> dict:
    """Combine finished member runs with the ensemble method ``method`` (its
    hyper-parameters ``hparams``, defaults filled in) into a run folder; its metrics."""
    from lt_bench.metrics import evaluate

    started = time.time()
    m = ensemble_method(method, hparams)
    run_dirs = [Path(r) for r in members]
    out_dir = Path(out_dir)
    cfgs, seed = check_members(run_dirs, m)
    names = [c.get(m.vary) for c in cfgs]
    counts = _train_counts(run_dirs[0])
    q_hat, prior_paths = _mean_prior(run_dirs, cfgs)
    loader = EnsembleRun(run_dirs, type(m), {})  # reads member logits only
    # one split's member logits at a time (iNat2018: 3 × 0.8 GB float32 per split) and the
    # combines in row blocks: val first (the fits, every subset's for the M-ablation), then
    # test (lt_bench/blocks.py; benchmarks/README.md)
    y_val, z_val = loader.member_logits("val")
    t0 = time.time()
    # fitted on val only: test logits never reach the fit
    state, fit_info = m.fit(z_val, y_val, [str(n) for n in names])
    fit_seconds = time.time() - t0
    every = range(len(run_dirs))
    states = {sub: state if len(sub) == len(run_dirs) else m.fit([z_val[i] for i in sub],
                                                                  y_val)[0]
              for k in range(1, len(run_dirs) + 1) for sub in itertools.combinations(every, k)}
    member_val = [float((z.argmax(1) == y_val).mean()) for z in z_val]
    ens = EnsembleRun(run_dirs, type(m), state)
    logits = {"val": (y_val, ens.combine(z_val))}
    del z_val
    y_test, z_test = loader.member_logits("test")
    member_m = [evaluate(z, y_test, counts)[0] for z in z_test]
    best = _best_members(member_m, member_val)
    ablation = _subset_metrics(m, z_test, y_test, counts, states)
    logits["test"] = (y_test, ens.combine(z_test))
    del z_test
    test_m, _ = evaluate(logits["test"][1], y_test, counts)
    compute = member_compute(run_dirs)
    if compute["n_trainable_params"] is not None:
        compute["n_trainable_params"] += m.n_params(state)
    if compute["train_seconds"] is not None:
        compute["train_seconds"] += fit_seconds
    unfinish(out_dir)
    ens.save(out_dir)
    config = {
        "method": m.name, "consumes": "runs", "hparams": m.hparams,
        "vary": m.vary, "seed": seed, "dataset": cfgs[0].get("dataset"),
        "backbone": ENSEMBLE_BACKBONE if m.vary == "backbone" else cfgs[0].get("backbone"),
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
    oracle, chosen = member_m[best["test"]], member_m[best["val"]]
    extra = {
        "n_members": len(run_dirs),
        **ablation,
        **{f"best_member_{k}": oracle[k] for k in ABLATION_KEYS},
        **{f"val_best_member_{k}": chosen[k] for k in ABLATION_KEYS},
        **{f"gain_{k}": _diff(test_m[k], oracle[k]) for k in ABLATION_KEYS},
        **{f"val_gain_{k}": _diff(test_m[k], chosen[k]) for k in ABLATION_KEYS},
        "best_member": best,  # indices into predictor.json's members (the report reads it)
        "n_trainable_params": compute["n_trainable_params"],
        "inference_cost": compute["inference_cost"],
        # here, not in info: write_run lets extra metrics override, and None stays None
        "train_seconds": compute["train_seconds"],
    }
    info = {"rule": m.hparams.get("rule"), "vary": m.vary, "members": names,
            "best_member": names[best["test"]],
            "best_member_chosen_on": "test (oracle; val_best_member_* is chosen on val)",
            "val_best_member": names[best["val"]],
            "member_top1": {str(b): x["top1"] for b, x in zip(names, member_m, strict=True)},
            "member_val_top1": {str(b): v for b, v in zip(names, member_val, strict=True)},
            "p_groups_prior": "mean of the members' q̂" if q_hat is not None else None,
            "members_train_seconds": compute["members_train_seconds"],
            "weight_fit_seconds": fit_seconds, **fit_info}
    metrics = write_run(out_dir, logits, train_counts=counts, config=config, info=info,
                        pretrain_prior=q_hat, started_at=started, extra_metrics=extra)
    log.info("%s: %s (%s over %s) test top1 %.4f, best member %s %.4f", out_dir, m.name,
             info["rule"], ", ".join(map(str, names)), metrics["top1"], names[best["test"]],
             oracle["top1"])
    return metrics
