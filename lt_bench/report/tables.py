"""The paper-style results tables (mean ± std over seeds), from the run files only.

Every table is written as CSV (numbers, in percent, mean and sample std over seeds with
``n_seeds``; code identifiers), Markdown, LaTeX and a self-contained HTML page (display
names, ``mean ± std`` cells rounded to 0.1 points with an informative std, the best mean
in bold). ``runs.csv`` lists every run folder with its metrics, so each cell can be
traced back to the ``metrics.json`` files it averages; ``notes.csv`` says per row what
the tables mark (deterministic, identical to another row, compute).

* ``main``: per (dataset, backbone, method): Overall / Many / Medium / Few top-1, with the
  compute columns where the runs report them and the significance marks (``▲``/``▼``)
  of ``significance.csv`` when given.
* ``dxp``: the 3×3 D-group × P-group accuracies (``dp_{d}_{p}`` keys; runs whose backbone
  has an estimated prior q̂ only).
* ``ablation``: the backdoor adjustment's M ablation (``m{M}_{top1,many,medium,few}``
  keys of ensemble runs: mean over all subsets of M members).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from lt_bench.errors import InputValidationError
from lt_bench.io import atomic_path
from lt_bench.report import format as fmt
from lt_bench.report import render
from lt_bench.report.rows import group_class_counts, row_notes
from lt_bench.report.significance import BACKDOORS
from lt_bench.runs.layout import ENSEMBLE_BACKBONE

KEYS = ["dataset", "backbone", "method"]
MAIN_METRICS = ["top1", "many", "medium", "few"]
METRIC_TITLES = {"top1": "Overall", "many": "Many", "medium": "Medium", "few": "Few"}
D_GROUPS = ("many", "medium", "few")
P_GROUPS = ("p_many", "p_medium", "p_few")
DXP_METRICS = [f"dp_{d}_{p}" for d in D_GROUPS for p in P_GROUPS]
ABLATION_KEY = re.compile(r"^m(\d+)_(top1|many|medium|few)$")
#: backbones that combine several models (backdoor runs): listed first, the backdoors (the
#: headline) at the top
ENSEMBLE_BACKBONES = (ENSEMBLE_BACKBONE,)
GENERATED = render.GENERATED


def summarize(runs: pd.DataFrame, metrics: list[str], keys: list[str] = KEYS) -> pd.DataFrame:
    """Mean and sample std (ddof=1; NaN for one seed) over seeds, in percent."""
    missing = [m for m in metrics if m not in runs.columns]
    if missing:
        raise InputValidationError(f"metric(s) {missing} not in the runs; available: {sorted(runs.columns)}")
    pct = runs[keys + metrics].copy()
    pct[metrics] = pct[metrics].astype(float) * 100
    g = pct.groupby(keys, sort=True)
    out = g.size().rename("n_seeds").to_frame()
    for m in metrics:
        out[f"{m}_mean"] = g[m].mean()
        out[f"{m}_std"] = g[m].std(ddof=1)
    return out.reset_index()


def order_rows(table: pd.DataFrame, method_order: Sequence[str] | None = None,
               extra: Sequence[str] = ("M",)) -> pd.DataFrame:
    """Sort by dataset, the headline first (the backdoors, then the other ensembles over
    backbones), then single backbones; within each, ``method_order``, then ``extra``."""
    if table.empty:
        return table
    rank = {m: i for i, m in enumerate(method_order or [])}
    sort = pd.DataFrame({
        "d": table["dataset"],
        "h": ~table["method"].isin(BACKDOORS),
        "e": ~table["backbone"].isin(ENSEMBLE_BACKBONES),
        "b": table["backbone"],
        "r": table["method"].map(lambda m: rank.get(m, len(rank))),
        "m": table["method"],
    }, index=table.index)
    for c in extra:
        if c in table.columns:
            sort[f"x_{c}"] = table[c]
    idx = sort.sort_values(list(sort.columns), kind="stable").index
    return table.loc[idx].reset_index(drop=True)


def best_mask(table: pd.DataFrame, metrics: list[str], by: list[str],
              exclude: pd.Series | None = None) -> pd.DataFrame:
    """True where a cell's mean, at the displayed precision, is the best of its ``by`` group
    (rows in ``exclude``, e.g. duplicates of another row, never count)."""
    out = pd.DataFrame(False, index=table.index, columns=metrics)
    if table.empty or len(table) < 2:
        return out
    keep = ~exclude if exclude is not None else pd.Series(True, index=table.index)
    for m in metrics:
        shown = table[f"{m}_mean"].round(1).where(keep)
        best = shown.groupby([table[k] for k in by]).transform("max")
        size = shown.groupby([table[k] for k in by]).transform("count")
        out[m] = (shown == best) & (size > 1) & shown.notna()
    return out


def cell(mean: float, std: float, bold: bool = False, style: str = "md") -> str:
    return fmt.cell(mean, std, bold, style)


tex_escape = fmt.tex_escape


def _write(out_dir: Path, name: str, csv: pd.DataFrame, md: str, tex: str,
           html: str | None = None) -> None:
    out_dir = Path(out_dir)
    with atomic_path(out_dir / f"{name}.csv") as tmp:
        csv.to_csv(tmp, index=False, float_format="%.4f")
    for ext, text in (("md", md), ("tex", tex), ("html", html)):
        if text is not None:
            with atomic_path(out_dir / f"{name}.{ext}") as tmp:
                tmp.write_text(text)


def _runs_with(runs: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    present = [c for c in columns if c in runs.columns]
    if not present:
        return runs.iloc[0:0]
    return runs[runs[present].notna().any(axis=1)]


def row_labels(runs: pd.DataFrame) -> pd.DataFrame:
    """Per (dataset, backbone, method): the display name its runs' hyper-parameters give
    (collect_runs' ``label``; runs that disagree are joined with " / ")."""
    if "label" not in runs.columns or runs.empty:
        return pd.DataFrame(columns=KEYS + ["label"])
    return (runs.groupby(KEYS, sort=False)["label"]
            .agg(lambda x: " / ".join(sorted({str(v) for v in x if isinstance(v, str)})))
            .reset_index())


def _with_notes(table: pd.DataFrame, notes: pd.DataFrame,
                runs: pd.DataFrame | None = None) -> pd.DataFrame:
    if table.empty:
        return table.assign(deterministic=False, identical_to="", label="")
    cols = [c for c in notes.columns if c not in ("n_seeds",)]
    out = table.merge(notes[cols], on=KEYS, how="left")
    if runs is not None:
        out = out.merge(row_labels(runs), on=KEYS, how="left")
    if "label" not in out.columns:
        out["label"] = ""
    return out.fillna({"deterministic": False, "identical_to": "", "label": ""})


# --- main ---------------------------------------------------------------------------------

def main_table(runs: pd.DataFrame, method_order: Sequence[str] | None = None) -> pd.DataFrame:
    runs = runs.copy()
    for m in MAIN_METRICS:  # e.g. no Many class in a tiny world: the column is all None
        if m not in runs.columns:
            runs[m] = float("nan")
    return order_rows(summarize(runs, MAIN_METRICS), method_order)


def write_main_table(runs: pd.DataFrame, out_dir: Path,
                     method_order: Sequence[str] | None = None,
                     significance: pd.DataFrame | None = None) -> pd.DataFrame:
    """``main.csv`` (columns unchanged), ``main.md``/``.tex``/``.html``; best per dataset bold."""
    table = main_table(runs, method_order)
    notes = row_notes(runs, method_order)
    view = _with_notes(table, notes, runs)
    best = best_mask(table, MAIN_METRICS, ["dataset"], view["identical_to"] != "")
    counts = group_class_counts(runs)
    spec = render.TableSpec(
        name="main", metrics=MAIN_METRICS,
        titles={m: METRIC_TITLES[m] for m in MAIN_METRICS}, counts=counts,
        caption=("top-1 accuracy (%), mean and sample std over n seeds; Many / Medium / "
                 "Few: classes with > 100 / 20–100 / < 20 training images (number of "
                 "classes in parentheses)"),
        significance=significance, compute=True)
    md, tex, html = render.render_all(view, best, spec)
    _write(out_dir, "main", table, md, tex, html)
    return table


# --- D x P --------------------------------------------------------------------------------

def dxp_table(runs: pd.DataFrame, method_order: Sequence[str] | None = None) -> pd.DataFrame:
    have = _runs_with(runs, DXP_METRICS + [f"n_{m}_classes" for m in DXP_METRICS]).copy()
    cols = KEYS + ["n_seeds"] + [f"{m}_{s}" for m in DXP_METRICS for s in ("mean", "std")]
    if have.empty:
        return pd.DataFrame(columns=cols + [f"n_{m}_classes" for m in DXP_METRICS])
    for m in DXP_METRICS:
        if m not in have.columns:
            have[m] = float("nan")
    table = summarize(have, DXP_METRICS)
    for m in DXP_METRICS:  # classes per cell (the same for every seed of a row)
        n = f"n_{m}_classes"
        if n in have.columns:
            table = table.merge(have.groupby(KEYS)[n].max().rename(n).reset_index(), on=KEYS,
                                how="left")
    return order_rows(table, method_order)


def write_dxp_table(runs: pd.DataFrame, out_dir: Path,
                    method_order: Sequence[str] | None = None) -> pd.DataFrame:
    table = dxp_table(runs, method_order)
    if table.empty:
        md = ("_No run has D×P metrics: they need the backbone's estimated pre-training "
              "prior q̂ (prior stage)._\n")
        tex = f"% {GENERATED}\n% (no runs with D×P metrics: no estimated prior)\n"
        html = fmt.html_page("D×P table", "<p>" + md.strip("_\n") + "</p>")
        _write(out_dir, "dxp", table, md, tex, html)
        return table
    notes = row_notes(runs, method_order)
    view = _with_notes(table, notes, runs)
    best = best_mask(table, DXP_METRICS, ["dataset"], view["identical_to"] != "")
    titles = {f"dp_{d}_{p}": f"{d.capitalize()}/P-{p[2:].capitalize()}"
              for d in D_GROUPS for p in P_GROUPS}
    spec = render.TableSpec(
        name="dxp", metrics=DXP_METRICS, titles=titles, counts=group_class_counts(runs),
        caption=("top-1 accuracy (%) of the data groups (D: training-set size) crossed with "
                 "the pre-training prior groups (P: thirds of the classes by the estimated "
                 "prior q̂), mean and sample std over n seeds; "
                 f"{fmt.FEW_CLASSES_MARK}: a cell of fewer than {fmt.MIN_CELL_CLASSES} "
                 "classes (class counts per cell in dxp.csv)"),
        cell_classes=True, wide=True,
        tex_super_header=(r" & & & \multicolumn{3}{c}{D-Many} & \multicolumn{3}{c}{D-Medium}"
                          r" & \multicolumn{3}{c}{D-Few} \\ \cmidrule(lr){4-6}"
                          r"\cmidrule(lr){7-9}\cmidrule(lr){10-12}"),
        tex_titles=["P-Many", "P-Med.", "P-Few"] * 3)
    md, tex, html = render.render_all(view, best, spec)
    _write(out_dir, "dxp", table, md, tex, html)
    return table


# --- M ablation ---------------------------------------------------------------------------

def ablation_long(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per (run, M) from the ``m{M}_*`` keys."""
    by_m: dict[int, list[str]] = {}
    for c in runs.columns:
        if (hit := ABLATION_KEY.match(str(c))):
            by_m.setdefault(int(hit.group(1)), []).append(c)
    rows = []
    for _, r in runs.iterrows():
        for m_size in sorted(by_m):
            vals = {k: r.get(f"m{m_size}_{k}") for k in MAIN_METRICS}
            if all(v is None or pd.isna(v) for v in vals.values()):
                continue
            n_sub = r.get(f"m{m_size}_n_subsets")
            rows.append({**{k: r[k] for k in KEYS}, "seed": r.get("seed"), "M": m_size,
                         "n_subsets": None if n_sub is None or pd.isna(n_sub) else int(n_sub),
                         **vals})
    return pd.DataFrame(rows, columns=KEYS + ["seed", "M", "n_subsets"] + MAIN_METRICS)


def ablation_table(runs: pd.DataFrame, method_order: Sequence[str] | None = None) -> pd.DataFrame:
    long = ablation_long(runs)
    if long.empty:
        return pd.DataFrame(columns=KEYS + ["M", "n_seeds", "n_subsets"]
                            + [f"{m}_{s}" for m in MAIN_METRICS for s in ("mean", "std")])
    table = summarize(long, MAIN_METRICS, KEYS + ["M"])
    subsets = long.groupby(KEYS + ["M"])["n_subsets"].max().rename("n_subsets").reset_index()
    table = table.merge(subsets, on=KEYS + ["M"], how="left")
    table = table[KEYS + ["M", "n_seeds", "n_subsets"]
                  + [f"{m}_{s}" for m in MAIN_METRICS for s in ("mean", "std")]]
    return order_rows(table, method_order)


def write_ablation_table(runs: pd.DataFrame, out_dir: Path,
                         method_order: Sequence[str] | None = None) -> pd.DataFrame:
    table = ablation_table(runs, method_order)
    if table.empty:
        md = "_No backdoor (ensemble) run with an M ablation (`m{M}_top1` keys)._\n"
        tex = f"% {GENERATED}\n% (no backdoor runs with an M ablation)\n"
        html = fmt.html_page("M ablation", "<p>" + md.strip("_\n") + "</p>")
        _write(out_dir, "ablation", table, md, tex, html)
        return table
    best = best_mask(table, MAIN_METRICS, KEYS)
    view = table.assign(deterministic=False, identical_to="")
    spec = render.TableSpec(
        name="ablation", metrics=MAIN_METRICS,
        titles={m: METRIC_TITLES[m] for m in MAIN_METRICS}, counts=group_class_counts(runs),
        caption=("backdoor adjustment with M foundation models: top-1 accuracy (%) "
                 "averaged over all subsets of M members, mean and sample std over n seeds"),
        extra_keys=["M", "n_subsets"], group_rule="method")
    md, tex, html = render.render_all(view, best, spec)
    _write(out_dir, "ablation", table, md, tex, html)
    return table


# --- all ----------------------------------------------------------------------------------

def write_runs_table(runs: pd.DataFrame, out_dir: Path,
                     method_order: Sequence[str] | None = None) -> pd.DataFrame:
    """Every run folder with its scalar metrics (fractions, not percent): the audit trail."""
    table = order_rows(runs, method_order, extra=["seed"])
    first = [c for c in KEYS + ["seed", "run_dir"] if c in table.columns]
    table = table[first + [c for c in table.columns if c not in first]]
    with atomic_path(Path(out_dir) / "runs.csv") as tmp:
        table.to_csv(tmp, index=False)
    return table


def write_notes_table(runs: pd.DataFrame, out_dir: Path,
                      method_order: Sequence[str] | None = None) -> pd.DataFrame:
    """``notes.csv``: per row, n distinct results, deterministic, identical_to, compute."""
    notes = order_rows(row_notes(runs, method_order), method_order)
    labels = notes.merge(row_labels(runs), on=KEYS, how="left")["label"]
    notes.insert(3, "display_name", [fmt.display_name(m, lab) for m, lab in
                                     zip(notes["method"], labels, strict=True)])
    with atomic_path(Path(out_dir) / "notes.csv") as tmp:
        notes.to_csv(tmp, index=False, float_format="%.6g")
    return notes


def write_all_tables(runs: pd.DataFrame, out_dir: Path,
                     method_order: Sequence[str] | None = None,
                     significance: pd.DataFrame | None = None) -> dict[str, pd.DataFrame]:
    out = {
        "main": write_main_table(runs, out_dir, method_order, significance),
        "dxp": write_dxp_table(runs, out_dir, method_order),
        "ablation": write_ablation_table(runs, out_dir, method_order),
        "runs": write_runs_table(runs, out_dir, method_order),
        "notes": write_notes_table(runs, out_dir, method_order),
    }
    if significance is not None:
        out["significance"] = render.write_significance_tables(significance, out_dir)
    return out
