"""``lt-bench tables`` and ``lt-bench figures``: the results report from the run files."""

from __future__ import annotations

import argparse
from pathlib import Path


def _run_dirs(a) -> list[Path]:
    if a.metrics:
        return [Path(m).parent for m in a.metrics]
    dirs = sorted(p.parent for p in Path(a.runs_root).glob("*/*/*/seed*/metrics.json"))
    if getattr(a, "dataset", None):
        dirs = [d for d in dirs if d.parts[-4] == a.dataset]
    if not dirs:
        raise FileNotFoundError(f"no finished runs (metrics.json) under {a.runs_root}"
                                + (f" for dataset {a.dataset!r}" if getattr(a, "dataset", None)
                                   else ""))
    return dirs


def cmd_tables(a) -> None:
    from lt_bench.report.collect import collect_runs
    from lt_bench.report.tables import write_all_tables

    runs = collect_runs(a.runs_root, a.metrics)
    tables = write_all_tables(runs, Path(a.out_dir), a.method_order)
    print(f"{len(runs)} runs -> " + ", ".join(f"{k}: {len(v)} rows" for k, v in tables.items())
          + f" in {a.out_dir}/")


def cmd_fig_accuracy(a) -> None:
    from lt_bench.report.figures import accuracy_figures

    out = accuracy_figures(_run_dirs(a), Path(a.out_dir), a.methods)
    print("\n".join(map(str, out)))


def cmd_fig_prior(a) -> None:
    from lt_bench.report.figures import prior_figure

    priors = dict(a.prior or [])
    true_priors = {b: Path(a.backbones_dir) / b / "prior.parquet" for b in priors}
    out = prior_figure(priors, Path(a.out), a.dataset or "", true_priors)
    print("\n".join(map(str, out)))


def cmd_fig_dxp(a) -> None:
    from lt_bench.report.figures import dxp_figure

    dirs = _run_dirs(a)
    for m in a.methods:
        out = dxp_figure(dirs, m, Path(a.out_dir) / f"dxp_{m}", a.dataset or "")
        print("\n".join(map(str, out)))


def _kv(s: str) -> tuple[str, str]:
    if "=" not in s:
        raise argparse.ArgumentTypeError(f"expected BACKBONE=PATH, got {s!r}")
    k, v = s.split("=", 1)
    return k, v


def _runs_args(s) -> None:
    s.add_argument("--runs-root", default="results/runs")
    s.add_argument("--metrics", nargs="*", help="explicit metrics.json files (default: all "
                   "finished runs under --runs-root)")


def add_report_commands(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser("tables", help="main, D×P, M-ablation and runs tables (CSV/MD/LaTeX)")
    _runs_args(s)
    s.add_argument("--out-dir", default="results/tables")
    s.add_argument("--method-order", nargs="*", help="row order of the methods (default: "
                   "alphabetical)")
    s.set_defaults(func=cmd_tables)

    f = sub.add_parser("figures", help="report figures (PNG + PDF)")
    fsub = f.add_subparsers(dest="figure", required=True, metavar="FIGURE")

    s = fsub.add_parser("accuracy", help="per-class accuracy vs train count and vs q̂")
    _runs_args(s)
    s.add_argument("--dataset", help="only this dataset's runs (with --runs-root)")
    s.add_argument("--methods", nargs="*", default=["zero_shot", "ce", "la", "backdoor"],
                   help="methods to draw, filtered to those with runs")
    s.add_argument("--out-dir", required=True, help="e.g. results/figures/toy")
    s.set_defaults(func=cmd_fig_accuracy)

    s = fsub.add_parser("prior", help="estimated prior q̂ vs the true prior (toy backbones)")
    s.add_argument("--prior", type=_kv, action="append", metavar="BACKBONE=PARQUET",
                   help="prior file (label, q_hat, q_true) of a backbone (repeatable)")
    s.add_argument("--backbones-dir", default="results/backbones",
                   help="where toy backbones keep prior.parquet (the true prior, when the "
                   "prior file has no q_true)")
    s.add_argument("--dataset")
    s.add_argument("--out", required=True, help="output stem: writes <out>.png and <out>.pdf")
    s.set_defaults(func=cmd_fig_prior)

    s = fsub.add_parser("dxp", help="D×P heat-map of each method")
    _runs_args(s)
    s.add_argument("--dataset")
    s.add_argument("--methods", nargs="+", required=True)
    s.add_argument("--out-dir", required=True, help="writes dxp_<method>.png and .pdf there")
    s.set_defaults(func=cmd_fig_dxp)
