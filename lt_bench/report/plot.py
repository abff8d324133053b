"""What every figure of the report draws with: pyplot on the Agg backend in the house
style, PNG + PDF written atomically, placeholders where inputs are absent, panel grids,
log ticks and wrapped titles (``figures.py``, ``figures_dxp.py``, ``compare.py``)."""

from __future__ import annotations

import math
from pathlib import Path

from lt_bench.io import atomic_path


def pyplot():
    """matplotlib's pyplot on the Agg backend, with the house style."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"font.size": 9, "axes.titlesize": 10, "figure.dpi": 100,
                         "savefig.dpi": 150, "axes.spines.top": False,
                         "axes.spines.right": False})
    return plt


def save(fig, stem: Path | str) -> list[Path]:
    """``<stem>.png`` and ``<stem>.pdf``, written atomically; the figure is closed."""
    from matplotlib.layout_engine import ConstrainedLayoutEngine

    plt = pyplot()
    stem = Path(stem)
    out = []
    # constrained layout already fits every artist into the canvas; "tight" would measure
    # all text once more per format (measured: a third of the D×P figures' time)
    bbox = None if isinstance(fig.get_layout_engine(), ConstrainedLayoutEngine) else "tight"
    for fmt, meta in (("png", {"Software": None}), ("pdf", {"CreationDate": None})):
        path = stem.with_name(f"{stem.name}.{fmt}")
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format=fmt, bbox_inches=bbox, metadata=meta)
        out.append(path)
    plt.close(fig)
    return out


def placeholder(stem: Path | str, title: str, message: str) -> list[Path]:
    """A figure that says why the real one cannot be drawn, so the output always exists."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 2), layout="constrained")
    ax.axis("off")
    ax.set_title(title)
    ax.text(0.5, 0.5, message, ha="center", va="center", wrap=True, transform=ax.transAxes)
    return save(fig, stem)


def panel_grid(n: int, width: float = 4.2, height: float = 3.4, sharey: bool = True):
    """A figure of ``n`` panels, at most three a row; returns (figure, the n axes)."""
    plt = pyplot()
    cols = min(n, 3)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols, height * rows), squeeze=False,
                             sharey=sharey, layout="constrained")
    for ax in axes.flat[n:]:
        ax.axis("off")
    return fig, list(axes.flat[:n])


def log_ticks(ax) -> None:
    """Readable log ticks on x: majors at 1, 2, 5 × 10^k, no minor labels (they overlapped
    on axes spanning less than two decades)."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0), numticks=8))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.2g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.tick_params(axis="x", labelsize=7)


def wrap_title(text: str, width_in: float, fontsize: float) -> str:
    """``text`` broken into lines that fit ``width_in`` inches at ``fontsize`` points (an
    average glyph of DejaVu Sans is ~0.55 em wide; 0.9 of the width for the margins)."""
    import textwrap

    per_line = max(20, int(0.9 * width_in * 72 / (0.55 * fontsize)))
    return textwrap.fill(text, per_line)
