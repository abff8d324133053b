"""Collect finished runs into a pandas frame, each read through its ``RunFolder``."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from lt_bench.errors import MissingInputError
from lt_bench.runs.layout import METRICS_JSON, find_run_dirs  # noqa: F401  (re-exported)
from lt_bench.runs.run_folder import IDENTITY, RunFolder


def _scalar(v):
    """JSON ``null`` (an undefined metric, e.g. no Few class) becomes NaN."""
    if v is None:
        return math.nan
    return v


def collect_runs(runs_root: Path | str, metrics_files: list[Path | str] | None = None) -> pd.DataFrame:
    """One row per finished run: identity columns, then every scalar metric (None → NaN),
    ``run_dir`` and ``label`` (the display name from the hyper-parameters that ran, from
    the run's ``config.json``)."""
    from lt_bench.report.format import label_of
    from lt_bench.runs.index import report_run_dirs  # the runs of the tables by hand

    dirs = ([Path(f).parent for f in metrics_files] if metrics_files is not None
            else report_run_dirs(runs_root))
    rows = []
    for r in map(RunFolder.open, dirs):
        row = {k: (v if k in IDENTITY else _scalar(v)) for k, v in r.metrics.items()
               if not isinstance(v, dict | list)}
        row.update(r.identity)
        row["run_dir"] = str(r.path)
        row["label"] = label_of(str(row.get("method")), r.hparams)
        rows.append(row)
    if not rows:
        raise MissingInputError(f"no finished runs ({METRICS_JSON}) under {runs_root}")
    return pd.DataFrame(rows)


def collect_per_class(run_dirs: list[Path | str]) -> pd.DataFrame:
    """``per_class.parquet`` of each run, with the run's identity and folder as columns, and
    ``ensemble``: whether the run combines several runs (``RunFolder.is_ensemble``)."""
    frames = []
    for r in map(RunFolder.open, run_dirs):
        path = r.path / "per_class.parquet"
        if not path.is_file():
            raise MissingInputError(f"{r.path}: finished run without per_class.parquet")
        df = pd.read_parquet(path)
        for k, v in r.identity.items():
            df[k] = v
        df["ensemble"] = r.is_ensemble
        df["run_dir"] = str(r.path)
        frames.append(df)
    if not frames:
        raise MissingInputError("no run folders given")
    return pd.concat(frames, ignore_index=True)
