"""A run of a features-consuming method: fit it on one (dataset, backbone, seed)'s cached
features, save its predictor, and finish through :func:`lt_bench.runs.folder.write_run`.

The val/test view a run reads is its ``view`` hyper-parameter (``auto``, ``centre``,
``fivecrop``; ``lt_bench.features.eval_views.split_view``): its knobs are fitted on that val
view and its test logits come from that test view ("fit on what is reported"); q̂ and its
T are the prior file's estimate on the same view. The train split has one view. The
resolved view is recorded in ``config.json`` (``view``), which the seam reads back.

A trained head's fit does not depend on the view (:func:`view_free_share_key`), so the runs
of one job that differ only in ``view`` (``la`` and its TTE twin ``la_tte``) share one fit:
the second run takes the first's predictor, history and info (``fit_shared_with``) and
evaluates it on its own view, the numbers a separate fit would give."""

from __future__ import annotations

import logging
import time
from dataclasses import replace
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
    from lt_bench.features.store import check_folder, read_features, read_text_embeddings

    features_dir = Path(features_dir)
    splits = {s: read_features(features_dir / f"{s}.parquet") for s in SPLITS}
    text = read_text_embeddings(features_dir / "text.parquet")
    # one extraction's files: val/test/text of another one give a "finished" run at chance
    check_folder({**{s: (features_dir / f"{s}.parquet", f.meta) for s, f in splits.items()},
                  "text": (features_dir / "text.parquet", text.meta)})
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
              device: str = "cpu", group_counts: np.ndarray | None = None,
              reuse_dir: Path | None = None) -> dict[str, Any]:
    """Fit ``method`` (consumes "features") and write its run folder. ``tune``: may knobs be
    tuned on val (None: decided by the dataset's default ``val_overlaps_train``; the
    workflow passes it from the configured dataset parameters)."""
    run = {"method": method, "out": out_dir, "seed": seed, "params": hparams or {},
           "base": base_runs or {}}
    return train_runs(features_dir, [run], prior=prior, tune=tune, device=device,
                      group_counts=group_counts, reuse_dir=reuse_dir)[0]


#: keys every run of a ``--runs`` list has (`lt-bench fit` and `lt-bench combine`)
RUN_KEYS = ("method", "out", "seed")


def check_run_list(runs: Any, optional: tuple[str, ...] = ("params", "base")
                   ) -> list[dict[str, Any]]:
    """A ``--runs`` list: JSON objects with method, out, seed and the ``optional`` keys
    (a features run's params and base; a runs-consuming run's params and members)."""
    if not isinstance(runs, list) or not runs:
        raise InputValidationError("--runs must be a non-empty JSON list of runs, e.g. "
                                   '[{"method": "la", "out": "DIR", "seed": 0}]')
    valid = sorted((*RUN_KEYS, *optional))
    for i, r in enumerate(runs):
        if not isinstance(r, dict) or not set(RUN_KEYS) <= set(r):
            raise InputValidationError(f"--runs[{i}] must be an object with method, out and "
                                       f"seed (optional: {', '.join(optional)}); got {r!r}")
        if set(r) - set(valid):
            raise InputValidationError(f"--runs[{i}]: unknown key(s) {sorted(set(r) - set(valid))};"
                                       f" valid: {valid}")
    return runs


class _Features:
    """One (dataset, backbone) features folder, read and hashed once for every run of a job."""

    def __init__(self, features_dir: Path, prior: Path | None, group_counts):
        from lt_bench.prior import read_prior

        self.dir = Path(features_dir)
        self.splits, self.text = load_features_dir(self.dir)
        self.meta = self.splits["train"].meta
        self.counts = train_counts_of(self.splits["train"].labels, self.text.classnames,
                                      f"{self.dir}/train.parquet")
        self.prior_path = prior
        self.prior = read_prior(prior, len(self.text.classnames), dataset=self.meta.get(
            "dataset"), backbone=self.meta.get("backbone"), used_with=self.dir / "train.parquet"
        ) if prior is not None else None
        self.prior_sha = sha256_file(prior) if prior is not None else None
        self.views = _train_views(self.dir, self.splits["train"])
        self.group_counts = group_counts
        files = [*SPLITS, "text"] + (["train_views"] if self.views is not None else [])
        self.sha = {s: sha256_file(self.dir / f"{s}.parquet") for s in files}
        self.device_memo: dict = {}  # features moved to the device once per process


def view_free_share_key(run: dict[str, Any], m) -> str | None:
    """The key under which runs of one job (one features folder, one device) share a fit
    when they differ only in ``view``, else None. Only :class:`HeadMethod`'s own fit is
    view-free: it trains on train and logs the centre val column (``ctx.val.features``) in
    its history (lt_bench/methods/_heads.py). A method with a prior (``gla_train``: q̂ of
    its view), any other ``fit`` (post-hoc knobs, k-NN's k and GLA's T are fitted on the
    run's val view) fits per view."""
    import json

    from lt_bench.methods._heads import HeadMethod

    cls = type(m)
    if not isinstance(m, HeadMethod) or cls.fit is not HeadMethod.fit or cls.needs_prior:
        return None
    hp = {k: v for k, v in m.hparams.items() if k != "view"}
    return json.dumps([cls.variant_of or run["method"], hp, int(run["seed"]),
                       run.get("base") or {}], sort_keys=True, default=str)


def train_runs(features_dir: Path, runs: list[dict[str, Any]], *, prior: Path | None = None,
               tune: bool | None = None, device: str = "cpu",
               group_counts: np.ndarray | None = None,
               reuse_dir: Path | None = None) -> list[dict[str, Any]]:
    """Fit every run of ``runs`` (in order: a base run before the runs built on it) on one
    features folder read once; each finishes through ``write_run``. With ``reuse_dir``, a
    run whose fit key is cached is restored instead of refitted (lt_bench/runs/reuse.py)."""
    from lt_bench.methods import METHODS

    runs = check_run_list(runs)
    methods = []  # every name and hyper-parameter checked before anything is fitted
    from lt_bench.features.eval_views import check_view

    for r in runs:
        cls = METHODS.get(r["method"])
        if cls.consumes != "features":  # the CLI routes each kind to its verb (runs/cli.py)
            raise InputValidationError(
                f"method {r['method']!r} consumes {cls.consumes}, not cached features")
        methods.append(cls(**(r.get("params") or {})))
        check_view(methods[-1].hparams.get("view", "auto"), r["method"])
        if cls.needs_prior and prior is None:
            raise InputValidationError(
                f"method {r['method']!r} needs the backbone's estimated prior "
                "(--prior results/prior/{dataset}/{backbone}.parquet)")
    feats = _Features(features_dir, prior, group_counts)
    if tune is None:
        tune = may_tune(feats.meta.get("dataset"))
    # fits kept for a later run of this job that differs only in view (keys seen twice)
    keys = [view_free_share_key(r, m) for r, m in zip(runs, methods, strict=True)]
    shared: dict[str, tuple | None] = {k: None for k in keys
                                       if k is not None and keys.count(k) > 1}
    out = []
    for i, (r, m, k) in enumerate(zip(runs, methods, keys, strict=True), 1):
        log.info("run %d/%d: %s seed %s -> %s", i, len(runs), r["method"], r["seed"], r["out"])
        out.append(_fit_one(feats, r, m, tune=tune, device=device, reuse_dir=reuse_dir,
                            shared=shared, share=k if k in shared else None))
    return out


def _fit_one(feats: _Features, run: dict[str, Any], m, *, tune: bool, device: str,
             reuse_dir: Path | None, shared: dict[str, tuple | None],
             share: str | None) -> dict[str, Any]:
    """One run of ``train_runs``: ``m`` is its method, built from ``run["params"]``;
    ``share`` its key in ``shared`` (fit, run folder) where another run of the job shares
    its fit (:func:`view_free_share_key`), else None."""
    from lt_bench.features.eval_views import default_view, resolve_view, split_view
    from lt_bench.methods import FitContext
    from lt_bench.runs import reuse

    started = time.time()
    method, seed, out_dir = run["method"], int(run["seed"]), Path(run["out"])
    base_runs = {k: Path(v) for k, v in (run.get("base") or {}).items()}
    meta, pf = feats.meta, feats.prior
    # the val/test view this run reads, fits its knobs on and reports; train has one view
    splits = {"train": feats.splits["train"],
              **{s: split_view(feats.splits[s], m.hparams.get("view"), feats.dir)
                 for s in ("val", "test")}}
    view = resolve_view(feats.splits["val"], m.hparams.get("view"))
    q_hat, q_temperature = (pf.of_view(view, default_view(feats.splits["val"]),
                                       f"{method} (view {view})") if pf else (None, None))
    check_base_runs(method, m.requires, base_runs, meta.get("dataset"),
                    meta.get("backbone"), seed)
    gc = None if feats.group_counts is None else np.asarray(feats.group_counts).tolist()
    key = reuse.fit_key(
        method=method, hparams=m.hparams, seed=seed, out=str(out_dir),
        features_dir=str(feats.dir), features=feats.sha,
        prior=feats.prior_sha,
        base={n: reuse.run_key(d) for n, d in base_runs.items()}, tune=tune,
        device=str(device).split(":")[0], group_counts=gc)
    hit = reuse.restore(reuse_dir, key, out_dir)
    if hit is not None:
        return hit
    ctx = FitContext(train=splits["train"], val=splits["val"], text=feats.text,
                     train_counts=feats.counts, seed=seed,
                     pretrain_prior=q_hat, pretrain_prior_temperature=q_temperature,
                     base_predictors={n: load_run_predictor(d) for n, d in base_runs.items()},
                     tune=tune, features_dir=feats.dir, device=device,
                     train_views=feats.views, device_memo=feats.device_memo)
    unfinish(out_dir)
    t0 = time.time()
    if share is not None and shared[share] is not None:  # la_tte after la: one fit
        first, by = shared[share]
        result = replace(first, info={**first.info, "fit_shared_with": by})
        log.info("%s: the fit of %s (only the view differs)", out_dir, by)
    else:
        result = m.fit(ctx)
        if share is not None:
            shared[share] = (result, str(out_dir))
    fit_seconds = time.time() - t0
    result.predictor.save(out_dir)
    config = {
        "method": method, "consumes": "features", "hparams": m.hparams, "seed": seed,
        "dataset": meta.get("dataset"), "backbone": meta.get("backbone"),
        # what identifies the weights the features came from (sha256 of the loaded file)
        "weights": meta.get("weights"),
        "features_dir": str(feats.dir),
        "feature_sha256": {s: feats.sha[s] for s in SPLITS},
        "split_sha256": {s: f.meta.get("split_sha256") for s, f in splits.items()},
        "num_classes": len(feats.text.classnames),
        "prior": str(feats.prior_path) if feats.prior_path else None,
        "tune": tune, "device": device,
        "view": view,  # the val/test view read (the seam reads this one back)
        "base_runs": {n: str(v) for n, v in base_runs.items()},
        "fit_key": key,
    }
    logits = {s: (splits[s].labels, split_logits_of(result.predictor, splits[s]))
              for s in ("val", "test")}
    n_params = int(sum(np.asarray(t.weight).size for t in getattr(result.predictor, "terms", [])
                       )) if result.history else 0
    metrics = write_run(out_dir, logits, train_counts=feats.counts, config=config,
                        info={**result.info, "fit_seconds": fit_seconds},
                        # P-groups from the file's own q̂ whatever the view: one grouping
                        # for a backbone's rows
                        history=result.history, pretrain_prior=pf.q_hat if pf else None,
                        group_counts=feats.group_counts, started_at=started,
                        # five forward passes an image on the crops (as the fine-tuning's
                        # TTE view, runs/finetune.py)
                        extra_metrics={"n_trainable_params": n_params,
                                       "inference_cost": 5.0 if view == "fivecrop" else 1.0})
    reuse.store(reuse_dir, key, out_dir)
    return metrics
