#!/usr/bin/env python
"""Screenshots of the HTML report (``snakemake --report``) for docs/screenshots/.

    .venv/bin/snakemake --report results/report.html      # after the demo
    .venv/bin/python scripts/report-screenshots.py results/report.html

Opens the self-contained report in headless Chromium (tests/browser.py: Debian's chromium)
and, for each page, clicks the link of the report's landing text that opens it in the
content pane (as a reader would, one click), then writes:

    report-main.png      the main table (headline rows first)
    report-findings.png  the findings
    report-significance.png  the significance table (each backdoor vs its best member first)

Look at every file afterwards.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

#: file name → the landing text's link that opens the page (workflow/report/workflow.rst)
PAGES = {"report-main.png": "main table",
         "report-findings.png": "Open the findings",
         "report-significance.png": "significance"}


def main() -> None:
    from browser import screenshot

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("report", type=Path, help="the HTML report of `snakemake --report`")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "screenshots")
    ap.add_argument("--size", default="1600x1000", help="window WIDTHxHEIGHT")
    args = ap.parse_args()
    html = args.report.read_text(encoding="utf-8")
    w, h = (int(x) for x in args.size.split("x"))
    args.out.mkdir(parents=True, exist_ok=True)
    i = html.rindex("</body>")
    with tempfile.TemporaryDirectory() as tmp:
        for name, link in PAGES.items():
            if link not in html:
                print(f"skipped {name}: no link {link!r} in the report", file=sys.stderr)
                continue
            click = ("<script>window.addEventListener('load', () => setTimeout(() => [...document"
                     f".querySelectorAll('a')].find(a => a.textContent.trim() === {link!r})"
                     ".click(), 1000));</script>")
            page = Path(tmp) / f"{name}.html"
            page.write_text(html[:i] + click + html[i:], encoding="utf-8")
            screenshot(page.as_uri(), args.out / name, size=(w, h))
            print(args.out / name)


if __name__ == "__main__":
    main()
