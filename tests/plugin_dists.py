"""Installed plugins for the tests, for real: distributions that ``importlib.metadata``
discovers through their ``.dist-info/entry_points.txt`` on ``sys.path``.

``fake_dist`` writes a one-module distribution into a folder (as pip would lay it out in a
site-packages); ``broken_methods_plugin`` puts one whose import fails onto ``sys.path`` and
makes METHODS load its plugins again (:func:`unbreak` undoes it), so the CLI meets it as a
user with a broken installation would."""

from __future__ import annotations

import sys
from pathlib import Path

from lt_bench.methods import METHODS

BROKEN_DIST = "lt-bench-broken-plugin"


def fake_dist(site: Path, dist: str, entry_points: dict[str, dict[str, str]],
              modules: dict[str, str]) -> Path:
    """A distribution ``dist`` in ``site``: its modules and a dist-info with entry points
    (``{group: {name: "module[:attr]"}}``)."""
    site.mkdir(parents=True, exist_ok=True)
    for name, code in modules.items():
        (site / f"{name}.py").write_text(code)
    info = site / f"{dist.replace('-', '_')}-0.1.dist-info"
    info.mkdir(exist_ok=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("".join(
        f"[{group}]\n" + "".join(f"{k} = {v}\n" for k, v in eps.items()) + "\n"
        for group, eps in entry_points.items()))
    return site


def _reload(registry) -> None:
    registry._plugins_loaded = False
    registry._broken = []


def broken_methods_plugin(site: Path) -> Path:
    """A method plugin whose module imports a package that is not installed."""
    fake_dist(site, BROKEN_DIST, {"lt_bench.methods": {"broken": "lt_bench_broken_plugin"}},
              {"lt_bench_broken_plugin": "import lt_bench_no_such_dependency\n"})
    sys.path.insert(0, str(site))
    _reload(METHODS)
    return site


def unbreak(site: Path) -> None:
    if str(site) in sys.path:
        sys.path.remove(str(site))
    _reload(METHODS)
