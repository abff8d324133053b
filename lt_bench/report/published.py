"""Published numbers beside ours: ``published_numbers.csv`` and its table.

The data file has one row per published number: ``dataset``, ``backbone``, ``method``,
``metric`` (``top1``/``many``/``medium``/``few`` in percent, or another named quantity),
``value``, ``source`` (where it was read), ``verified`` (``yes``: read in the primary source
named; ``no``: second-hand), and optionally ``our_backbone``/``our_method``: which of our
rows it corresponds to (empty: none, e.g. another backbone family). A number without a
source is refused. The table puts our mean over seeds (from ``main.csv``) beside each
published number with the difference ``ours − published``.
"""

from __future__ import annotations

import html as _html
from pathlib import Path

import pandas as pd

from lt_bench.errors import InputValidationError
from lt_bench.io import atomic_path
from lt_bench.report import format as fmt

DATA = Path(__file__).with_name("published_numbers.csv")
REQUIRED = ["dataset", "backbone", "method", "metric", "value", "source", "verified"]
CAPTION = ("Published numbers (top-1 in %) beside ours (mean over seeds, main table) for "
           "the same dataset, backbone and method; verified: read in the primary source "
           "named (no: second-hand, e.g. a mirror or a quote). Δ = ours − published.")


def read_published(path: Path | str | None = None) -> pd.DataFrame:
    path = Path(path) if path is not None else DATA
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    missing = [c for c in REQUIRED if c not in df.columns]
    if missing:
        raise InputValidationError(f"{path}: missing columns {missing}; expected {REQUIRED} "
                                   "(+ our_backbone, our_method, note)")
    for c in ("our_backbone", "our_method", "note"):
        if c not in df.columns:
            df[c] = ""
    for i, r in df.iterrows():
        where = f"{path} line {i + 2}"
        if not r["source"].strip():
            raise InputValidationError(f"{where}: a number without a source ({r['method']} "
                                       f"{r['metric']} = {r['value']}); every published "
                                       "number needs its source string")
        if r["verified"] not in ("yes", "no"):
            raise InputValidationError(f"{where}: verified is {r['verified']!r}; expected "
                                       "yes or no")
        try:
            float(r["value"])
        except ValueError:
            raise InputValidationError(f"{where}: value {r['value']!r} is not a number") \
                from None
    df["value"] = df["value"].astype(float)
    return df


def published_table(published: pd.DataFrame, main: pd.DataFrame | None) -> pd.DataFrame:
    """The published rows with ``ours``, ``ours_std``, ``n_seeds`` and ``diff`` (NaN: no row)."""
    out = published.copy()
    ours, std, n = [], [], []
    for _, r in out.iterrows():
        hit = pd.DataFrame()
        col = f"{r['metric']}_mean"
        if main is not None and not main.empty and r["our_method"] and col in main.columns:
            hit = main[(main["dataset"] == r["dataset"]) & (main["backbone"] == r["our_backbone"])
                       & (main["method"] == r["our_method"])]
        if len(hit):
            ours.append(float(hit.iloc[0][col]))
            std.append(float(hit.iloc[0][f"{r['metric']}_std"]))
            n.append(int(hit.iloc[0]["n_seeds"]))
        else:
            ours.append(float("nan"))
            std.append(float("nan"))
            n.append(0)
    out["ours"], out["ours_std"], out["n_seeds"] = ours, std, n
    out["diff"] = out["ours"] - out["value"]
    return out


def write_published_table(main: pd.DataFrame | None, out_dir: Path,
                          path: Path | str | None = None) -> pd.DataFrame:
    """``published.csv``, ``published.md`` and ``published.html``."""
    table = published_table(read_published(path), main)
    out_dir = Path(out_dir)
    with atomic_path(out_dir / "published.csv") as tmp:
        table.to_csv(tmp, index=False, float_format="%.4f")
    header = ["Dataset", "Backbone", "Method", "Metric", "Published", "Source", "Verified",
              "Ours", "Δ"]
    rows = []
    for _, r in table.iterrows():
        mine = ("no matching row" if not r["our_method"] else
                f"not run ({fmt.display_name(r['our_method'])}, {r['our_backbone']})"
                if pd.isna(r["ours"]) else
                f"{fmt.cell(r['ours'], r['ours_std'])} ({fmt.display_name(r['our_method'])}, "
                f"{r['our_backbone']})")
        rows.append([r["dataset"], r["backbone"], r["method"], r["metric"], f"{r['value']:g}",
                     r["source"] + (f" ({r['note']})" if r["note"] else ""), r["verified"],
                     mine, "" if pd.isna(r["diff"]) else f"{r['diff']:+.1f}"])
    md = CAPTION + "\n\n| " + " | ".join(header) + " |\n|" + "---|" * len(header) + "\n" + \
        "".join("| " + " | ".join(c.replace("|", "\\|") for c in r) + " |\n" for r in rows)
    with atomic_path(out_dir / "published.md") as tmp:
        tmp.write_text(md)
    page = fmt.html_page("published numbers", fmt.html_table(
        header, [[_html.escape(c) for c in r] for r in rows], _html.escape(CAPTION),
        "published"))
    with atomic_path(out_dir / "published.html") as tmp:
        tmp.write_text(page)
    return table
