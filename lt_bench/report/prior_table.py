"""The prior table: how well the estimated pre-training prior q̂ tracks the true one.

One row per prior file (``results/prior/{dataset}/{backbone}.parquet``: columns ``label``,
``q_hat``, optional ``q_true``; schema metadata ``lt_bench`` JSON with ``temperature``,
``zero_shot_top1``, ``dataset``, ``backbone``). Columns: the fitted temperature T, the
zero-shot top-1 on val (percent), and, where the true prior is known (toy backbones),
Spearman/Pearson ρ(q̂, q_true), KL(q_true ‖ q̂) and the total variation distance.
"""

from __future__ import annotations

import html as _html
import json
from pathlib import Path

import numpy as np
import pandas as pd

from lt_bench.errors import InputValidationError
from lt_bench.io import atomic_path
from lt_bench.report import format as fmt

CAPTION = ("Estimated vs true pre-training prior: q̂ is GLA's estimate from zero-shot logits "
           "on val (temperature T chosen so that confidence = accuracy); zero-shot top-1 on "
           "val in %; Spearman / Pearson: ρ(q̂, q_true); KL: KL(q_true ‖ q̂); TV: total "
           "variation distance (in %).")
COLUMNS = ["dataset", "backbone", "num_classes", "temperature", "zero_shot_top1", "spearman",
           "pearson", "kl_true_hat", "tv"]
TITLES = {"num_classes": "classes", "temperature": "T", "zero_shot_top1": "zero-shot top-1",
          "spearman": "Spearman ρ", "pearson": "Pearson ρ", "kl_true_hat": "KL", "tv": "TV"}


def _meta(path: Path) -> dict:
    import pyarrow.parquet as pq

    raw = (pq.read_schema(path).metadata or {}).get(b"lt_bench")
    if raw is None:
        return {}
    try:
        return json.loads(raw)
    except json.JSONDecodeError as e:
        raise InputValidationError(f"{path}: schema metadata 'lt_bench' is not JSON ({e}); "
                                   "expected the prior file of `lt-bench prior`") from e


def agreement(q_hat: np.ndarray, q_true: np.ndarray) -> dict[str, float]:
    """ρ (Spearman, Pearson), KL(q_true ‖ q̂), TV, both priors renormalised."""
    from scipy.stats import pearsonr, spearmanr

    q_hat = np.asarray(q_hat, dtype=np.float64)
    q_true = np.asarray(q_true, dtype=np.float64)
    q_hat, q_true = q_hat / q_hat.sum(), q_true / q_true.sum()
    return {"spearman": float(spearmanr(q_hat, q_true).statistic),
            "pearson": float(pearsonr(q_hat, q_true).statistic),
            "kl_true_hat": float(np.sum(q_true * (np.log(q_true) - np.log(q_hat)))),
            "tv": float(0.5 * np.abs(q_true - q_hat).sum())}


def prior_rows(prior_paths: list[Path]) -> pd.DataFrame:
    rows = []
    for p in map(Path, prior_paths):
        if not p.is_file():
            raise InputValidationError(f"prior file {p} not found; expected a Parquet file "
                                       "of `lt-bench prior` (label, q_hat[, q_true])")
        df = pd.read_parquet(p)
        if not {"label", "q_hat"} <= set(df.columns):
            raise InputValidationError(f"{p}: columns {list(df.columns)}; expected label, "
                                       "q_hat and optionally q_true")
        df = df.sort_values("label")
        meta = _meta(p)
        row = {"dataset": meta.get("dataset", p.parent.name),
               "backbone": meta.get("backbone", p.stem), "num_classes": len(df),
               "temperature": meta.get("temperature"),
               "zero_shot_top1": (None if meta.get("zero_shot_top1") is None
                                  else 100 * float(meta["zero_shot_top1"]))}
        if "q_true" in df.columns and df["q_true"].notna().all():
            row.update(agreement(df["q_hat"].to_numpy(), df["q_true"].to_numpy()))
            row["tv"] *= 100
        rows.append(row)
    return pd.DataFrame(rows, columns=COLUMNS)


def _text(col: str, v) -> str:
    if v is None or (isinstance(v, float) and np.isnan(v)):
        return "–"
    if col == "num_classes":
        return str(int(v))
    if col in ("zero_shot_top1", "tv"):
        return f"{v:.1f}"
    if col == "temperature":
        return f"{v:.3g}"
    return f"{v:.2f}" if col in ("spearman", "pearson") else f"{v:.3f}"


def write_prior_table(prior_paths: list[Path], out_dir: Path) -> pd.DataFrame:
    """``prior.csv`` (full precision; top-1 and TV in percent), ``prior.md``, ``prior.tex``
    and ``prior.html``; columns without any value (no true prior) are left out."""
    table = prior_rows(prior_paths)
    shown = table.dropna(axis=1, how="all")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(out_dir / "prior.csv") as tmp:
        shown.to_csv(tmp, index=False)
    cols = [c for c in shown.columns]
    header = ["dataset", "backbone"] + [TITLES[c] for c in cols[2:]]
    rows = [[str(r["dataset"]), str(r["backbone"])] + [_text(c, r[c]) for c in cols[2:]]
            for _, r in shown.iterrows()]
    md = ("# Estimated vs true pre-training prior\n\n" + CAPTION + "\n\n"
          + "| " + " | ".join(header) + " |\n| " + " | ".join(
              "---" if i < 2 else "---:" for i in range(len(header))) + " |\n"
          + "".join("| " + " | ".join(r) + " |\n" for r in rows))
    tex = ["% Generated by lt-bench from the prior files; do not edit.",
           "% Needs \\usepackage{booktabs}.",
           r"\begin{table}[t]", r"\centering", rf"\caption{{{fmt.tex_escape(CAPTION)}}}",
           r"\label{tab:prior}", r"\begin{tabular}{ll" + "r" * (len(header) - 2) + "}",
           r"\toprule", " & ".join(fmt.tex_escape(h) for h in header) + r" \\", r"\midrule"]
    tex += [" & ".join(fmt.tex_escape(c) for c in r) + r" \\" for r in rows]
    tex += [r"\bottomrule", r"\end{tabular}", r"\end{table}", ""]
    page = fmt.html_page("prior table", fmt.html_table(
        [_html.escape(h) for h in header], [[_html.escape(c) for c in r] for r in rows],
        _html.escape(CAPTION), "prior"))
    for ext, text in (("md", md), ("tex", "\n".join(tex)), ("html", page)):
        with atomic_path(out_dir / f"prior.{ext}") as tmp:
            tmp.write_text(text)
    return shown
