"""Results report: tables recomputed independently from metrics.json, figures, HTML report."""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from fakeruns import make_runs
from PIL import Image

from lt_bench.cli import main as cli_main
from lt_bench.report.collect import collect_runs
from lt_bench.report.figures import accuracy_figures, dxp_figure, prior_figure
from lt_bench.report.tables import DXP_METRICS, MAIN_METRICS, write_all_tables

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def runs_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("report") / "results"
    make_runs(root / "runs", prior_dir=root / "prior")
    return root / "runs"


@pytest.fixture(scope="module")
def tables(runs_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("tables")
    rc = cli_main(["tables", "--runs-root", str(runs_root), "--out-dir", str(out),
                   "--method-order", "zero_shot", "ce", "la", "backdoor"])
    assert rc == 0
    return out


def _metrics_by_group(runs_root: Path) -> dict[tuple, list[dict]]:
    """Independent of lt_bench.report: read every metrics.json and group by identity."""
    groups: dict[tuple, list[dict]] = {}
    for f in sorted(runs_root.rglob("metrics.json")):
        m = json.loads(f.read_text())
        groups.setdefault((m["dataset"], m["backbone"], m["method"]), []).append(m)
    return groups


def _mean_std(values):
    vals = [100 * v for v in values if v is not None]
    if not vals:
        return None, None
    return statistics.fmean(vals), (statistics.stdev(vals) if len(vals) > 1 else None)


def _close(a, b):
    if b is None:
        return pd.isna(a)
    return abs(float(a) - b) < 1e-3  # CSV keeps 4 decimals


def test_main_table_cells_equal_recomputed_mean_std(runs_root, tables):
    main = pd.read_csv(tables / "main.csv")
    assert list(main.columns) == ["dataset", "backbone", "method", "n_seeds"] + [
        f"{m}_{s}" for m in MAIN_METRICS for s in ("mean", "std")]
    groups = _metrics_by_group(runs_root)
    assert len(main) == len(groups) == 7
    for _, row in main.iterrows():
        runs = groups[(row["dataset"], row["backbone"], row["method"])]
        assert row["n_seeds"] == len(runs) == 3
        for m in MAIN_METRICS:
            mean, std = _mean_std([r[m] for r in runs])
            assert _close(row[f"{m}_mean"], mean), (row["method"], m)
            assert _close(row[f"{m}_std"], std), (row["method"], m)
    # rows follow --method-order within a backbone, ensembles last
    assert list(main["method"][:3]) == ["zero_shot", "ce", "la"]
    assert main.iloc[-1]["backbone"] == "ensemble"


def test_main_markdown_and_latex_mark_the_best(runs_root, tables):
    main = pd.read_csv(tables / "main.csv")
    best = main.loc[main["top1_mean"].idxmax()]
    md = (tables / "main.md").read_text()
    assert f"**{best['top1_mean']:.1f}** ± {best['top1_std']:.1f}" in md
    tex = (tables / "main.tex").read_text()
    assert rf"\textbf{{{best['top1_mean']:.1f}}} $\pm$ {best['top1_std']:.1f}" in tex
    assert r"\begin{tabular}" in tex and r"\bottomrule" in tex and r"zero\_shot" in tex
    assert tex.count(r"\textbf") == 4  # one best per column, one dataset


def test_dxp_table_cells(runs_root, tables):
    dxp = pd.read_csv(tables / "dxp.csv")
    groups = _metrics_by_group(runs_root)
    assert len(dxp) == 7
    for _, row in dxp.iterrows():
        runs = groups[(row["dataset"], row["backbone"], row["method"])]
        for key in DXP_METRICS:
            mean, std = _mean_std([r[key] for r in runs])
            assert _close(row[f"{key}_mean"], mean) and _close(row[f"{key}_std"], std)
            assert row[f"n_{key}_classes"] == runs[0][f"n_{key}_classes"]
    tex = (tables / "dxp.tex").read_text()
    assert r"\multicolumn{3}{c}{D-Many}" in tex


def test_ablation_table_cells(runs_root, tables):
    abl = pd.read_csv(tables / "ablation.csv")
    backdoor = _metrics_by_group(runs_root)[("toy", "ensemble", "backdoor")]
    assert sorted(abl["M"]) == [1, 2]
    for _, row in abl.iterrows():
        m = int(row["M"])
        assert row["n_seeds"] == len(backdoor)
        assert row["n_subsets"] == backdoor[0][f"m{m}_n_subsets"]
        for k in MAIN_METRICS:
            mean, std = _mean_std([r[f"m{m}_{k}"] for r in backdoor])
            assert _close(row[f"{k}_mean"], mean) and _close(row[f"{k}_std"], std)
    assert "**" in (tables / "ablation.md").read_text()


def test_runs_table_traces_every_run(runs_root, tables):
    runs = pd.read_csv(tables / "runs.csv")
    files = sorted(runs_root.rglob("metrics.json"))
    assert len(runs) == len(files)
    assert set(runs["run_dir"]) == {str(f.parent) for f in files}
    one = json.loads(files[0].read_text())
    row = runs[runs["run_dir"] == str(files[0].parent)].iloc[0]
    assert row["top1"] == pytest.approx(one["top1"])


def test_tables_without_prior_or_backdoor(tmp_path):
    make_runs(tmp_path / "runs", methods=("ce",), seeds=(0,), with_prior=False, backdoor=False)
    out = tmp_path / "tables"
    tables = write_all_tables(collect_runs(tmp_path / "runs"), out)
    assert len(tables["main"]) == 2 and tables["dxp"].empty and tables["ablation"].empty
    assert "No run has D×P metrics" in (out / "dxp.md").read_text()
    assert "dp_many_p_many_mean" in (out / "dxp.csv").read_text()
    assert "No backdoor" in (out / "ablation.md").read_text()
    assert (out / "ablation.tex").read_text().startswith("%")
    main = pd.read_csv(out / "main.csv")
    assert main["top1_std"].isna().all()  # one seed: no std
    assert "±" not in (out / "main.md").read_text()


def _assert_real_image(path: Path, min_size=(400, 250)):
    img = Image.open(path).convert("RGB")
    assert img.size[0] >= min_size[0] and img.size[1] >= min_size[1], img.size
    arr = np.asarray(img, dtype=float)
    assert arr.std() > 10, f"{path} looks blank"
    assert len(np.unique(arr.reshape(-1, 3), axis=0)) > 50, f"{path} has too few colours"


def test_figures(runs_root, tmp_path):
    dirs = sorted(p.parent for p in runs_root.rglob("metrics.json"))
    out = accuracy_figures(dirs, tmp_path, ["zero_shot", "ce", "la", "backdoor", "nope"])
    prior_root = runs_root.parent / "prior" / "toy"
    out += prior_figure({b: prior_root / f"{b}.parquet" for b in ("toyclip0", "toyclip1")},
                        tmp_path / "prior_vs_true", "toy")
    out += dxp_figure(dirs, "la", tmp_path / "dxp_la", "toy")
    names = sorted(p.name for p in out)
    assert names == sorted(f"{s}.{e}" for s in ("acc_vs_count", "acc_vs_qhat",
                                                 "prior_vs_true", "dxp_la")
                           for e in ("png", "pdf"))
    for p in out:
        assert p.stat().st_size > 5000
        if p.suffix == ".png":
            _assert_real_image(p)
        else:
            assert p.read_bytes().startswith(b"%PDF")


def test_figures_placeholders_without_prior(tmp_path):
    dirs = make_runs(tmp_path / "runs", methods=("ce",), seeds=(0,), with_prior=False,
                     backdoor=False)
    accuracy_figures(dirs, tmp_path / "fig")
    dxp_figure(dirs, "ce", tmp_path / "fig" / "dxp_ce")
    prior_figure({"toyclip0": tmp_path / "missing.parquet"}, tmp_path / "fig" / "prior")
    _assert_real_image(tmp_path / "fig" / "acc_vs_count.png")
    for name in ("acc_vs_qhat", "dxp_ce", "prior"):  # placeholders that say why
        assert (tmp_path / "fig" / f"{name}.png").is_file()
        assert (tmp_path / "fig" / f"{name}.pdf").is_file()


# --- the Snakemake report on a finished (hand-written) tiny suite ------------------------

REPORT_RULES = ["aggregate", "figure_accuracy", "figure_prior", "figure_dxp", "ingest_mlflow"]


def _snakemake(workdir: Path, *args: str, timeout: int = 900):
    env = {**os.environ, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
           "HF_HUB_OFFLINE": "1", "MPLBACKEND": "Agg"}
    env.pop("MLFLOW_TRACKING_URI", None)
    # targets first: --allowed-rules takes several values
    cmd = [str(VENV_BIN / "snakemake"), *args, "--cores", "2", "--configfile",
           "test_config.yaml", "--allowed-rules", *REPORT_RULES]
    res = subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True,
                         timeout=timeout)
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-6000:]
    return res


@pytest.mark.slow
def test_snakemake_report_lists_tables_and_figures(tmp_path):
    """The report rules on hand-written run folders (other stages not allowed to run)."""
    from lt_bench.methods import METHODS

    for name in ("Snakefile", "config.yaml", "workflow", "profiles"):
        src = REPO / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, tmp_path / name)
    cfg = yaml.safe_load((REPO / "tests/data/tiny_config.yaml").read_text())
    methods = ["zero_shot", "ce", "la"] + (["backdoor"] if "backdoor" in METHODS else [])
    cfg["suites"]["tiny"].update(methods=methods, seeds=[0, 1])
    (tmp_path / "test_config.yaml").write_text(yaml.safe_dump(cfg))
    backbones = cfg["suites"]["tiny"]["backbones"]
    make_runs(tmp_path / "results/runs", backbones=backbones, seeds=(0, 1),
              backdoor="backdoor" in methods, prior_dir=tmp_path / "results/prior")

    targets = ["results/tables/main.csv", "results/tables/dxp.csv",
               "results/tables/ablation.csv", "results/figures/toy/acc_vs_count.png",
               "results/figures/toy/prior_vs_true.png", "results/figures/toy/dxp_la.png",
               "results/mlflow/ingested.json"]
    _snakemake(tmp_path, *targets)
    for t in targets:
        assert (tmp_path / t).is_file(), t
    manifest = json.loads((tmp_path / "results/mlflow/ingested.json").read_text())
    n_runs = len(list((tmp_path / "results/runs").rglob("metrics.json")))
    assert manifest["counts"]["run_folders"] == n_runs == manifest["counts"]["created"]
    assert manifest["experiment"] == "lt-bench/tiny"

    _snakemake(tmp_path, *targets, "--report", "results/report.html")
    html = (tmp_path / "results/report.html").read_text(errors="replace")
    assert len(html) > 10_000
    for name in ("main.csv", "main.tex", "dxp.csv", "ablation.csv", "runs.csv",
                 "acc_vs_count.png", "prior_vs_true.png", "dxp_la.png"):
        assert name in html, f"{name} missing from the report"
