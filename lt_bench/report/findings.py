"""The findings section, generated from the tables (issue 13 §4), never written by hand.

Per dataset and single backbone: the **D-gap** (Many − Few top-1) before re-balancing
(zero-shot, CE) and after (LA), and the **P-gap** inside the Few data group
(Few/P-Many − Few/P-Few of the D×P table) for the same rows; then the **backdoor gain**
over its best single member chosen on val with its paired bootstrap interval, and what
each ensemble control reaches of that gain. Every number is read from ``main.csv``,
``dxp.csv`` and ``significance.csv`` (the tables' means, points of top-1), so the text
and the tables agree.
"""

from __future__ import annotations

import html as _html
from pathlib import Path

import pandas as pd

from lt_bench.io import atomic_path
from lt_bench.report import format as fmt

BEFORE, AFTER = ("zero_shot", "ce"), "la"
#: the re-balanced method of each track (issue 13 §3: per regime and per track)
TRACKS = (("frozen heads", "la"), ("fine-tuning", "adaptformer_la"))
CLOSE_TOL = 1.0  # points: a gap this small after re-balancing counts as closed
#: what each toy-world regime means (lt_bench/data/toy.py), for the findings' first line
REGIMES = {
    "compositional": "classes are compositions of shared attributes, so a class rare in "
                     "pre-training still gets good features from its common parts: the "
                     "inherited imbalance lives in the logits",
    "representation": "classes carry class-specific detail that only pre-training pairs of "
                      "that class teach, so a class rare in pre-training also gets a worse "
                      "representation (the paper's regime)",
}


def _get(table: pd.DataFrame | None, ds, bb, method, col):
    if table is None or table.empty or col not in table.columns:
        return None
    hit = table[(table["dataset"] == ds) & (table["backbone"] == bb) & (table["method"] == method)]
    if hit.empty or pd.isna(hit.iloc[0][col]):
        return None
    return float(hit.iloc[0][col])


def _verdict(before: float | None, after: float | None, what: str, by: str = "LA") -> str:
    if before is None or after is None:
        return ""
    small_before, small_after = abs(before) < CLOSE_TOL, abs(after) < CLOSE_TOL
    if small_after:
        return f"no {what} before or after {by}" if small_before else f"{by} closes the {what}"
    if small_before:
        return f"{by} opens a {what}"
    if abs(after) < abs(before):
        return f"{by} narrows the {what} but it persists"
    return f"the {what} persists ({by} does not narrow it)"


def _gaps(main, dxp, ds, bb, m):
    """(D-gap Many − Few, P-gap within D-Few P-Many − P-Few) of one row, None where absent."""
    a, b = _get(main, ds, bb, m, "many_mean"), _get(main, ds, bb, m, "few_mean")
    pa, pb = (_get(dxp, ds, bb, m, "dp_few_p_many_mean"),
              _get(dxp, ds, bb, m, "dp_few_p_few_mean"))
    return (None if a is None or b is None else a - b,
            None if pa is None or pb is None else pa - pb)


def gap_lines(main: pd.DataFrame, dxp: pd.DataFrame | None, ds: str) -> list[str]:
    """Per backbone and track: the D-gap and the P-gap before re-balancing (zero-shot, CE)
    and after it (LA on frozen features; AdaptFormer-LA fine-tuned), with a verdict."""
    lines = []
    singles = [b for b in dict.fromkeys(main.loc[main["dataset"] == ds, "backbone"])
               if b != "ensemble"]
    for track, after in TRACKS:
        for bb in singles:
            if _get(main, ds, bb, after, "top1_mean") is None:
                continue
            methods = (*BEFORE, after)
            d, p = {}, {}
            for m in methods:
                d[m], p[m] = _gaps(main, dxp, ds, bb, m)
            parts_d = [f"{fmt.display_name(m)} {d[m]:+.1f}" for m in methods if d[m] is not None]
            parts_p = [f"{fmt.display_name(m)} {p[m]:+.1f}" for m in methods if p[m] is not None]
            by = fmt.display_name(after)
            ref = "ce" if d.get("ce") is not None else "zero_shot"
            text = f"**{bb}**, {track}: D-gap (Many − Few) " + ", ".join(parts_d)
            if (v := _verdict(d.get(ref), d.get(after), "D-gap", by)):
                text += f" — {v}"
            text += "; P-gap within D-Few (P-Many − P-Few) " + (", ".join(parts_p) or
                                                                 "n/a (no estimated prior)")
            pref = "zero_shot" if p.get("zero_shot") is not None else "ce"
            if (v := _verdict(p.get(pref), p.get(after), "P-gap", by)):
                text += f" — {v}"
            lines.append(text + ".")
    return lines


def backdoor_lines(sig: pd.DataFrame | None, main: pd.DataFrame, ds: str) -> list[str]:
    lines = []
    if sig is not None and not sig.empty:
        s = sig[sig["dataset"] == ds]
        best = s[s["kind"] == "backdoor_vs_best_member"]
        gain = None
        if len(best):
            r = best.iloc[0]
            gain = r["diff"]
            sig_txt = "significant" if r["significant"] else "not significant"
            lines.append(f"**Backdoor gain** over its {r['b_label']}: {r['diff']:+.2f} points "
                         f"top-1 (95 % paired bootstrap interval [{r['lo']:+.2f}, "
                         f"{r['hi']:+.2f}], {sig_txt}; backdoor {r['a_top1']:.1f} vs "
                         f"{r['b_top1']:.1f}, {int(r['n_seeds'])} seed(s)).")
        for _, r in s[s["kind"] == "control_vs_backdoor"].iterrows():
            on = f" on {r['a_backbone']}" if r.get("a_backbone") not in (None, "ensemble") else ""
            text = (f"Control **{fmt.display_name(r['a_method'])}**{on} vs backdoor: "
                    f"{r['diff']:+.2f} [{r['lo']:+.2f}, {r['hi']:+.2f}]")
            if gain is not None and len(best) and abs(gain) > 1e-9:
                share = (r["a_top1"] - best.iloc[0]["b_top1"]) / gain
                text += f"; it reaches {100 * share:.0f} % of the backdoor's gain"
            lines.append(text + ".")
        if lines:
            return lines
    bd = _get(main, ds, "ensemble", "backdoor", "top1_mean")
    la = main[(main["dataset"] == ds) & (main["method"] == AFTER) &
              (main["backbone"] != "ensemble")]
    if bd is not None and len(la):
        i = la["top1_mean"].idxmax()
        lines.append(f"**Backdoor gain** over the best single LA run (chosen on test, no "
                     f"interval: significance not computed): {bd - la.loc[i, 'top1_mean']:+.1f} "
                     f"points top-1 (backdoor {bd:.1f} vs {la.loc[i, 'backbone']} "
                     f"{la.loc[i, 'top1_mean']:.1f}).")
    return lines


def findings(main: pd.DataFrame, dxp: pd.DataFrame | None = None,
             sig: pd.DataFrame | None = None, regimes: dict[str, str] | None = None) -> str:
    """The findings section as Markdown; ``regimes``: the toy world's regime by dataset."""
    out = ["# Findings", "",
           "Generated from main.csv, dxp.csv and significance.csv (points of top-1, means "
           f"over seeds). A gap below {CLOSE_TOL:g} point after re-balancing counts as "
           "closed.", ""]
    for ds in dict.fromkeys(main["dataset"]):
        out += [f"## {ds}", ""]
        if (regime := (regimes or {}).get(ds)):
            out += [f"Toy-world regime **{regime}**: {REGIMES.get(regime, 'unknown regime')}.",
                    ""]
        out += [f"- {x}" for x in gap_lines(main, dxp, ds) + backdoor_lines(sig, main, ds)]
        out.append("")
    return "\n".join(out) + "\n"


def _md_to_html(md: str) -> str:
    import re

    body, in_list = [], False
    for line in md.splitlines():
        text = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", _html.escape(line))
        if line.startswith("- ") != in_list:
            body.append("<ul>" if not in_list else "</ul>")
            in_list = not in_list
        if line.startswith("# "):
            continue  # the page title
        if line.startswith("## "):
            body.append(f"<h3>{text[3:]}</h3>")
        elif line.startswith("- "):
            body.append(f"<li>{text[2:]}</li>")
        elif line:
            body.append(f'<p class="note">{text}</p>')
    return "\n".join(body + (["</ul>"] if in_list else []))


def write_findings(main: pd.DataFrame, out_dir: Path, dxp: pd.DataFrame | None = None,
                   sig: pd.DataFrame | None = None,
                   regimes: dict[str, str] | None = None) -> str:
    md = findings(main, dxp, sig, regimes)
    out_dir = Path(out_dir)
    with atomic_path(out_dir / "findings.md") as tmp:
        tmp.write_text(md)
    with atomic_path(out_dir / "findings.html") as tmp:
        tmp.write_text(fmt.html_page("Findings", _md_to_html(md)))
    return md
