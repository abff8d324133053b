"""How a run and a setting are named and keyed in MLflow: the experiment, ``run_key`` and
``group_key`` (identity), and the short run names and knob labels a reader sees
(decided on screenshots: ``lt_bench.tracking.records`` says why)."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

from lt_bench.io import stable_hash

EXPERIMENT_PREFIX = "lt-bench/"
#: long method-name parts and their short forms in run names (the tag ``method`` is exact)
METHOD_ABBREV = (("backdoor", "bd"), ("same_backbone", "same"), ("finetuned", "ft"),
                 ("adaptformer", "af"), ("prob_mean", "pmean"), ("learned", "lrn"),
                 ("posthoc", "ph"))
#: a few hyper-parameters by the symbol the papers use
SYMBOLS = {"tau": "τ", "gamma": "γ", "beta": "β", "alpha": "α", "remine_lambda": "λ"}


# --- identity -------------------------------------------------------------------------

def experiment_name(suite: str) -> str:
    return f"{EXPERIMENT_PREFIX}{suite}"


def run_key(suite: str, dataset: str, backbone: str, method: str, seed: int) -> str:
    """Deterministic key of one run folder within a suite (16 hex digits)."""
    return stable_hash({"suite": suite, "dataset": dataset, "backbone": backbone,
                        "method": method, "seed": int(seed)}, n=16)


def group_key(config: Mapping[str, Any]) -> str:
    """Key of the configuration without the seed: the seeds of one setting share it."""
    return stable_hash({"dataset": config.get("dataset"), "backbone": config.get("backbone"),
                        "method": config.get("method"), "hparams": config.get("hparams") or {}},
                       n=16)


def non_default_hparams(hparams: Mapping[str, Any],
                        defaults: Mapping[str, Any] | None) -> dict[str, Any]:
    """The hyper-parameters that differ from the method's defaults (none if unknown)."""
    if defaults is None:
        return {}
    return {k: v for k, v in sorted(hparams.items()) if k not in defaults or defaults[k] != v}


def _short(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    return v if isinstance(v, str) else json.dumps(v, separators=(",", ":"))


def setting_label(method: str, hparams: Mapping[str, Any]) -> str:
    """``la τ=0.5`` from a method and its non-default hyper-parameters."""
    knobs = knob_label(hparams)
    return f"{method} {knobs}" if knobs else method


def compact_method(method: str) -> str:
    """``bd_same_bb`` for ``backdoor_same_backbone``: short enough for the name column."""
    for long, short in METHOD_ABBREV:
        method = method.replace(long, short)
    return method


def compact_backbone(backbone: str) -> str:
    """``clip-b16`` for ``clip_vit_b16`` (the paper's backbones differ before ``_vit``)."""
    return backbone.replace("_vit_", "-")


def run_name(method: str, knobs: str, dataset: str | None, backbone: str,
             seed: int | None) -> str:
    """The MLflow run name: ``bd_same toyclip0 s0`` (method, backbone, seed), then the dataset
    where the experiment holds several (``dataset=None`` otherwise), then the knobs.

    MLflow 3.17's run-name column shows ~20 characters (measured in headless Chromium,
    tests/test_mlflow_ui.py) and the shared view cannot widen it: what tells runs apart
    comes first, what the ``group`` column shows anyway (dataset, knobs) last."""
    name = compact_method(method) + " " + compact_backbone(backbone)
    name += f" s{seed}" if seed is not None else ""
    name += f" {dataset}" if dataset else ""
    return f"{name} {knobs}" if knobs else name


def knob_label(hparams: Mapping[str, Any]) -> str:
    """``τ=0.5 epochs=3``: the non-default hyper-parameters of a setting."""
    return " ".join(f"{SYMBOLS.get(k, k)}={_short(v)}" for k, v in hparams.items())


def setting_stats(values: list[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (ddof = 1, as the report's tables; None for one)."""
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, None
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
