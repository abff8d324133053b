"""How numbers and names are printed in the Markdown, LaTeX and HTML tables.

CSV files keep code identifiers (``la_posthoc``) and full-precision numbers; the paper
tables print display names (``LA (post-hoc)``) and ``mean ± std`` cells rounded to 0.1
points, with a std that stays informative when it is below that precision.
"""

from __future__ import annotations

import html
import math

TEX_NAMES = {"tau_norm": r"$\tau$-norm"}

DET_MARK = "†"  # deterministic: every seed gave the same metrics
SIG_UP, SIG_DOWN = "▲", "▼"  # bootstrap interval of the difference excludes 0
FEW_CLASSES_MARK = "°"  # a D×P cell resting on fewer than MIN_CELL_CLASSES classes
MIN_CELL_CLASSES = 10
FOOTNOTE_MARKS = "abcdefghijklmnopqrstuvwxyz"


def display_name(method: str, label: str | None = None) -> str:
    """The paper name of a method: its class's ``display`` (lt_bench/methods; a variant's
    is its ``display:`` or made from its keys, "LA (τ=0.5)"), else the code id (a method
    this process does not know, a plugin's without ``display``; code ids stay in CSV and
    MLflow); ``label``: the one its runs' hyper-parameters give (:func:`label_of`), which
    wins where there is one."""
    if isinstance(label, str) and label:
        return label
    from lt_bench.errors import UserError
    from lt_bench.methods import METHODS, display_of

    try:
        return display_of(METHODS.get(method)) if method in METHODS else method
    except UserError:  # a broken plugin: the tables still print, under code ids
        return method


def label_of(method: str, hparams: dict | None) -> str:
    """The display name of a run from the hyper-parameters that ran: the method's own
    ``label(hparams)`` where it has one (LDAM vs LDAM-DRW), else :func:`display_name`."""
    if hparams is not None:
        from lt_bench.methods import METHODS

        if method in METHODS and (label := getattr(METHODS.get(method), "label", None)):
            return label(hparams)
    return display_name(method)


def tex_escape(s: object) -> str:
    s = str(s)
    for a, b in (("\\", r"\textbackslash{}"), ("&", r"\&"), ("%", r"\%"), ("$", r"\$"),
                 ("#", r"\#"), ("_", r"\_"), ("{", r"\{"), ("}", r"\}")):
        s = s.replace(a, b)
    for a, b in (("τ", r"$\tau$"), ("±", r"$\pm$"), (DET_MARK, r"$^\dagger$"),
                 (SIG_UP, r"$^\blacktriangle$"), (SIG_DOWN, r"$^\blacktriangledown$"),
                 (FEW_CLASSES_MARK, r"$^\circ$"), ("≤", r"$\leq$"), ("<", r"$<$"),
                 (">", r"$>$"), ("Δ", r"$\Delta$"), ("−", "$-$"), ("×", r"$\times$"),
                 ("–", "--"), ("q̂", r"$\hat q$"), ("ρ", r"$\rho$")):
        s = s.replace(a, b)
    return s


def tex_name(method: str) -> str:
    return TEX_NAMES.get(method) or tex_escape(display_name(method))


def _missing(x) -> bool:
    return x is None or (isinstance(x, float) and math.isnan(x))


def std_text(std: float) -> str:
    """The std at 0.1 points, or with the digits it needs when smaller than that.

    ``0.04`` → ``0.04``; below 0.005 (invisible at two decimals) → ``<0.01``; exactly 0 → ``0``.
    A row of bit-identical seeds is marked deterministic instead (no std printed at all).
    """
    if std == 0:
        return "0"
    if std >= 0.05:
        return f"{std:.1f}"
    if std >= 0.005:
        return f"{std:.2f}"
    return "<0.01"


def cell(mean: float, std: float, bold: bool = False, style: str = "md", mark: str = "",
         show_std: bool = True) -> str:
    """``mean ± std`` (``–`` where undefined); ``mark`` goes right after the mean."""
    if _missing(mean):
        return "–" if style != "tex" else "--"
    a = f"{mean:.1f}"
    s = None if (not show_std or _missing(std)) else std_text(std)
    if style == "tex":
        a = rf"\textbf{{{a}}}" if bold else a
        a += tex_escape(mark) if mark else ""
        return a if s is None else rf"{a} $\pm$ {tex_escape(s)}"
    if style == "html":
        a = f"<b>{a}</b>" if bold else a
        a += html.escape(mark)
        return a if s is None else f"{a} ± {html.escape(s)}"
    a = f"**{a}**" if bold else a
    a += mark
    return a if s is None else f"{a} ± {s}"


def signed(x: float, digits: int = 1) -> str:
    """``x`` with its sign at ``digits`` decimals, never ``-0.0`` (rounds to zero: ``+0.0``)."""
    return f"{round(float(x), digits) + 0.0:+.{digits}f}"


def seeds_text(n_seeds: int, deterministic: bool) -> str:
    """The ``n`` column: seeds averaged, or ``1†`` where they all gave one result."""
    return f"1{DET_MARK}" if deterministic else str(int(n_seeds))


def compute_text(key: str, value) -> str:
    if _missing(value):
        return "–"
    if key == "n_trainable_params":
        v = float(value)
        for unit, div in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
            if v >= div:
                return f"{v / div:.3g}{unit}"
        return f"{v:.0f}"
    if key == "inference_cost":
        return f"{float(value):.3g}×"
    return f"{float(value):.3g}"


def html_table(header: list[str], rows: list[list[str]], caption: str = "",
               table_id: str = "", text_cols: int = 0) -> str:
    """An HTML ``<table>`` whose cells are already HTML (escaped by the caller); the first
    ``text_cols`` columns are left-aligned text that may wrap (class ``t``), so a table of
    long names still fits its pane."""
    def cls(i: int) -> str:
        return ' class="t"' if i < text_cols else ""

    out = [f'<table id="{html.escape(table_id)}">' if table_id else "<table>"]
    if caption:
        out.append(f"<caption>{caption}</caption>")
    out.append("<thead><tr>" + "".join(f"<th{cls(i)}>{h}</th>" for i, h in enumerate(header))
               + "</tr></thead>")
    out.append("<tbody>")
    for r in rows:
        out.append("<tr>" + "".join(f"<td{cls(i)}>{c}</td>" for i, c in enumerate(r))
                   + "</tr>")
    out.append("</tbody></table>")
    return "\n".join(out)


PAGE_STYLE = """
body { font-family: system-ui, sans-serif; font-size: 14px; margin: 1em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; }
caption { caption-side: top; text-align: left; font-weight: 600; padding: 0.3em 0; }
th, td { border-bottom: 1px solid #ccc; padding: 2px 8px; text-align: right;
         white-space: nowrap; }
th:nth-child(-n+2), td:nth-child(-n+2) { text-align: left; }
thead th { border-bottom: 2px solid #444; }
th.t, td.t { text-align: left; white-space: normal; min-width: 4em; max-width: 16em; }
caption { max-width: 70em; }
p.note { font-size: 12px; color: #444; max-width: 60em; }
p.headline { font-size: 14px; margin: 0.3em 0; padding: 0.3em 0.6em; max-width: 60em;
             background: #eef4fb; border-left: 3px solid #3b6ea8; }
"""


def html_page(title: str, body: str) -> str:
    """A self-contained page (no script, no external file): the report shows it in a frame."""
    return ("<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{html.escape(title)}</title><style>{PAGE_STYLE}</style></head>"
            f"<body>\n<h2>{html.escape(title)}</h2>\n{body}\n</body></html>\n")
