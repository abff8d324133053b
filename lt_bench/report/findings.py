"""The findings section, generated from the tables, never written by hand.

Per dataset, single backbone and track: the **D-gap** (Many − Few top-1) and the
**P-gap** inside the Few data group (Few/P-Many − Few/P-Few of the D×P table) of
zero-shot, CE and the re-balanced method (LA; AdaptFormer-LA when fine-tuned). Each verdict
compares like with like: the re-balanced method against the track's CE, on the same gap,
and says so. Then **each backdoor's gain** over its own best single member chosen on val
with its paired bootstrap interval, and each ensemble control against the frozen-feature
backdoor (with the share of the backdoor's gain it reaches, only where that gain is
significantly positive). Every number is read from ``main.csv``,
``dxp.csv`` and ``significance.csv`` (the tables' means, points of top-1), so the text
and the tables agree.
"""

from __future__ import annotations

import html as _html
from pathlib import Path

import pandas as pd

from lt_bench.io import atomic_path
from lt_bench.report import format as fmt
from lt_bench.report.significance import BACKDOORS, CONTROLLED
from lt_bench.runs.layout import ENSEMBLE_BACKBONE, is_ensemble_backbone

AFTER = "la"
#: per track: (name, its CE reference runs in order of preference, its re-balanced method).
#: The fine-tuning track is judged against fine-tuned CE where it ran (AdaptFormer-CE),
#: else against the frozen CE head, and the sentence says which.
TRACKS = (("frozen heads", ("ce",), "la"),
          ("fine-tuning", ("adaptformer_ce", "ce"), "adaptformer_la"))
CLOSE_TOL = 1.0  # points: a gap this small counts as closed; changes this small as none
#: what each toy-world regime means (lt_bench/data/toy.py), for the findings' first line
REGIMES = {
    "compositional": "classes are compositions of shared attributes, so a class rare in "
                     "pre-training still gets good features from its common parts: the "
                     "inherited imbalance lives in the logits",
    "representation": "classes carry class-specific detail that only pre-training pairs of "
                      "that class teach, so a class rare in pre-training also gets a worse "
                      "representation (the paper's regime)",
}


def num(x: float, digits: int = 1, sign: bool = True) -> str:
    """``x`` at ``digits`` decimals, never ``-0.0`` (a value that rounds to zero is 0)."""
    if sign:
        return fmt.signed(x, digits)
    return f"{round(float(x), digits) + 0.0:.{digits}f}"  # + 0.0 turns -0.0 into 0.0


def _get(table: pd.DataFrame | None, ds, bb, method, col):
    if table is None or table.empty or col not in table.columns:
        return None
    hit = table[(table["dataset"] == ds) & (table["backbone"] == bb) & (table["method"] == method)]
    if hit.empty or pd.isna(hit.iloc[0][col]):
        return None
    return float(hit.iloc[0][col])


def verdict(before: float | None, after: float | None, what: str, by: str, ref: str) -> str:
    """How ``by`` changes the gap ``what`` of ``ref`` (the same gap, the same backbone):
    the sentence names the reference and gives both values."""
    if before is None or after is None:
        return ""
    values = f"{num(before)} → {num(after)}"
    small_before, small_after = abs(before) < CLOSE_TOL, abs(after) < CLOSE_TOL
    if small_before and small_after:
        return f"neither {ref} nor {by} has a {what} ({values})"
    if small_after:
        return f"against {ref}, {by} closes the {what} ({values})"
    if small_before:
        return f"against {ref}, {by} opens a {what} ({values})"
    if (before > 0) != (after > 0):
        return f"against {ref}, {by} reverses the {what} ({values})"
    if abs(abs(after) - abs(before)) < CLOSE_TOL:
        return f"against {ref}, {by} leaves the {what} about unchanged ({values})"
    if abs(after) < abs(before):
        return f"against {ref}, {by} narrows the {what} but it persists ({values})"
    return f"against {ref}, {by} widens the {what} ({values})"


def _gaps(main, dxp, ds, bb, m):
    """(D-gap Many − Few, P-gap within D-Few P-Many − P-Few) of one row, None where absent."""
    a, b = _get(main, ds, bb, m, "many_mean"), _get(main, ds, bb, m, "few_mean")
    pa, pb = (_get(dxp, ds, bb, m, "dp_few_p_many_mean"),
              _get(dxp, ds, bb, m, "dp_few_p_few_mean"))
    return (None if a is None or b is None else a - b,
            None if pa is None or pb is None else pa - pb)


def gap_lines(main: pd.DataFrame, dxp: pd.DataFrame | None, ds: str) -> list[str]:
    """Per backbone and track: the D-gap and the P-gap of zero-shot, the track's CE and its
    re-balanced method (LA on frozen features; AdaptFormer-LA fine-tuned); each verdict
    compares the re-balanced method with the same CE row on the same gap."""
    lines = []
    singles = [b for b in dict.fromkeys(main.loc[main["dataset"] == ds, "backbone"])
               if not is_ensemble_backbone(b)]
    for track, ces, after in TRACKS:
        for bb in singles:
            if _get(main, ds, bb, after, "top1_mean") is None:
                continue
            ce = next((c for c in ces if _get(main, ds, bb, c, "top1_mean") is not None),
                      None)
            methods = [m for m in dict.fromkeys(("zero_shot", ce, after)) if m]
            d, p = {}, {}
            for m in methods:
                d[m], p[m] = _gaps(main, dxp, ds, bb, m)
            by = fmt.display_name(after)
            # the reference: the track's CE (same training, no re-balancing) for both gaps;
            # zero-shot only where no CE ran. A gap the reference lacks gets no verdict.
            ref = ce or "zero_shot"
            ref_name = fmt.display_name(ref) + (" (frozen head)" if ref == "ce" and
                                                after != AFTER else "")
            parts_d = [f"{fmt.display_name(m)} {num(d[m])}" for m in methods
                       if d[m] is not None]
            parts_p = [f"{fmt.display_name(m)} {num(p[m])}" for m in methods
                       if p[m] is not None]
            text = f"**{bb}**, {track}: D-gap (Many − Few) " + (
                ", ".join(parts_d) or "n/a (no class in the Many or the Few group)")
            if (v := verdict(d.get(ref), d.get(after), "D-gap", by, ref_name)):
                text += f" — {v}"
            text += "; P-gap within D-Few (P-Many − P-Few) " + (", ".join(parts_p) or
                                                                 "n/a (no estimated prior)")
            if (v := verdict(p.get(ref), p.get(after), "P-gap", by, ref_name)):
                text += f" — {v}"
            lines.append(text + ".")
    return lines


def _share_text(control_top1: float, best_top1: float, gain: float, gain_sig: bool) -> str:
    """Where a control lands between the backdoor's best member and the backdoor: only
    where the backdoor's gain is positive and its interval excludes 0 (a share of a gain
    that may be zero or negative means nothing)."""
    if not gain_sig or gain <= 0:
        return ""
    over = control_top1 - best_top1
    if over <= 0:
        return (f"; it does not beat the backdoor's best member "
                f"({num(control_top1, sign=False)} vs {num(best_top1, sign=False)})")
    share = over / gain
    if share >= 1:
        return "; it matches or exceeds the backdoor's gain over its best member"
    return f"; it reaches {100 * share:.0f} % of the backdoor's gain over its best member"


def backdoor_lines(sig: pd.DataFrame | None, main: pd.DataFrame, ds: str) -> list[str]:
    """Each backdoor's gain over its own best member (chosen on val, per track) with its
    interval; each control against the frozen-feature backdoor."""
    lines = []
    if sig is not None and not sig.empty:
        s = sig[sig["dataset"] == ds]
        best = s[s["kind"] == "backdoor_vs_best_member"]
        for _, r in best.iterrows():
            sig_txt = "significant" if r["significant"] else "not significant"
            track = BACKDOORS.get(r["a_method"], "")
            lines.append(f"**Backdoor gain**{f' ({track})' if track else ''}: "
                         f"{fmt.display_name(r['a_method'])} over its "
                         f"{r['b_label']}: {num(r['diff'], 2)} points top-1 (95 % paired "
                         f"bootstrap interval [{num(r['lo'], 2)}, {num(r['hi'], 2)}], "
                         f"{sig_txt}; backdoor {num(r['a_top1'], sign=False)} vs "
                         f"{num(r['b_top1'], sign=False)}, {int(r['n_seeds'])} seed(s)).")
        ref = best[best["a_method"] == CONTROLLED]
        for _, r in s[s["kind"] == "control_vs_backdoor"].iterrows():
            bb = r.get("a_backbone")
            on = f" on {bb}" if bb is not None and not is_ensemble_backbone(bb) else ""
            sig_txt = "significant" if r["significant"] else "not significant"
            text = (f"Control **{fmt.display_name(r['a_method'])}**{on} vs "
                    f"{fmt.display_name(r['b_method'])}: {num(r['diff'], 2)} points top-1 "
                    f"[{num(r['lo'], 2)}, {num(r['hi'], 2)}], {sig_txt}")
            if len(ref):
                g = ref.iloc[0]
                text += _share_text(r["a_top1"], g["b_top1"], g["diff"], bool(g["significant"]))
            lines.append(text + ".")
        if lines:
            return lines
    la = main[(main["dataset"] == ds) & (main["method"] == AFTER) &
              ~main["backbone"].map(is_ensemble_backbone)]
    bd = _get(main, ds, ENSEMBLE_BACKBONE, "backdoor", "top1_mean")
    if bd is not None and len(la):
        i = la["top1_mean"].idxmax()
        lines.append(f"**Backdoor gain** over the best single LA run (chosen on test, no "
                     f"interval: significance not computed): "
                     f"{num(bd - la.loc[i, 'top1_mean'])} points top-1 (backdoor "
                     f"{num(bd, sign=False)} vs {la.loc[i, 'backbone']} "
                     f"{num(la.loc[i, 'top1_mean'], sign=False)}).")
    return lines


def findings(main: pd.DataFrame, dxp: pd.DataFrame | None = None,
             sig: pd.DataFrame | None = None, regimes: dict[str, str] | None = None) -> str:
    """The findings section as Markdown; ``regimes``: the toy world's regime by dataset."""
    out = ["# Findings", "",
           "Generated from main.csv, dxp.csv and significance.csv (points of top-1, means "
           f"over seeds). Verdicts compare the re-balanced method with the same track's CE on "
           f"the same gap; a gap below {CLOSE_TOL:g} point counts as closed and a change "
           f"below {CLOSE_TOL:g} point as none.", ""]
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
