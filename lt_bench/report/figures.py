"""Figures from the run files (matplotlib, Agg backend; each as PNG and PDF).

* ``accuracy``: per-class test accuracy (mean over seeds) against the class's training
  count (log x; D-group borders at 20 and 100) and against the backbone's estimated
  pre-training prior q̂ (log x; P-group borders), one panel per backbone, one colour per
  method. Ensemble (backdoor) runs share the training counts, so they are drawn in every
  panel of the count figure, and in the q̂ figure (their q̂ is the
  members' mean) drawn dashed in every backbone's panel against that backbone's q̂.
* ``prior``: estimated prior q̂ against the true pre-training prior of each toy backbone
  (log-log, Spearman ρ), from ``results/prior/{dataset}/{backbone}.parquet``.
D×P heat-maps and their summary relative to LA are ``figures_dxp.py``; the drawing
conventions every figure shares (Agg, PNG + PDF, placeholders, grids) are ``plot.py``.

Where the inputs of a figure are absent (no q̂ yet, no D×P keys), a placeholder figure that
says so is written, so the workflow's outputs always exist.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from lt_bench.metrics import FEW_BELOW, MANY_ABOVE, P_GROUPS
from lt_bench.report.collect import collect_per_class
from lt_bench.report.plot import log_ticks, panel_grid, placeholder, pyplot, save

DEFAULT_METHODS = ("zero_shot", "ce", "la", "backdoor")


def _colors(methods: Sequence[str]) -> dict[str, tuple]:
    plt = pyplot()
    cmap = plt.get_cmap("tab10")
    return {m: cmap(i % 10) for i, m in enumerate(methods)}


def _binned_mean(x: np.ndarray, y: np.ndarray, bins: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """Mean of y in equal-width bins of log x (bins with no class skipped)."""
    ok = np.isfinite(x) & np.isfinite(y) & (x > 0)
    x, y = x[ok], y[ok]
    if len(x) < 2 or x.min() == x.max():
        return x, y
    edges = np.geomspace(x.min(), x.max() * (1 + 1e-9), bins + 1)
    idx = np.digitize(x, edges) - 1
    cx, cy = [], []
    for b in range(bins):
        m = idx == b
        if m.any():
            cx.append(math.exp(np.log(x[m]).mean()))
            cy.append(y[m].mean())
    return np.asarray(cx), np.asarray(cy)


def _methods_present(per_class: pd.DataFrame, methods: Sequence[str] | None) -> list[str]:
    have = list(dict.fromkeys(per_class["method"]))
    if methods:
        return [m for m in methods if m in have]
    return have


def _mean_over_seeds(per_class: pd.DataFrame) -> pd.DataFrame:
    cols = {"accuracy": "mean", "train_count": "first", "ensemble": "first"}
    if "q_hat" in per_class.columns:
        cols["q_hat"] = "mean"
    if "p_group" in per_class.columns:
        cols["p_group"] = "first"
    return (per_class.groupby(["backbone", "method", "label"], sort=False)
            .agg(cols).reset_index())


def _series(ax, x, y, color, label, dashed=False) -> None:
    ax.scatter(x, y * 100, s=10, alpha=0.35, color=color, linewidths=0,
               marker="x" if dashed else "o")
    bx, by = _binned_mean(np.asarray(x, float), np.asarray(y, float))
    ax.plot(bx, by * 100, color=color, lw=1.8, ls="--" if dashed else "-", label=label)


def accuracy_figures(run_dirs: list[Path | str], out_dir: Path | str,
                     methods: Sequence[str] | None = DEFAULT_METHODS) -> list[Path]:
    """``acc_vs_count`` and ``acc_vs_qhat`` (PNG + PDF) for the runs of one dataset."""
    out_dir = Path(out_dir)
    pc = collect_per_class(run_dirs)
    datasets = sorted(set(pc["dataset"]))
    ds = ", ".join(datasets)
    chosen = _methods_present(pc, methods)
    written = []
    if not chosen:
        msg = (f"none of the methods {list(methods or [])} has runs here "
               f"(present: {sorted(set(pc['method']))})")
        written += placeholder(out_dir / "acc_vs_count", f"{ds}: accuracy vs train count", msg)
        written += placeholder(out_dir / "acc_vs_qhat", f"{ds}: accuracy vs q̂", msg)
        return written
    pc = pc[pc["method"].isin(chosen)]
    mean = _mean_over_seeds(pc)
    curves = _Curves(ds, mean, chosen, _colors(chosen),
                     pc.groupby(["backbone", "method"])["seed"].nunique(),
                     sorted(set(mean.loc[mean["ensemble"], "backbone"])))
    written += _count_figure(curves, out_dir / "acc_vs_count")
    if "q_hat" not in mean.columns or mean["q_hat"].notna().sum() == 0:
        written += placeholder(out_dir / "acc_vs_qhat", f"{ds}: accuracy vs q̂",
                               "no run has the estimated prior q̂ (column q_hat of "
                               "per_class.parquet): run the prior stage first")
        return written
    written += _qhat_figure(curves, out_dir / "acc_vs_qhat")
    return written


@dataclass
class _Curves:
    """What both accuracy figures draw: per-class means over seeds of the chosen methods."""

    ds: str
    mean: pd.DataFrame
    chosen: list[str]
    colors: dict[str, tuple]
    n_seeds: pd.Series  # seeds per (backbone, method)
    ensembles: list[str]  # backbones of ensemble runs

    def part(self, backbone: str, method: str) -> pd.DataFrame:
        return self.mean[(self.mean["backbone"] == backbone) & (self.mean["method"] == method)]

    def label(self, method: str, backbone: str, of: str | None = None) -> str:
        """``method [n seeds]``, naming the backbone ``of`` the curve where it is not the
        panel's own."""
        return (method if of is None else f"{method} ({of})") + \
            f" [{self.n_seeds.get((of or backbone, method), 0)} seeds]"


def _finish_panel(ax, title: str, xlabel: str) -> None:
    ax.set_xscale("log")
    log_ticks(ax)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylim(-3, 103)
    ax.legend(fontsize=7, loc="best")


def _count_figure(c: _Curves, stem: Path) -> list[Path]:
    """Against the training count: ensembles share the counts, so each is drawn (dashed)
    in every single backbone's panel."""
    singles = sorted(set(c.mean.loc[~c.mean["ensemble"], "backbone"]))
    panels = singles or c.ensembles
    fig, axes = panel_grid(len(panels))
    for ax, b in zip(axes, panels, strict=True):
        for m in c.chosen:
            for bb, dashed in [(b, b in c.ensembles)] + [(e, True) for e in c.ensembles
                                                            if e != b and singles]:
                part = c.part(bb, m)
                if not part.empty:
                    _series(ax, part["train_count"], part["accuracy"], c.colors[m],
                            c.label(m, b, None if bb == b else bb), dashed)
        for v in (FEW_BELOW, MANY_ABOVE):
            ax.axvline(v, color="0.6", lw=0.8, ls=":")
        _finish_panel(ax, b, "training images of the class (log)")
    axes[0].set_ylabel("per-class test accuracy (%)")
    fig.suptitle(f"{c.ds}: per-class accuracy vs training count (points: classes; lines: "
                 "mean in log-count bins; dotted: Few | Medium | Many borders)", fontsize=9)
    return save(fig, stem)


def _qhat_figure(c: _Curves, stem: Path) -> list[Path]:
    """Against the estimated prior q̂. Ensembles have no q̂ of their own (members' mean):
    each is drawn dashed in every single backbone's panel against that backbone's q̂ of
    the class, so no panel sits alone."""
    withq = c.mean[c.mean["q_hat"].notna()]
    singles_q = sorted(set(withq.loc[~withq["ensemble"], "backbone"]))
    panels = singles_q or sorted(set(withq["backbone"]))
    fig, axes = panel_grid(len(panels))
    for ax, b in zip(axes, panels, strict=True):
        part_b = withq[withq["backbone"] == b]
        q_of = part_b.drop_duplicates("label").set_index("label")["q_hat"]
        for m in c.chosen:
            part = part_b[part_b["method"] == m]
            if not part.empty:
                _series(ax, part["q_hat"], part["accuracy"], c.colors[m], c.label(m, b))
            for e in c.ensembles if singles_q else []:
                part = c.part(e, m)
                if not part.empty:
                    _series(ax, part["label"].map(q_of), part["accuracy"], c.colors[m],
                            c.label(m, b, e), dashed=True)
        if "p_group" in part_b.columns:
            lab = part_b.drop_duplicates("label")
            for g in P_GROUPS[:2]:
                q = lab.loc[lab["p_group"] == g, "q_hat"]
                if len(q):
                    ax.axvline(q.min(), color="0.6", lw=0.8, ls=":")
        _finish_panel(ax, b, "estimated pre-training prior q̂ of the class (log)")
    axes[0].set_ylabel("per-class test accuracy (%)")
    fig.suptitle(f"{c.ds}: per-class accuracy vs estimated prior q̂ (dotted: P-Few | P-Medium "
                 "| P-Many borders)", fontsize=9)
    return save(fig, stem)


def prior_pair(path: Path | str, true_prior: Path | str | None = None
               ) -> tuple[np.ndarray, np.ndarray] | None:
    """(q̂, q_true) of a prior file, in label order, through the one reader
    (``lt_bench.prior``); ``q_true`` from ``true_prior`` (a toy CLIP's prior file) where the
    file has none; None where no true prior is known."""
    from lt_bench.prior import read_prior, read_true_prior

    pf = read_prior(path)
    if pf.q_true is not None:
        return pf.q_hat, pf.q_true
    if true_prior is not None and Path(true_prior).is_file():
        return pf.q_hat, read_true_prior(true_prior, len(pf.q_hat))
    return None


def prior_figure(priors: dict[str, Path | str], out_stem: Path | str, dataset: str = "",
                 true_priors: dict[str, Path | str] | None = None) -> list[Path]:
    """q̂ against the true prior, one panel per (toy) backbone; ``priors``: backbone → file."""
    from scipy.stats import spearmanr

    plt = pyplot()
    tables = {}
    for b, p in priors.items():
        if Path(p).is_file() and (pair := prior_pair(p, (true_priors or {}).get(b))):
            tables[b] = pair
    title = f"{dataset}: estimated vs true pre-training prior"
    if not tables:
        return placeholder(out_stem, title, "no prior file with q_hat and q_true "
                           "(results/prior/<dataset>/<toy backbone>.parquet)")
    fig, axes = panel_grid(len(tables), width=3.6, height=3.4, sharey=False)
    for ax, (b, (q, t)) in zip(axes, tables.items(), strict=True):
        rho = spearmanr(q, t).statistic
        ax.scatter(t, q, s=12, alpha=0.7, color="tab:blue", linewidths=0)
        lo = min(np.nanmin(q[q > 0]), np.nanmin(t[t > 0]))
        hi = max(np.nanmax(q), np.nanmax(t))
        ax.plot([lo, hi], [lo, hi], color="0.5", lw=0.8, ls="--", label="q̂ = true")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_title(f"{b} (Spearman ρ = {rho:.2f})")
        ax.set_xlabel("true pre-training prior (log)")
        ax.legend(fontsize=7, loc="upper left")
    axes[0].set_ylabel("estimated prior q̂ (log)")
    fig.suptitle(title + " (one point per class)", fontsize=9)
    out = save(fig, out_stem)
    plt.close("all")
    return out
