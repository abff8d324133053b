"""``lt-bench tables``, ``significance``, ``compare``, ``prior-table``, ``findings`` and
``figures``: the results report from the run files."""

from __future__ import annotations

import argparse
from pathlib import Path

from lt_bench.argtypes import name_path
from lt_bench.errors import MissingInputError


def _run_dirs(a) -> list[Path]:
    from lt_bench.runs.folder import selected_run_dirs

    return selected_run_dirs(a.metrics, a.runs_root, getattr(a, "dataset", None))


def cmd_tables(a) -> None:
    from lt_bench.report.collect import collect_runs
    from lt_bench.report.published import write_published_table
    from lt_bench.report.significance import read_significance
    from lt_bench.report.tables import write_all_tables
    from lt_bench.runs.folder import find_run_dirs
    from lt_bench.runs.predictors import check_fresh

    # a listed run no longer finished, or stale (its numbers are no longer its files'):
    # refuse rather than tabulate it
    for d in [Path(m).parent for m in a.metrics] if a.metrics else find_run_dirs(a.runs_root):
        check_fresh(d)
    runs = collect_runs(a.runs_root, a.metrics)
    sig = read_significance(a.significance) if a.significance else None
    if a.significance and sig is None:
        raise MissingInputError(f"--significance {a.significance}: no such file (made by "
                                "`lt-bench significance`)")
    tables = write_all_tables(runs, Path(a.out_dir), a.method_order, sig)
    tables["published"] = write_published_table(tables["main"], Path(a.out_dir),
                                                a.published)
    print(f"{len(runs)} runs -> " + ", ".join(f"{k}: {len(v)} rows" for k, v in tables.items())
          + f" in {a.out_dir}/")


def cmd_significance(a) -> None:
    from lt_bench.report.significance import comparisons, write_significance
    from lt_bench.runs.predictors import check_fresh

    dirs = _run_dirs(a)
    for d in dirs:  # every listed run, compared or not: a stale one is refused
        check_fresh(d)
    table = comparisons(dirs, n_boot=a.n_boot, seed=a.seed)
    write_significance(table, Path(a.out))
    n_sig = int(table["significant"].sum()) if len(table) else 0
    print(f"{len(table)} comparisons ({n_sig} with an interval excluding 0) -> {a.out}")


def cmd_compare(a) -> None:
    from lt_bench.report.compare import compare, write_compare

    table = compare(a.a, a.b, a.a_method, a.b_method, n_boot=a.n_boot, seed=a.seed)
    out = write_compare(table, Path(a.out_dir), str(a.a), str(a.b))
    n_sig = int(table["significant"].sum())
    print(f"{len(table)} settings compared ({n_sig} with an interval excluding 0) -> "
          + ", ".join(map(str, out)))


def cmd_findings(a) -> None:
    import pandas as pd

    from lt_bench.report.findings import write_findings
    from lt_bench.report.significance import read_significance

    d = Path(a.tables_dir)
    main = pd.read_csv(d / "main.csv")
    dxp = pd.read_csv(d / "dxp.csv") if (d / "dxp.csv").is_file() else None
    sig = read_significance(d / "significance.csv")
    print(write_findings(main, Path(a.out_dir or d), dxp, sig, _regimes(a.data_dir, main)))


def _regimes(data_dir: str | None, main) -> dict[str, str]:
    """The toy world's regime of each dataset, from its prepared toy_meta.json."""
    from lt_bench.data.toy import world_params

    worlds = {ds: world_params(Path(data_dir) / ds)
              for ds in (dict.fromkeys(main["dataset"]) if data_dir else ())}
    return {ds: w["regime"] for ds, w in worlds.items() if w is not None}


def cmd_prior_table(a) -> None:
    from lt_bench.report.prior_table import write_prior_table

    t = write_prior_table([Path(p) for p in a.priors], Path(a.out_dir))
    print(f"{len(t)} priors -> {a.out_dir}/prior.csv")


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
    from lt_bench.report.figures_dxp import dxp_figure, dxp_means, dxp_summary_figure

    dirs = _run_dirs(a)
    means = dxp_means(dirs)  # once: it reads every run's metrics.json
    for m in a.methods:
        out = dxp_figure(dirs, m, Path(a.out_dir) / f"dxp_{m}", a.dataset or "", means=means)
        print("\n".join(map(str, out)))
    out = dxp_summary_figure(dirs, Path(a.out_dir) / "dxp_vs_la", a.dataset or "", a.methods,
                             means=means)
    print("\n".join(map(str, out)))


def _runs_args(s) -> None:
    s.add_argument("--runs-root", default="results/runs")
    s.add_argument("--metrics", nargs="*", help="explicit metrics.json files (default: the "
                   "runs of --runs-root/{dataset}/index.txt, the workflow's list, else all "
                   "finished runs under --runs-root)")


def add_report_commands(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser("tables", help="main, D×P, M-ablation, runs and published-numbers "
                                      "tables (CSV/MD/LaTeX/HTML)")
    _runs_args(s)
    s.add_argument("--out-dir", default="results/tables")
    s.add_argument("--method-order", nargs="*", help="row order of the methods (default: "
                   "alphabetical)")
    s.add_argument("--significance", help="significance.csv of `lt-bench significance`: "
                   "mark the differences whose interval excludes 0")
    s.add_argument("--published", help="published numbers CSV (default: the one shipped "
                   "in lt_bench/report/published_numbers.csv)")
    s.set_defaults(func=cmd_tables)

    s = sub.add_parser("significance", help="paired bootstrap 95 %% intervals of top-1 "
                       "differences (method vs LA, backdoor vs best member, controls)")
    _runs_args(s)
    s.add_argument("--n-boot", type=int, default=2000, help="bootstrap replicates")
    s.add_argument("--seed", type=int, default=0, help="seed of the resampling")
    s.add_argument("--out", default="results/tables/significance.csv")
    s.set_defaults(func=cmd_significance)

    s = sub.add_parser("compare", help="paired bootstrap differences of top-1 between two "
                       "settings (result folders, suites or two methods), table + figure")
    s.add_argument("a", help="side A: a results folder, a runs root or a run index file "
                   "(one metrics.json path per line)")
    s.add_argument("b", help="side B: the same kinds as A")
    s.add_argument("--a-method", help="compare only this method of A (pairs on dataset and "
                   "backbone: two variants of one method)")
    s.add_argument("--b-method", help="compare only this method of B")
    s.add_argument("--n-boot", type=int, default=2000, help="bootstrap replicates")
    s.add_argument("--seed", type=int, default=0, help="seed of the resampling")
    s.add_argument("--out-dir", default="results/compare", help="writes compare.csv, "
                   "compare.md and compare.png/.pdf there")
    s.set_defaults(func=cmd_compare)

    s = sub.add_parser("findings", help="the findings section (Markdown + HTML) from the "
                                        "tables")
    s.add_argument("--tables-dir", default="results/tables")
    s.add_argument("--out-dir", help="default: --tables-dir")
    s.add_argument("--data-dir", help="prepared datasets (resources/data): states the toy "
                   "world's regime from <dir>/<dataset>/toy_meta.json")
    s.set_defaults(func=cmd_findings)

    if "prior-table" not in sub.choices:  # lt_bench.methods.cli had it before the move
        s = sub.add_parser("prior-table", help="table of estimated vs true priors (toy world)")
        s.add_argument("--priors", nargs="+", required=True, help="prior Parquet files")
        s.add_argument("--out-dir", default="results/tables",
                       help="writes prior.csv, .md, .tex and .html")
        s.set_defaults(func=cmd_prior_table)

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
    s.add_argument("--prior", type=name_path, action="append", metavar="BACKBONE=PARQUET",
                   help="prior file (label, q_hat, q_true) of a backbone (repeatable)")
    s.add_argument("--backbones-dir", default="results/backbones",
                   help="where toy backbones keep prior.parquet (the true prior, when the "
                   "prior file has no q_true)")
    s.add_argument("--dataset")
    s.add_argument("--out", required=True, help="output stem: writes <out>.png and <out>.pdf")
    s.set_defaults(func=cmd_fig_prior)

    s = fsub.add_parser("dxp", help="D×P heat-map of each method and the summary vs LA")
    _runs_args(s)
    s.add_argument("--dataset")
    s.add_argument("--methods", nargs="+", required=True)
    s.add_argument("--out-dir", required=True, help="writes dxp_<method>.png/.pdf and "
                   "dxp_vs_la.png/.pdf there")
    s.set_defaults(func=cmd_fig_dxp)
