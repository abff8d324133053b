"""The report's tables as a reader sees them: rendered by headless Chromium (README.md,
"Results report").

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
from fakeruns import make_runs, store_matching_logits
from PIL import Image

from lt_bench.cli import main as cli_main

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tables(tmp_path_factory):
    root = tmp_path_factory.mktemp("html") / "results"
    for d in make_runs(root / "runs", prior_dir=root / "prior"):
        store_matching_logits(d)
    out = root / "tables"
    assert cli_main(["significance", "--runs-root", str(root / "runs"), "--n-boot", "200",
                     "--out", str(out / "significance.csv")]) == 0
    assert cli_main(["tables", "--runs-root", str(root / "runs"), "--out-dir", str(out),
                     "--method-order", "zero_shot", "ce", "la", "backdoor",
                     "--significance", str(out / "significance.csv")]) == 0
    assert cli_main(["findings", "--tables-dir", str(out)]) == 0
    return root / "runs", out


def probe(page: Path, script: str, width: int, tmp_path: Path) -> dict:
    """Run ``script`` (a JS expression giving a JSON-able value) in ``page`` rendered by
    Chromium in a window ``width`` px wide; returns its value. The page is copied with the
    script appended, which writes the value into the DOM that --dump-dom prints."""
    html = page.read_text()
    i = html.rindex("</body>")
    js = ("<script>window.addEventListener('load', () => { const pre = "
          "document.createElement('pre'); pre.id = 'lt-probe'; pre.textContent = "
          f"JSON.stringify({script}); document.body.appendChild(pre); }});</script>")
    copy = tmp_path / f"probe-{width}-{page.name}"
    copy.write_text(html[:i] + js + html[i:])
    dom = dump_dom(copy.as_uri(), wait_ms=500, size=(width, 900))
    m = re.search(r'<pre id="lt-probe">(.*?)</pre>', dom, re.S)
    assert m, dom[-2000:]
    import html as _html

    return json.loads(_html.unescape(m.group(1)))


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


def test_headline_rows_come_first(tables):
    """The backdoor (the paper's method) heads the main table, under a Headline line with
    its gain over its best member on val; the significance table starts with it."""
    runs, out = tables
    dom = dump_dom((out / "main.html").as_uri(), wait_ms=500)
    first_row = re.search(r"<tbody>\s*<tr>(.*?)</tr>", dom, re.S).group(1)
    cells = re.findall(r"<td[^>]*>(.*?)</td>", first_row, re.S)
    assert cells[:2] == ["ensemble", "backdoor"], cells
    sig = pd.read_csv(out / "significance.csv")
    best = sig[sig["kind"] == "backdoor_vs_best_member"].iloc[0]
    headline = re.search(r'<p class="headline">(.*?)</p>', dom, re.S).group(1)
    assert dom.index('class="headline"') < dom.index("<table")
    assert f"backdoor {best['a_top1']:.1f} vs its {best['b_label']} LA {best['b_top1']:.1f}" \
        in _text(headline)
    assert f"[{best['lo']:+.2f}, {best['hi']:+.2f}]" in headline
    sdom = dump_dom((out / "significance.html").as_uri(), wait_ms=500)
    first = re.search(r"<tbody>\s*<tr>(.*?)</tr>", sdom, re.S).group(1)
    assert "backdoor vs best single member" in first


# the report's content pane: the window minus Snakemake's sidebar (320 px at 1,600, 256 px
# at 1,280), so 1,024 px is the pane at 1,280 px
@pytest.mark.parametrize("width", [1600, 1280, 1024])
def test_significance_interval_column_is_fully_visible(tables, tmp_path, width):
    runs, out = tables
    got = probe(out / "significance.html", """(() => {
        const head = [...document.querySelectorAll('#significance thead th')];
        const col = head.findIndex(th => th.textContent.startsWith('Δ top-1'));
        const cells = [head[col], ...[...document.querySelectorAll('#significance tbody tr')]
                       .map(tr => tr.children[col])];
        return {col: col, n: cells.length, inner: window.innerWidth,
                scroll: document.documentElement.scrollWidth,
                right: Math.max(...cells.map(c => c.getBoundingClientRect().right)),
                left: Math.min(...cells.map(c => c.getBoundingClientRect().left))};
    })()""", width, tmp_path)
    n_rows = len(pd.read_csv(out / "significance.csv"))
    assert got["col"] >= 0 and got["n"] == n_rows + 1 and n_rows > 0, got
    assert 0 <= got["left"] and got["right"] <= got["inner"] == width, got  # in the viewport
    assert got["scroll"] <= width, got  # nothing to scroll to sideways


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
                       ("findings", (1200, 500)), ("significance", (1600, 700)),
                       ("significance", (1280, 700))):
        png = screenshot((out / f"{name}.html").as_uri(),
                         tmp_path / f"report-{name}-{size[0]}.png", size=size, wait_ms=500)
        img = Image.open(png).convert("L")
        assert img.size == size and len(set(img.tobytes())) > 20, name  # not blank
        if dest != tmp_path:
            dest.mkdir(parents=True, exist_ok=True)
            shutil.copy(png, dest / (f"report-{name}.png" if name != "significance" else
                                     f"report-{name}-{size[0]}.png"))
