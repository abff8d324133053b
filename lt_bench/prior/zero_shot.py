"""q̂ of one (dataset, backbone) from its features folder: the CLIP's zero-shot logits on
the val split, GLA's estimate (``estimate.py``), written as the prior file (``file.py``)
that ``lt-bench prior`` makes: ``results/prior/{dataset}/{backbone}.parquet``."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from lt_bench.blocks import crop_blocks
from lt_bench.errors import InputValidationError
from lt_bench.io import sha256_file
from lt_bench.prior.estimate import (
    GLA_SGD_STEPS,
    estimate_prior,
    mean_confidence,
    prior_agreement,
)
from lt_bench.prior.file import read_true_prior, write_prior

log = logging.getLogger(__name__)


def zero_shot_logits(features_dir: Path, split: str = "val", view: str | None = None
                     ) -> tuple[np.ndarray, np.ndarray]:
    """(labels, logits) of the CLIP text classifier ``s · cos(e(x), t_k)`` on ``split``
    (``e(x)`` is ``encode_image``: the stored projection maps pre-projection features), on
    its ``view`` (None/``auto``: the file's default; ``eval_views.split_view``). On the five-crop
    view the logits are averaged over the crops, as a run's val/test logits are: T and q̂
    are fitted on what the runs report."""
    from lt_bench.features.store import read_features

    features_dir = Path(features_dir)
    return _view_logits(features_dir, read_features(features_dir / f"{split}.parquet"), view)


def _view_logits(features_dir: Path, split, view: str | None) -> tuple[np.ndarray, np.ndarray]:
    from lt_bench.features.eval_views import split_view
    from lt_bench.features.store import read_text_embeddings

    text = read_text_embeddings(features_dir / "text.parquet")
    if text.embeddings is None or text.logit_scale is None:
        raise InputValidationError(
            f"{features_dir}: backbone {text.meta.get('backbone')!r} has no text tower, so "
            "no zero-shot logits and no prior estimate")
    feats = split_view(split, view, features_dir)
    # a block of images at a time into one float64 N × K (a five-crop view: the mean of its
    # crops' logits): the whole split at once held its float32 logits, a scaled copy and
    # the float64 one (iNat2018's val: 0.8 + 0.8 + 1.6 GB; five crops: 4 + 8 GB). A split
    # that fits one block (the toy world's) is the one call of before
    x = feats.features if feats.crops is None else feats.crops
    crops = 1 if feats.crops is None else feats.crops.shape[1]
    z = np.empty((len(feats.labels), len(text.classnames)))
    for rows in crop_blocks(len(z), crops, z.shape[1]):
        zb = np.asarray(text.zero_shot_logits(x[rows]), dtype=np.float64)
        z[rows] = zb if feats.crops is None else zb.mean(1)
    return feats.labels, z


def prior_from_features(features_dir: Path, out: Path, true_prior: Path | None = None,
                        split: str = "val", solver: str = "argmin") -> dict[str, Any]:
    """Estimate q̂ from a features folder and write the prior file; returns its metadata.

    ``q_hat`` is estimated on the val split's default view (``eval_views.default_view``); where
    the split has both views (``extract.tte: fivecrop`` / ``both``) the other one's q̂ is a
    ``q_hat_{view}`` column beside it, so a run of either view fits on what it reports."""
    features_dir = Path(features_dir)
    from lt_bench.features.eval_views import default_view
    from lt_bench.features.store import read_features

    val = read_features(features_dir / f"{split}.parquet")
    view = default_view(val)
    labels, logits = _view_logits(features_dir, val, view)
    q_hat, t = estimate_prior(logits, labels, solver=solver)
    val_meta = val.meta
    acc = float((logits.argmax(1) == labels).mean())
    meta: dict[str, Any] = {
        "temperature": t, "split": split, "zero_shot_top1": acc,
        "mean_confidence_at_T": mean_confidence(logits, t),
        "n_samples": int(len(labels)), "num_classes": int(logits.shape[1]),
        "dataset": val_meta.get("dataset"), "backbone": val_meta.get("backbone"),
        "features_dir": str(features_dir),  # as given (relative to the project root)
        "feature_sha256": sha256_file(features_dir / f"{split}.parquet"),
        "method": "GLA: T by confidence = accuracy; q̂ = argmin CE(z/T − log q, y)",
    }
    k = logits.shape[1]
    del logits  # the other view's logits next: one split's N × K float64 held at a time
    others: dict[str, np.ndarray] = {}
    if val.crops is not None:  # both views stored: the other view's q̂ too
        meta["view"] = view
        meta["views"] = {}
        for other in ({"centre", "fivecrop"} - {view}):
            _, z = _view_logits(features_dir, val, other)
            others[other], t_other = estimate_prior(z, labels, solver=solver)
            meta["views"][other] = {"temperature": t_other,
                                    "zero_shot_top1": float((z.argmax(1) == labels).mean())}
    if solver != "argmin":  # recorded only off the default, so default files are unchanged
        meta.update(solver=solver, method="GLA: T by confidence = accuracy; q̂ by GLA's "
                    f"pp_solver ({GLA_SGD_STEPS} Lagrangian SGD steps from uniform)")
    q_true = None
    if true_prior is not None:
        q_true = read_true_prior(Path(true_prior), k)
        meta.update(true_prior=str(true_prior), **prior_agreement(q_hat, q_true))
    write_prior(Path(out), q_hat, meta, q_true, others)
    log.info("prior %s: T %.4g, zero-shot top1 %.4f%s", out, t, acc,
             f", spearman {meta['spearman']:.3f}" if q_true is not None else "")
    return meta
