"""What the tables say about each row beyond its numbers, detected from the run data alone.

* **deterministic**: every seed of a row gave bit-identical evaluation metrics (zero-shot,
  k-NN, a post-hoc method whose knob is fixed): n = 1 distinct result, whatever ``n_seeds``.
* **identical to X**: on every seed the row's evaluation metrics are bit-identical to those
  of method X on the same dataset and backbone (``bs`` = ``la`` at τ = 1; ``tau_norm`` =
  ``ce`` where the knob could not be tuned). X is the earlier row in the table's order.
* **compute**: ``n_trainable_params``, ``inference_cost`` (relative to one backbone) and
  ``train_seconds``, mean over seeds, where the runs report them.
* **class counts** of each group (``n_many_classes`` ...; P-groups from the D×P cells).

No ``metrics.json`` flag is trusted for this (docs/architecture.md §3: the files are the source of truth).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

KEYS = ["dataset", "backbone", "method"]
#: metrics computed from the test predictions only: equal logits give equal values
EVAL_PREFIXES = ("top1", "many", "medium", "few", "p_many", "p_medium", "p_few", "dp_",
                 "ece", "macro_f1", "worst_class", "hmean", "gmean")
COMPUTE = ("n_trainable_params", "inference_cost", "train_seconds")
D_GROUPS = ("many", "medium", "few")
P_GROUPS = ("p_many", "p_medium", "p_few")


def eval_columns(runs: pd.DataFrame) -> list[str]:
    cols = [c for c in runs.columns if isinstance(c, str) and c.startswith(EVAL_PREFIXES)
            and not c.startswith("n_") and pd.api.types.is_numeric_dtype(runs[c])]
    return sorted(cols)


def _fingerprint(runs: pd.DataFrame, cols: list[str]) -> dict[int, tuple]:
    """Per run: its evaluation metrics as a hashable tuple (NaN made comparable)."""
    vals = runs[cols].to_numpy(dtype=float)
    return {i: tuple(np.where(np.isnan(v), np.inf, v)) for i, v in zip(runs.index, vals,
                                                                          strict=True)}


def row_notes(runs: pd.DataFrame, method_order: Sequence[str] | None = None) -> pd.DataFrame:
    """One row per (dataset, backbone, method): ``n_seeds``, ``n_distinct``,
    ``deterministic``, ``identical_to`` (a method id or ""), and the compute columns."""
    cols = eval_columns(runs)
    fp = _fingerprint(runs, cols) if cols else {i: (i,) for i in runs.index}
    rank = {m: i for i, m in enumerate(method_order or [])}
    seed = runs["seed"] if "seed" in runs.columns else pd.Series(0, index=runs.index)
    out = []
    for (ds, bb), part in runs.groupby(["dataset", "backbone"], sort=True):
        methods = sorted(set(part["method"]), key=lambda m: (rank.get(m, len(rank)), m))
        per_method = {m: {int(s): fp[i] for i, s in zip(part.index[part["method"] == m],
                                                        seed[part.index[part["method"] == m]],
                                                        strict=True)}
                      for m in methods}
        for j, m in enumerate(methods):
            by_seed = per_method[m]
            distinct = len(set(by_seed.values()))
            same = ""
            for other in methods[:j]:  # the first earlier method with the same results
                if per_method[other] == by_seed and not same_as_nothing(by_seed):
                    same = other
                    break
            row = {"dataset": ds, "backbone": bb, "method": m, "n_seeds": len(by_seed),
                   "n_distinct": distinct, "deterministic": len(by_seed) > 1 and distinct == 1,
                   "identical_to": same}
            sub = part[part["method"] == m]
            for c in COMPUTE:
                if c in sub.columns and sub[c].notna().any():
                    row[c] = float(sub[c].astype(float).mean())
            out.append(row)
    return pd.DataFrame(out, columns=KEYS + ["n_seeds", "n_distinct", "deterministic",
                                             "identical_to", *[c for c in COMPUTE if any(
                                                 c in r for r in out)]])


def same_as_nothing(by_seed: dict) -> bool:
    """A run without any evaluation metric is not 'identical' to anything."""
    return all(all(v == np.inf for v in t) for t in by_seed.values())


def group_class_counts(runs: pd.DataFrame) -> dict[str, dict[str, int]]:
    """Per dataset: classes in each D-group (``many`` ...) and P-group (``p_many`` ...)."""
    out: dict[str, dict[str, int]] = {}
    for ds, part in runs.groupby("dataset", sort=True):
        counts: dict[str, int] = {}
        for g in D_GROUPS:
            c = f"n_{g}_classes"
            if c in part.columns and part[c].notna().any():
                counts[g] = int(part[c].max())
        for p in P_GROUPS:  # a P-group's classes are the sum of its D×P cells
            cells = [f"n_dp_{d}_{p}_classes" for d in D_GROUPS]
            if all(c in part.columns for c in cells):
                tot = part[cells].sum(axis=1, min_count=len(cells)).dropna()
                if len(tot):
                    counts[p] = int(tot.max())
        out[ds] = counts
    return out


def footnotes(notes: pd.DataFrame, display) -> tuple[dict[tuple, str], list[str]]:
    """Footnote letters for identical rows: {(dataset, backbone, method): "a"} and texts."""
    marks: dict[tuple, str] = {}
    texts: dict[tuple, str] = {}
    for _, r in notes.iterrows():
        if r["identical_to"]:
            key = (r["method"], r["identical_to"])
            if key not in texts:
                letter = "abcdefghijklmnopqrstuvwxyz"[len(texts) % 26]
                texts[key] = letter
            marks[(r["dataset"], r["backbone"], r["method"])] = texts[key]
    lines = []
    for (m, other), letter in texts.items():
        rows = notes[(notes["method"] == m) & (notes["identical_to"] == other)]
        where = ", ".join(f"{d}/{b}" for d, b in zip(rows["dataset"], rows["backbone"],
                                                     strict=True))
        lines.append(f"({letter}) {display(m)} is bit-identical to {display(other)} on every "
                     f"seed ({where}): not a separate result.")
    return marks, lines
