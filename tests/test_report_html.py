"""The report's tables as a reader sees them: rendered by headless Chromium (issue 14).

Snakemake 9's report shows an HTML result inside the page (an iframe), so each table is
also written as a self-contained HTML page; this test renders those pages in a real
browser and checks that the headline cells are on the rendered page. (The real
``snakemake --report`` on a finished tiny workflow is in test_report.py, marked slow.)
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import pandas as pd
import pytest
from browser import dump_dom, screenshot
from fakeruns import make_runs
from PIL import Image

from lt_bench.cli import main as cli_main

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tables(tmp_path_factory):
    root = tmp_path_factory.mktemp("html") / "results"
    make_runs(root / "runs", prior_dir=root / "prior")
    out = root / "tables"
    assert cli_main(["tables", "--runs-root", str(root / "runs"), "--out-dir", str(out),
                     "--method-order", "zero_shot", "ce", "la", "backdoor"]) == 0
    assert cli_main(["findings", "--tables-dir", str(out)]) == 0
    return root / "runs", out


def _text(dom: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", dom))


def test_main_table_headline_cells_render(tables):
    runs, out = tables
    dom = dump_dom((out / "main.html").as_uri(), wait_ms=500)
    text = _text(dom)
    main = pd.read_csv(out / "main.csv")
    assert len(re.findall(r"<tr>", dom)) == len(main) + 1  # header + one row per csv row
    for _, r in main.iterrows():  # every Overall cell, as the table prints it
        assert f"{r['top1_mean']:.1f} ± {r['top1_std']:.1f}" in text, r["method"]
    best = main.loc[main["top1_mean"].idxmax()]
    assert f"<b>{best['top1_mean']:.1f}</b>" in dom
    m = json.loads(next(runs.rglob("metrics.json")).read_text())
    assert f"Many ({m['n_many_classes']})" in text and "zero-shot" in text
    assert "Top-1 accuracy (%)" in text  # the caption is on the page


def test_findings_page_renders_the_table_numbers(tables):
    runs, out = tables
    text = _text(dump_dom((out / "findings.html").as_uri(), wait_ms=500))
    main = pd.read_csv(out / "main.csv")
    r = main[(main["backbone"] == "toyclip0") & (main["method"] == "la")].iloc[0]
    assert f"LA {r['many_mean'] - r['few_mean']:+.1f}" in text
    assert "Backdoor gain" in text


def test_screenshots(tables, tmp_path):
    """PNG of the main table and findings (to docs/screenshots/ with LT_BENCH_SCREENSHOTS=1)."""
    runs, out = tables
    dest = REPO / "docs/screenshots" if os.environ.get("LT_BENCH_SCREENSHOTS") else tmp_path
    for name, size in (("main", (1400, 700)), ("dxp", (1600, 700)),
                       ("findings", (1200, 500))):
        png = screenshot((out / f"{name}.html").as_uri(), tmp_path / f"report-{name}.png",
                         size=size, wait_ms=500)
        img = Image.open(png).convert("L")
        assert img.size == size and len(set(img.tobytes())) > 20, name  # not blank
        if dest != tmp_path:
            dest.mkdir(parents=True, exist_ok=True)
            shutil.copy(png, dest / f"report-{name}.png")
