"""``lt-bench compare A B``: the top-1 differences between two settings, with intervals.

A side is a set of finished runs: a results folder (its ``runs/``), a runs root
(``{dataset}/{backbone}/{method}/seed{seed}/`` below it) or a run index (a text file with
one ``metrics.json`` path per line, as the workflow writes for a suite). Two result
folders or two suites are paired on every (dataset, backbone, method) present in both;
two variants of one method (or two methods) are compared with ``--a-method`` /
``--b-method``, which select one method on each side and pair on (dataset, backbone).

The difference ``top1(A) − top1(B)`` and its 95 % interval are the paired, class-
stratified bootstrap of :mod:`lt_bench.report.significance` over the test images (the
same image resample for both sides; seeds matched, a one-seed side paired with every seed
of the other). Pairing on images needs the same test split on both sides: the runs'
``config.json`` ``split_sha256.test`` must agree, else the comparison is refused.

Writes ``compare.csv`` (numbers in points), ``compare.md`` and ``compare.png``/``.pdf``
(a forest plot of the differences with their intervals).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from lt_bench.errors import InputValidationError
from lt_bench.io import atomic_path
from lt_bench.report import format as fmt
from lt_bench.report.significance import (
    LEVEL,
    N_BOOT,
    _bootstrap_rows,
    _Correct,
    _index,
    paired_correct,
)

COLUMNS = ["dataset", "backbone", "a_method", "b_method", "n_seeds", "n_images", "a_top1",
           "b_top1", "diff", "lo", "hi", "significant", "n_boot", "boot_seed"]


def side_runs(spec: str | Path, role: str) -> list[Path]:
    """The finished run folders a side names (see the module docstring)."""
    from lt_bench.runs.layout import METRICS_JSON, RUN_DIR, find_run_dirs, metrics_path

    p = Path(spec)
    if p.is_file():
        lines = [x.strip() for x in p.read_text().splitlines() if x.strip()]
        # the workflow writes paths relative to the project folder (an ancestor of the
        # index): found as given, else below the nearest ancestor that has them
        dirs = [next((c for c in [Path(x).parent] + [q / Path(x).parent for q in
                                                     p.resolve().parents]
                      if metrics_path(c).is_file()), Path(x).parent) for x in lines]
        missing = [str(d) for d in dirs if not metrics_path(d).is_file()]
        if missing:
            raise InputValidationError(
                f"compare {role} {spec}: {len(missing)} listed run(s) not finished (no "
                f"{METRICS_JSON}), e.g. {missing[0]}; expected a run index of finished runs")
    elif p.is_dir():
        root = p / "runs" if (p / "runs").is_dir() else p
        dirs = find_run_dirs(root)
    else:
        raise InputValidationError(f"compare {role} {spec}: no such file or folder; expected "
                                   "a results folder, a runs root or a run index file")
    if not dirs:
        raise InputValidationError(
            f"compare {role} {spec}: no finished runs ({METRICS_JSON}) there; expected run "
            f"folders {RUN_DIR}")
    return dirs


def _groups(dirs: list[Path], method: str | None, spec, role: str) -> dict:
    """{(dataset, backbone, method or None): {seed: RunFolder}}."""
    groups = _index(dirs)
    if method is not None:
        groups = {(ds, bb, None): runs for (ds, bb, m), runs in groups.items() if m == method}
        if not groups:
            raise InputValidationError(f"compare {role} {spec}: no run of method {method!r} "
                                       f"(--{role.lower()}-method)")
    return groups


def _test_sha(runs: dict) -> set[str | None]:
    return {(r.config.get("split_sha256") or {}).get("test") for r in runs.values()}


def compare(a: str | Path, b: str | Path, a_method: str | None = None,
            b_method: str | None = None, n_boot: int = N_BOOT, seed: int = 0,
            loader=None) -> pd.DataFrame:
    """One row per setting present on both sides: A − B in points with its interval.
    One of ``a_method``/``b_method`` alone selects that method on both sides."""
    a_method, b_method = a_method or b_method, b_method or a_method
    ga = _groups(side_runs(a, "A"), a_method, a, "A")
    gb = _groups(side_runs(b, "B"), b_method, b, "B")
    common = sorted(set(ga) & set(gb), key=str)
    if not common:
        def names(g):
            keys = sorted("/".join(str(x) for x in k if x is not None) for k in g)
            return ", ".join(keys[:4]) + (f" (+{len(keys) - 4})" if len(keys) > 4 else "")

        raise InputValidationError(
            f"compare: A {a} and B {b} have no (dataset, backbone, method) in common (A: "
            f"{names(ga)}; B: {names(gb)}); expected runs of the same settings, or "
            "--a-method/--b-method to compare two methods")
    for key in common:
        sa, sb = _test_sha(ga[key]), _test_sha(gb[key])
        if sa != sb or len(sa) != 1:
            where = "/".join(str(x) for x in key if x is not None)
            raise InputValidationError(
                f"compare: {where}: test split sha256 {', '.join(map(str, sorted(sa, key=str)))}"
                f" in A {a} but {', '.join(map(str, sorted(sb, key=str)))} in B {b}; the "
                "difference is paired on test images, so both sides need the same test split")
    correct = _Correct(loader)
    pending = []
    for key in common:
        ds, bb, m = key
        got = paired_correct(ga[key], gb[key], correct)
        if got is None:
            continue
        row = {"dataset": ds, "backbone": bb, "a_method": m or a_method,
               "b_method": m or b_method}
        pending.append((row, *got))
    if not pending:
        raise InputValidationError(
            f"compare: A {a} and B {b} share settings but no seeds pair up (several seeds "
            "on each side, none in common); expected the same seeds, or one seed on a side")
    rows = _bootstrap_rows(pending, n_boot, seed)
    return pd.DataFrame(rows, columns=COLUMNS)


def _label(r) -> str:
    m = fmt.display_name(r["a_method"])
    if r["b_method"] != r["a_method"]:
        m += f" vs {fmt.display_name(r['b_method'])}"
    return f"{r['dataset']} / {r['backbone']} / {m}"


def compare_markdown(table: pd.DataFrame, a: str, b: str) -> str:
    n_boot = int(table["n_boot"].iloc[0]) if len(table) else 0
    lines = [f"# {a} vs {b}", "",
             f"Top-1 of A = `{a}` minus B = `{b}`, in points, for every setting present in "
             f"both; {int(LEVEL * 100)} % interval of the paired bootstrap ({n_boot} "
             "replicates, test images resampled within classes, the same resample for both "
             f"sides; seeds paired and averaged). {fmt.SIG_UP}/{fmt.SIG_DOWN}: the interval "
             "excludes 0.", "",
             "| Dataset | Backbone | Method | n | A top-1 | B top-1 | Δ top-1 [95 % CI] | |",
             "| --- | --- | --- | ---: | ---: | ---: | ---: | --- |"]
    for _, r in table.iterrows():
        method = fmt.display_name(r["a_method"]) + (
            "" if r["b_method"] == r["a_method"] else f" vs {fmt.display_name(r['b_method'])}")
        mark = (fmt.SIG_UP if r["diff"] > 0 else fmt.SIG_DOWN) if r["significant"] else ""
        lines.append(f"| {r['dataset']} | {r['backbone']} | {method} | {int(r['n_seeds'])} | "
                     f"{r['a_top1']:.1f} | {r['b_top1']:.1f} | {fmt.signed(r['diff'], 2)} "
                     f"[{fmt.signed(r['lo'], 2)}, {fmt.signed(r['hi'], 2)}] | {mark} |")
    return "\n".join(lines) + "\n"


def forest_plot(table: pd.DataFrame, out_stem: Path, a: str, b: str) -> list[Path]:
    """Each setting's difference (dot) and interval (bar), zero marked; significant ones dark."""
    from lt_bench.report.plot import pyplot, save, wrap_title

    plt = pyplot()
    n = len(table)
    labels = [_label(r) for _, r in table.iterrows()]
    width = 4.5 + 0.065 * max(len(x) for x in labels)
    fig, ax = plt.subplots(figsize=(width, 1.3 + 0.32 * n), layout="constrained")
    y = np.arange(n)[::-1]
    sig = table["significant"].to_numpy(bool)
    diff, lo, hi = (table[c].to_numpy(float) for c in ("diff", "lo", "hi"))
    for s, colour in ((True, "#1f4e8c"), (False, "0.6")):
        k = sig == s
        ax.errorbar(diff[k], y[k], xerr=[diff[k] - lo[k], hi[k] - diff[k]], fmt="o",
                    color=colour, ecolor=colour, capsize=3, ms=5,
                    label="interval excludes 0" if s else "interval includes 0")
    ax.axvline(0, color="0.2", lw=0.8, ls="--")
    ax.set_yticks(y, labels, fontsize=8)
    ax.set_ylim(-0.7, n - 0.3)
    for yi, d in zip(y, diff, strict=True):
        ax.annotate(fmt.signed(d, 2), (d, yi), xytext=(0, 6), textcoords="offset points",
                    ha="center", fontsize=7)
    ax.set_xlabel("Δ top-1, A − B (points), 95 % paired bootstrap interval")
    fig.legend(*ax.get_legend_handles_labels(), fontsize=7, loc="outside lower center",
               ncols=2, frameon=False)
    ax.grid(axis="x", color="0.9")
    fig.suptitle(wrap_title(f"A = {a}  vs  B = {b}", width, 9), fontsize=9)
    return save(fig, out_stem)


def write_compare(table: pd.DataFrame, out_dir: Path, a: str, b: str) -> list[Path]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(out_dir / "compare.csv") as tmp:
        table.to_csv(tmp, index=False, float_format="%.4f")
    with atomic_path(out_dir / "compare.md") as tmp:
        tmp.write_text(compare_markdown(table, a, b))
    figs = forest_plot(table, out_dir / "compare", a, b)
    return [out_dir / "compare.csv", out_dir / "compare.md", *figs]
