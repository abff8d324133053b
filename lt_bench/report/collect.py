"""Collect finished runs (``metrics.json``) into a pandas frame."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from lt_bench.io import read_json

IDENTITY = ("dataset", "backbone", "method", "seed")


from lt_bench.runs.folder import find_run_dirs  # noqa: E402,F401  (re-exported: the one glob)


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
    from lt_bench.runs.folder import report_run_dirs  # the runs of the tables by hand

    files = ([Path(f) for f in metrics_files] if metrics_files is not None
             else [d / "metrics.json" for d in report_run_dirs(runs_root)])
    rows = []
    for f in files:
        m = read_json(f)
        row = {k: (v if k in IDENTITY else _scalar(v)) for k, v in m.items()
               if not isinstance(v, dict | list)}
        row["run_dir"] = str(Path(f).parent)
        cfg = Path(f).parent / "config.json"
        hp = read_json(cfg).get("hparams") if cfg.is_file() else None
        row["label"] = label_of(str(row.get("method")), hp)
        rows.append(row)
    if not rows:
        raise FileNotFoundError(f"no finished runs (metrics.json) under {runs_root}")
    return pd.DataFrame(rows)


def run_identity(run_dir: Path | str) -> dict:
    """dataset, backbone, method, seed of a finished run (and its ensemble members, if any)."""
    run_dir = Path(run_dir)
    m = read_json(run_dir / "metrics.json")
    cfg_path = run_dir / "config.json"
    cfg = read_json(cfg_path) if cfg_path.is_file() else {}
    ident = {k: m.get(k, cfg.get(k)) for k in IDENTITY}
    ident["members"] = list(cfg.get("members") or [])
    return ident


def collect_per_class(run_dirs: list[Path | str]) -> pd.DataFrame:
    """``per_class.parquet`` of each run, with the run's identity and folder as columns."""
    frames = []
    for d in run_dirs:
        d = Path(d)
        path = d / "per_class.parquet"
        if not path.is_file():
            raise FileNotFoundError(f"{d}: finished run without per_class.parquet")
        ident = run_identity(d)
        df = pd.read_parquet(path)
        for k in IDENTITY:
            df[k] = ident[k]
        df["ensemble"] = bool(ident["members"]) or ident["backbone"] == "ensemble"
        df["run_dir"] = str(d)
        frames.append(df)
    if not frames:
        raise FileNotFoundError("no run folders given")
    return pd.concat(frames, ignore_index=True)
