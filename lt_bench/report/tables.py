"""The paper-style results tables (mean ± std over seeds)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from lt_bench.io import atomic_path

KEYS = ["dataset", "backbone", "method"]
MAIN_METRICS = ["top1", "many", "medium", "few"]


def summarize(runs: pd.DataFrame, metrics: list[str], keys: list[str] = KEYS) -> pd.DataFrame:
    """Mean and sample std (ddof=1; NaN for one seed) over seeds, in percent."""
    missing = [m for m in metrics if m not in runs.columns]
    if missing:
        raise KeyError(f"metric(s) {missing} not in the runs; available: {sorted(runs.columns)}")
    pct = runs[keys + metrics].copy()
    pct[metrics] = pct[metrics].astype(float) * 100
    g = pct.groupby(keys, sort=True)
    out = g.size().rename("n_seeds").to_frame()
    for m in metrics:
        out[f"{m}_mean"] = g[m].mean()
        out[f"{m}_std"] = g[m].std(ddof=1)
    return out.reset_index()


def markdown(table: pd.DataFrame, metrics: list[str], keys: list[str] = KEYS) -> str:
    """Markdown table with ``mean ± std`` cells, rounded to 0.1 points."""
    view = table[keys + ["n_seeds"]].copy()
    for m in metrics:
        mean, std = table[f"{m}_mean"], table[f"{m}_std"]
        view[m] = [f"{a:.1f} ± {b:.1f}" if pd.notna(b) else (f"{a:.1f}" if pd.notna(a) else "–")
                   for a, b in zip(mean, std, strict=True)]
    return view.to_markdown(index=False) + "\n"


def write_main_table(runs: pd.DataFrame, out_dir: Path) -> pd.DataFrame:
    table = summarize(runs, MAIN_METRICS)
    out_dir = Path(out_dir)
    with atomic_path(out_dir / "main.csv") as tmp:
        table.to_csv(tmp, index=False, float_format="%.4f")
    with atomic_path(out_dir / "main.md") as tmp:
        tmp.write_text(markdown(table, MAIN_METRICS))
    return table
