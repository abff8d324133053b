"""D×P figures: one heat-map per method, and every method relative to LA in one figure.

* ``dxp_<method>``: the 3×3 D-group × P-group top-1 (mean over seeds) of one method, one
  panel per backbone. The colour scale spans the figure's own cell range (not 0–100), so
  the P-axis differences the figure exists to show are visible; the numbers are printed.
* ``dxp_vs_la``: for each backbone, one row per method and one column per D×P cell, the
  difference to LA on the same backbone (points, diverging scale centred on 0). Ensemble
  rows (backdoor and controls) appear in every backbone's panel, relative to that
  backbone's LA; their P-groups come from the members' mean q̂.

Cells resting on fewer than 10 classes are marked ``°``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from lt_bench.metrics import D_GROUPS, P_GROUPS
from lt_bench.report import format as fmt
from lt_bench.report.collect import collect_runs
from lt_bench.report.plot import panel_grid, placeholder, pyplot, save, wrap_title

CELLS = [(d, p) for d in D_GROUPS for p in P_GROUPS]
P_SHORT = {"p_many": "P-Many", "p_medium": "P-Med.", "p_few": "P-Few"}


def dxp_means(run_dirs: list[Path | str]) -> pd.DataFrame:
    """Per (backbone, method): mean over seeds of each ``dp_*`` cell (percent), its std,
    the seed count and the classes per cell."""
    runs = collect_runs("", [Path(d) / "metrics.json" for d in run_dirs])
    keys = [f"dp_{d}_{p}" for d, p in CELLS]
    have = [k for k in keys if k in runs.columns]
    if not have:
        return pd.DataFrame()
    runs = runs[runs[have].notna().any(axis=1)]
    rows = []
    for (bb, m), part in runs.groupby(["backbone", "method"], sort=True):
        row = {"backbone": bb, "method": m, "n_seeds": part["seed"].nunique(),
               "label": " / ".join(sorted(set(part["label"].dropna().astype(str))))
               if "label" in part.columns else ""}
        for k in keys:
            v = part[k].astype(float) * 100 if k in part.columns else pd.Series(dtype=float)
            row[k] = v.mean() if v.notna().any() else np.nan
            row[f"{k}_std"] = v.std(ddof=1) if v.notna().sum() > 1 else np.nan
            n = f"n_{k}_classes"
            row[n] = part[n].max() if n in part.columns else np.nan
        rows.append(row)
    return pd.DataFrame(rows)


def _is_ensemble(b: str) -> bool:
    from lt_bench.runs.layout import is_ensemble_backbone

    return is_ensemble_backbone(b)


def dxp_figure(run_dirs: list[Path | str], method: str, out_stem: Path | str,
               dataset: str = "", means: pd.DataFrame | None = None) -> list[Path]:
    """Heat-map of the D×P accuracy (mean over seeds) of ``method``, one panel per backbone.

    ``means``: :func:`dxp_means` of ``run_dirs`` when the caller already has it (the CLI
    draws every method's figure from one read of the runs)."""
    plt = pyplot()
    means = dxp_means(run_dirs) if means is None else means
    runs = means[means["method"] == method] if not means.empty else means
    label = runs["label"].iloc[0] if len(runs) and "label" in runs.columns else None
    title = f"{dataset}: D×P accuracy of {fmt.display_name(method, label)}"
    if runs.empty:
        return placeholder(out_stem, title, f"no {method} run with D×P metrics (they need the "
                           "backbone's estimated prior q̂)")
    backbones = sorted(set(runs["backbone"]), key=lambda b: (_is_ensemble(b), b))
    vals = runs[[f"dp_{d}_{p}" for d, p in CELLS]].to_numpy(float)
    lo, hi = np.nanmin(vals), np.nanmax(vals)
    if not np.isfinite(lo):
        lo, hi = 0.0, 100.0
    pad = max(1.0, 0.05 * (hi - lo))  # a flat figure still gets a readable scale
    vmin, vmax = lo - pad, hi + pad
    fig, axes = panel_grid(len(backbones), width=3.6, height=3.3)
    image = None
    cmap = plt.get_cmap("viridis")
    for ax, b in zip(axes, backbones, strict=True):
        r = runs[runs["backbone"] == b].iloc[0]
        grid = np.array([[r[f"dp_{d}_{p}"] for p in P_GROUPS] for d in D_GROUPS], float)
        image = ax.imshow(np.ma.masked_invalid(grid), vmin=vmin, vmax=vmax, cmap=cmap)
        ax.set_facecolor("0.85")
        for i, d in enumerate(D_GROUPS):
            for j, p in enumerate(P_GROUPS):
                k = f"dp_{d}_{p}"
                v = grid[i, j]
                n_cls = r[f"n_{k}_classes"]
                few = not pd.isna(n_cls) and n_cls < fmt.MIN_CELL_CLASSES
                txt = "–" if np.isnan(v) else f"{v:.1f}" + (fmt.FEW_CLASSES_MARK if few else "")
                if not pd.isna(r[f"{k}_std"]):
                    txt += f"\n± {fmt.std_text(r[f'{k}_std'])}"
                if not pd.isna(n_cls):
                    txt += f"\n({int(n_cls)} cl.)"
                # dark text on the light (yellow) end of viridis, white elsewhere
                light = not np.isnan(v) and (v - vmin) / (vmax - vmin) > 0.6
                ax.text(j, i, txt, ha="center", va="center", fontsize=7,
                        color="black" if light or np.isnan(v) else "white")
        ax.set_xticks(range(3), ["P-Many", "P-Medium", "P-Few"])
        ax.set_yticks(range(3), ["Many", "Medium", "Few"])
        ax.set_title(f"{b} [{int(r['n_seeds'])} seeds]")
        ax.spines[:].set_visible(False)
    axes[0].set_ylabel("data group (training count)")
    # wrapped to the figure's width: a one-panel figure (an ensemble's) is 3.6 in wide and
    # its one-line title was clipped on both sides
    fig.suptitle(wrap_title(title + f" (%; rows: D-groups, columns: P-groups by q̂; colour "
                            f"scale {vmin:.0f}–{vmax:.0f}; {fmt.FEW_CLASSES_MARK}: < "
                            f"{fmt.MIN_CELL_CLASSES} classes)",
                            fig.get_size_inches()[0], 9), fontsize=9)
    fig.colorbar(image, ax=axes, shrink=0.8, label="top-1 (%)")
    return save(fig, out_stem)


def dxp_summary_figure(run_dirs: list[Path | str], out_stem: Path | str, dataset: str = "",
                       methods: Sequence[str] | None = None, reference: str = "la",
                       means: pd.DataFrame | None = None) -> list[Path]:
    """Every method's D×P cells minus LA's (same backbone), one panel per backbone."""
    plt = pyplot()
    from matplotlib.colors import TwoSlopeNorm

    means = dxp_means(run_dirs) if means is None else means
    title = f"{dataset}: D×P top-1 of each method minus {fmt.display_name(reference)}"
    if means.empty or not (means["method"] == reference).any():
        return placeholder(out_stem, title, f"no {reference} run with D×P metrics (they need "
                           "the backbone's estimated prior q̂)")
    order = list(methods or []) + sorted(set(means["method"]) - set(methods or []))
    order = [m for m in order if m in set(means["method"]) and m != reference]
    keys = [f"dp_{d}_{p}" for d, p in CELLS]
    panels = _delta_panels(means, order, reference, keys)
    if not panels:
        return placeholder(out_stem, title, f"no method besides {reference} has D×P metrics")
    lim = max(1.0, float(np.nanmax([np.nanmax(np.abs(p[1])) for p in panels])))
    norm = TwoSlopeNorm(vcenter=0.0, vmin=-lim, vmax=lim)
    # One panel per backbone, stacked vertically: the report's pane fits an image to its
    # width, so a row of three panels (17 in wide) was shrunk until its numbers were
    # unreadable; stacked, the figure is one panel wide (~9 in) and scrolls down instead.
    # ~0.55 in per cell keeps "+12.3°" at 7.5 pt inside its cell; the row labels take
    # ~0.07 in per character at 8 pt.
    label_in = 0.07 * max(len(label) for p in panels for label in p[2])
    panel_in = 0.55 * len(keys)
    width = label_in + panel_in + 1.6
    heights = [1.0 + 0.3 * len(p[2]) for p in panels]
    fig, axes = plt.subplots(len(panels), 1, figsize=(width, sum(heights) + 0.6),
                             squeeze=False, layout="constrained",
                             gridspec_kw={"height_ratios": heights})
    axes = axes.T
    image = None
    for ax, (b, delta, labels, few) in zip(axes[0], panels, strict=True):
        image = _delta_panel(ax, b, delta, labels, few, norm, lim, reference)
    fig.suptitle(wrap_title(title + f" on the same backbone (points; blue: better, red: "
                            f"worse; {fmt.FEW_CLASSES_MARK}: < {fmt.MIN_CELL_CLASSES} "
                            "classes)", width, 9), fontsize=9)
    fig.colorbar(image, ax=list(axes[0]), shrink=min(0.8, 4 / sum(heights)),
                 label=f"Δ top-1 vs {fmt.display_name(reference)} (points)")
    return save(fig, out_stem)


def _delta_panels(means: pd.DataFrame, order: list[str], reference: str, keys: list[str]
                  ) -> list[tuple[str, np.ndarray, list[str], np.ndarray]]:
    """Per single backbone with a ``reference`` run: (backbone, each method's cells minus
    the reference's, the row labels, which cells rest on few classes). Ensemble rows appear
    in every backbone's panel, relative to that backbone's reference."""
    singles = sorted(b for b in set(means.loc[means["method"] == reference, "backbone"])
                     if not _is_ensemble(b))
    panels = []
    for b in singles:
        ref = means[(means["backbone"] == b) & (means["method"] == reference)].iloc[0]
        rows, labels, few = [], [], []
        for m in order:
            for bb in [b] + sorted(x for x in set(means["backbone"]) if _is_ensemble(x)):
                hit = means[(means["backbone"] == bb) & (means["method"] == m)]
                if hit.empty:
                    continue
                r = hit.iloc[0]
                rows.append([r[k] - ref[k] for k in keys])
                labels.append(fmt.display_name(m, r.get("label")) +
                              (f" ({bb})" if bb != b else ""))
                few.append([not pd.isna(r[f"n_{k}_classes"]) and
                            r[f"n_{k}_classes"] < fmt.MIN_CELL_CLASSES for k in keys])
        if rows:
            panels.append((b, np.array(rows, float), labels, np.array(few)))
    return panels


def _delta_panel(ax, backbone: str, delta: np.ndarray, labels: list[str], few: np.ndarray,
                 norm, lim: float, reference: str):
    """One backbone's rows of differences, printed in their cells; returns the image."""
    image = ax.imshow(np.ma.masked_invalid(delta), cmap="RdBu", norm=norm, aspect="auto")
    ax.set_facecolor("0.85")
    for i in range(delta.shape[0]):
        for j in range(delta.shape[1]):
            v = delta[i, j]
            # a difference that rounds to zero prints as 0.0, not "-0.0"
            txt = "–" if np.isnan(v) else (f"{v:+.1f}" if round(v, 1) else "0.0") + (
                fmt.FEW_CLASSES_MARK if few[i, j] else "")
            ax.text(j, i, txt, ha="center", va="center", fontsize=7.5,
                    color="white" if not np.isnan(v) and abs(v) > 0.6 * lim else "black")
    ax.set_xticks(range(len(CELLS)), [P_SHORT[p] for _, p in CELLS], rotation=45,
                  ha="right", fontsize=8)
    top = ax.secondary_xaxis("top")  # the D-group of each block of three columns
    top.set_xticks([1, 4, 7], ["D-Many", "D-Medium", "D-Few"], fontsize=8)
    top.tick_params(length=0)
    ax.set_yticks(range(len(labels)), labels, fontsize=8)
    for x in (2.5, 5.5):  # D-group borders
        ax.axvline(x, color="0.3", lw=0.8)
    ax.set_title(f"{backbone}: minus {fmt.display_name(reference)}", pad=16, fontsize=10)
    ax.spines[:].set_visible(False)
    return image

