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
from fakeruns import make_runs, store_matching_logits
from PIL import Image

from lt_bench.cli import main as cli_main
from lt_bench.report.collect import collect_runs
from lt_bench.report.figures import accuracy_figures, prior_figure
from lt_bench.report.figures_dxp import dxp_figure
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
    # the headline first (the backdoor), then rows follow --method-order within a backbone
    assert main.iloc[0][["backbone", "method"]].tolist() == ["ensemble", "backdoor"]
    assert list(main["method"][1:4]) == ["zero_shot", "ce", "la"]


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

REPORT_RULES = ["runs_index", "significance", "aggregate", "findings", "figure_accuracy", "figure_prior",
                "figure_dxp", "ingest_mlflow"]


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
    dirs = make_runs(tmp_path / "results/runs", backbones=backbones, seeds=(0, 1),
                     backdoor="backdoor" in methods, prior_dir=tmp_path / "results/prior")
    for d in dirs:
        store_matching_logits(d)

    targets = ["results/tables/main.csv", "results/tables/dxp.csv",
               "results/tables/ablation.csv", "results/figures/toy/acc_vs_count.png",
               "results/figures/toy/prior_vs_true.png", "results/figures/toy/dxp_la.png",
               "results/mlflow/ingested.json", "results/tables/findings.html",
               "results/figures/toy/dxp_vs_la.png"]
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
    # the main table is embedded as a page the report shows in its frame, cells included
    import base64
    import re

    pages = [base64.b64decode(m).decode() for m in
             re.findall(r"data:text/html;(?:charset=utf8;)?(?:filename=[^;]+;)?base64,([A-Za-z0-9+/=]+)", html)]
    main = pd.read_csv(tmp_path / "results/tables/main.csv")
    page = next((p for p in pages if 'id="main-toy"' in p), None)
    assert page is not None, f"main.html not embedded ({len(pages)} html pages)"
    for _, r in main.iterrows():
        assert f"{r['top1_mean']:.1f}" in page
    assert any("Backdoor gain" in p for p in pages), "findings page missing"

    # one click from the landing page opens the findings in the content pane: Chromium
    # clicks the description's "Open the findings" link, and the pane's frame shows them
    from browser import dump_dom

    i = html.rindex("</body>")
    click = ("<script>window.addEventListener('load', () => setTimeout(() => [...document"
             ".querySelectorAll('a')].find(a => a.textContent.trim() === 'Open the findings')"
             ".click(), 1000));</script>")
    clicked = tmp_path / "report-click.html"
    clicked.write_text(html[:i] + click + html[i:])
    dom = dump_dom(clicked.as_uri(), wait_ms=6000, size=(1600, 1000))
    frames = re.findall(r'<iframe[^>]*src="data:text/html;[^"]*base64,([A-Za-z0-9+/=]+)"', dom)
    assert len(frames) == 1, "no result shown after one click"
    shown = base64.b64decode(frames[0]).decode()
    assert "<title>Findings</title>" in shown and "Backdoor gain" in shown


# --- what the paper tables say beyond the numbers (footnotes, groups, published numbers) ---

def _rewrite(run_dir: Path, **changes) -> None:
    f = run_dir / "metrics.json"
    m = json.loads(f.read_text())
    m.update(changes)
    f.write_text(json.dumps(m))


@pytest.fixture(scope="module")
def marked(tmp_path_factory):
    """bs = la on every seed (τ = 1), zero_shot identical over seeds (deterministic)."""
    root = tmp_path_factory.mktemp("marked") / "runs"
    make_runs(root, methods=("zero_shot", "ce", "la", "bs"), backdoor=False)
    eval_keys = [k for k in json.loads((root / "toy/toyclip0/la/seed0/metrics.json")
                                       .read_text()) if k in MAIN_METRICS or k.startswith(
                                           ("dp_", "p_", "ece", "macro_f1", "worst", "hmean",
                                            "gmean"))]
    for b in ("toyclip0", "toyclip1"):
        for s in (0, 1, 2):
            la = json.loads((root / f"toy/{b}/la/seed{s}/metrics.json").read_text())
            _rewrite(root / f"toy/{b}/bs/seed{s}", **{k: la[k] for k in eval_keys})
            zs0 = json.loads((root / f"toy/{b}/zero_shot/seed0/metrics.json").read_text())
            _rewrite(root / f"toy/{b}/zero_shot/seed{s}", **{k: zs0[k] for k in eval_keys})
    out = tmp_path_factory.mktemp("marked_tables")
    assert cli_main(["tables", "--runs-root", str(root), "--out-dir", str(out),
                     "--method-order", "zero_shot", "ce", "la", "bs"]) == 0
    return root, out


def _md_row(md: str, backbone: str, name: str) -> list[str]:
    for line in md.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) > 3 and cells[0] == backbone and cells[1].split(" [")[0] == name:
            return cells
    raise AssertionError(f"no row {backbone}/{name} in\n{md}")


def test_identical_and_deterministic_rows_are_marked(marked):
    root, out = marked
    notes = pd.read_csv(out / "notes.csv", keep_default_na=False)
    row = notes.set_index(["backbone", "method"])
    assert row.loc[("toyclip0", "bs"), "identical_to"] == "la"
    assert row.loc[("toyclip0", "ce"), "identical_to"] == ""
    assert str(row.loc[("toyclip0", "zero_shot"), "deterministic"]) == "True"
    assert row.loc[("toyclip0", "zero_shot"), "n_distinct"] == 1
    assert row.loc[("toyclip0", "la"), "n_distinct"] == 3
    md = (out / "main.md").read_text()
    zs = _md_row(md, "toyclip0", "zero-shot")
    assert zs[2] == "1†" and not any("±" in c for c in zs[3:7])
    bs = _md_row(md, "toyclip0", "BS")
    la = _md_row(md, "toyclip0", "LA")
    assert bs[1] == "BS [a]" and bs[3:7] == [c.replace("**", "") for c in la[3:7]]
    assert "(a) BS is bit-identical to LA on every seed (toy/toyclip0, toy/toyclip1)" in md
    assert "**" not in "".join(bs)  # a duplicate is never "the best"
    tex = (out / "main.tex").read_text()
    assert r"BS$^{a}$" in tex and r"1$^\dagger$" in tex


def test_display_names_in_md_and_code_ids_in_csv(marked):
    root, out = marked
    md = (out / "main.md").read_text()
    assert "| zero-shot |" in md and "| zero_shot |" not in md
    assert set(pd.read_csv(out / "main.csv")["method"]) == {"zero_shot", "ce", "la", "bs"}
    assert r"$\tau$-norm" in __import__("lt_bench.report.format", fromlist=["x"]).tex_name(
        "tau_norm")


def test_headers_give_class_counts_and_small_dxp_cells_are_marked(marked):
    root, out = marked
    m = json.loads((root / "toy/toyclip0/ce/seed0/metrics.json").read_text())
    md = (out / "main.md").read_text()
    for g in ("Many", "Medium", "Few"):
        assert f"{g} ({m[f'n_{g.lower()}_classes']})" in md
    dxp = pd.read_csv(out / "dxp.csv")
    dmd = (out / "dxp.md").read_text()
    r = dxp[(dxp["backbone"] == "toyclip0") & (dxp["method"] == "ce")].iloc[0]
    cells = _md_row(dmd, "toyclip0", "CE")[3:]
    for key, c in zip(DXP_METRICS, cells, strict=True):
        small = r[f"n_{key}_classes"] < 10
        assert c.replace("**", "").startswith(f"{r[f'{key}_mean']:.1f}" + ("°" if small else "")), c
    p_sizes = [sum(m[f"n_dp_{d}_{p}_classes"] for d in ("many", "medium", "few"))
               for p in ("p_many", "p_medium", "p_few")]
    assert "P-Many/P-Medium/P-Few: " + "/".join(map(str, p_sizes)) + " classes" in dmd
    tex = (out / "dxp.tex").read_text()
    assert r"\begin{table*}" in tex and r"\resizebox{\textwidth}{!}{%" in tex


def test_std_keeps_informative_digits(tmp_path):
    from lt_bench.report.format import std_text

    assert [std_text(x) for x in (2.34, 0.05, 0.04, 0.012, 0.004, 0.0)] == [
        "2.3", "0.1", "0.04", "0.01", "<0.01", "0"]
    root = tmp_path / "runs"
    make_runs(root, methods=("ce",), backdoor=False, with_prior=False)
    tops = [0.5, 0.5003, 0.5006]  # std 0.03 points: "± 0.0" before
    for s, t in enumerate(tops):
        for b in ("toyclip0", "toyclip1"):
            _rewrite(root / f"toy/{b}/ce/seed{s}", top1=t)
    write_all_tables(collect_runs(root), tmp_path / "t")
    row = _md_row((tmp_path / "t/main.md").read_text(), "toyclip0", "CE")
    assert row[3].endswith(f"± {statistics.stdev([100 * t for t in tops]):.2f}")


def test_significance_marks_and_table(runs_root, tmp_path):
    from lt_bench.report.significance import COLUMNS, write_significance

    sig = pd.DataFrame([
        ["toy", "vs_la", "toyclip0", "ce", "toyclip0", "la", "LA", 3, 300, 50, 60, -10, -14,
         -6, True, 100, 0],
        ["toy", "vs_la", "toyclip1", "ce", "toyclip1", "la", "LA", 3, 300, 58, 60, -2, -5, 1,
         False, 100, 0]], columns=COLUMNS)
    write_significance(sig, tmp_path / "significance.csv")
    assert cli_main(["tables", "--runs-root", str(runs_root), "--out-dir", str(tmp_path),
                     "--significance", str(tmp_path / "significance.csv")]) == 0
    md = (tmp_path / "main.md").read_text()
    assert _md_row(md, "toyclip0", "CE")[3].endswith("▼")
    assert not _md_row(md, "toyclip1", "CE")[3].endswith(("▲", "▼"))
    assert "excludes 0" in md
    smd = (tmp_path / "significance.md").read_text()
    assert "-10.00 [-14.00, -6.00]" in smd and "+1.00]" in smd
    assert (tmp_path / "significance.html").read_text().count("<tr>") == 3


def test_prior_table_verb(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq
    from scipy.stats import spearmanr

    rng = np.random.default_rng(0)
    q_true = rng.dirichlet(np.ones(12))
    q_hat = q_true * np.exp(rng.normal(0, 0.4, 12))
    q_hat /= q_hat.sum()
    t = pa.table({"label": np.arange(12), "q_hat": q_hat, "q_true": q_true})
    meta = {"temperature": 1.5, "zero_shot_top1": 0.4321, "dataset": "toy",
            "backbone": "toyclip7"}
    t = t.replace_schema_metadata({b"lt_bench": json.dumps(meta).encode()})
    pq.write_table(t, tmp_path / "toyclip7.parquet")
    assert cli_main(["prior-table", "--priors", str(tmp_path / "toyclip7.parquet"),
                     "--out-dir", str(tmp_path / "out")]) == 0
    csv = pd.read_csv(tmp_path / "out/prior.csv")
    assert csv.loc[0, "backbone"] == "toyclip7" and csv.loc[0, "num_classes"] == 12
    assert csv.loc[0, "spearman"] == pytest.approx(spearmanr(q_hat, q_true).statistic)
    assert csv.loc[0, "zero_shot_top1"] == pytest.approx(43.21)  # percent
    assert csv.loc[0, "tv"] == pytest.approx(50 * np.abs(q_hat - q_true).sum())
    tex = (tmp_path / "out/prior.tex").read_text()
    assert r"\begin{tabular}" in tex and "43.2" in tex
    assert "43.2" in (tmp_path / "out/prior.md").read_text()
    assert "<table" in (tmp_path / "out/prior.html").read_text()
    with pytest.raises(Exception, match="expected label, q_hat"):
        pq.write_table(pa.table({"label": [0], "p": [1.0]}), tmp_path / "bad.parquet")
        from lt_bench.report.prior_table import write_prior_table
        write_prior_table([tmp_path / "bad.parquet"], tmp_path / "out")


def test_published_numbers_have_sources_and_sit_beside_ours(tmp_path):
    from lt_bench.errors import UserError
    from lt_bench.report.published import published_table, read_published

    pub = read_published()
    assert len(pub) > 10 and (pub["source"].str.strip() != "").all()
    assert set(pub["verified"]) <= {"yes", "no"}
    main = pd.DataFrame([{"dataset": "imagenet_lt", "backbone": "clip_vit_b16",
                          "method": "zero_shot", "n_seeds": 1, "top1_mean": 68.0,
                          "top1_std": float("nan")}])
    t = published_table(pub, main)
    hit = t[(t["method"] == "zero-shot CLIP, a user's reproduction") & (t["metric"] == "top1")]
    assert hit["diff"].iloc[0] == pytest.approx(68.0 - 67.73)
    assert t.loc[t["our_method"] == "", "ours"].isna().all()
    bad = tmp_path / "bad.csv"
    bad.write_text("dataset,backbone,method,metric,value,source,verified\n"
                   "toy,b,m,top1,50.0,,no\n")
    with pytest.raises(UserError, match="line 2: a number without a source"):
        read_published(bad)


def test_findings_use_the_table_numbers(runs_root, tables):
    from lt_bench.report.findings import findings

    main = pd.read_csv(tables / "main.csv")
    dxp = pd.read_csv(tables / "dxp.csv")
    text = findings(main, dxp)
    r = main[(main["backbone"] == "toyclip0") & (main["method"] == "la")].iloc[0]
    assert f"LA {r['many_mean'] - r['few_mean']:+.1f}" in text
    assert "**toyclip0**, frozen heads: D-gap" in text and "Toy-world regime" not in text
    # a fine-tuning row gets its own track line, judged by its own method
    ft = main[main["method"] == "la"].copy()
    ft["method"], ft["few_mean"] = "adaptformer_la", ft["many_mean"] - 0.5
    text2 = findings(pd.concat([main, ft]), dxp, regimes={"toy": "representation"})
    assert "**toyclip0**, fine-tuning: D-gap" in text2
    assert "against CE (frozen head), AdaptFormer + LA closes the D-gap" in text2, text2
    assert "Toy-world regime **representation**" in text2
    d = dxp[(dxp["backbone"] == "toyclip0") & (dxp["method"] == "zero_shot")].iloc[0]
    assert f"zero-shot {d['dp_few_p_many_mean'] - d['dp_few_p_few_mean']:+.1f}" in text
    bd = main[main["method"] == "backdoor"].iloc[0]["top1_mean"]
    best = main[main["method"] == "la"]["top1_mean"].max()
    assert f"{bd - best:+.1f} points top-1" in text
    sig = pd.DataFrame([{"dataset": "toy", "kind": "backdoor_vs_best_member",
                         "a_method": "backdoor", "b_method": "la", "b_label": "best member on val (toyclip1)", "diff": 3.25, "lo": 1.5,
                         "hi": 5.0, "significant": True, "a_top1": 70.0, "b_top1": 66.75,
                         "n_seeds": 3}])
    text = findings(main, dxp, sig)
    assert "+3.25 points top-1 (95 % paired bootstrap interval [+1.50, +5.00], significant" \
        in text


def test_new_figures(runs_root, tmp_path):
    from lt_bench.report.figures_dxp import dxp_summary_figure

    dirs = sorted(p.parent for p in runs_root.rglob("metrics.json"))
    out = dxp_summary_figure(dirs, tmp_path / "dxp_vs_la", "toy", ["zero_shot", "ce", "la"])
    _assert_real_image(out[0])
    accuracy_figures(dirs, tmp_path)
    # the ensemble no longer gets a panel of its own: one row of the two backbones
    w, h = Image.open(tmp_path / "acc_vs_qhat.png").size
    assert w > 2 * h, (w, h)


def test_dxp_summary_stacks_backbones_and_no_negative_zero(runs_root, tmp_path,
                                                           monkeypatch):
    from lt_bench.report import figures_dxp

    drawn = []
    real_save = figures_dxp.save
    monkeypatch.setattr(figures_dxp, "save", lambda fig, stem: drawn.append(
        ([[t.get_text() for t in ax.get_yticklabels()] for ax in fig.axes],
         [t.get_text() for ax in fig.axes for t in ax.texts], fig.get_size_inches(),
         [ax.get_position().y0 for ax in fig.axes[:2]], fig._suptitle.get_text()))
        or real_save(fig, stem))
    dirs = sorted(p.parent for p in runs_root.rglob("metrics.json"))
    figures_dxp.dxp_summary_figure(dirs, tmp_path / "dxp_vs_la", "toy", ["zero_shot", "ce"])
    (labels, texts, (width, height), (y_first, y_second), title), = drawn
    first, second, _colour_bar = labels  # two backbones' panels, then the colour bar
    assert "zero-shot" in first and "CE" in first
    # stacked: the second panel below the first, each with its own row labels, so the
    # figure is one panel wide (the report's pane fits its width) and grows downwards
    assert second == first and y_second < y_first
    assert texts and "-0.0" not in texts and "+0.0" not in texts
    # ~0.55 in per cell of the 9 D×P cells: the numbers stay inside their cells
    assert 9 * 0.55 <= width <= 12, width
    assert height > width / 2
    assert all(len(line) <= 0.9 * width * 72 / (0.55 * 9) for line in title.splitlines())


def test_one_panel_heat_map_title_is_wrapped_to_its_width(runs_root, tmp_path, monkeypatch):
    """The ensemble's D×P heat map has one 3.6-in panel: its title is wrapped to fit
    (it was one line, clipped on both sides)."""
    from lt_bench.report import figures_dxp

    drawn = []
    real_save = figures_dxp.save

    def save(fig, stem):
        fig.canvas.draw()  # the layout as saved: the title's box in pixels
        drawn.append((fig._suptitle.get_text(), fig._suptitle.get_window_extent(),
                      fig.get_size_inches()[0] * fig.dpi))
        return real_save(fig, stem)

    monkeypatch.setattr(figures_dxp, "save", save)
    dirs = sorted(p.parent for p in runs_root.rglob("metrics.json"))
    figures_dxp.dxp_figure(dirs, "backdoor", tmp_path / "dxp_backdoor", "toy")
    ((text, box, width_px),) = drawn
    assert len(text.splitlines()) > 1
    assert box.x0 >= 0 and box.x1 <= width_px, (box, width_px)  # inside the canvas
