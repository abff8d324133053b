"""Collect finished runs (``metrics.json``) into a pandas frame."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from lt_bench.io import read_json


def collect_runs(runs_root: Path | str, metrics_files: list[Path | str] | None = None) -> pd.DataFrame:
    """One row per finished run: identity columns, then every scalar metric."""
    files = ([Path(f) for f in metrics_files] if metrics_files is not None
             else sorted(Path(runs_root).glob("*/*/*/seed*/metrics.json")))
    rows = []
    for f in files:
        m = read_json(f)
        row = {k: v for k, v in m.items() if not isinstance(v, dict | list)}
        row["run_dir"] = str(Path(f).parent)
        rows.append(row)
    if not rows:
        raise FileNotFoundError(f"no finished runs (metrics.json) under {runs_root}")
    return pd.DataFrame(rows)
