"""Installed plugins for the tests, for real: distributions that ``importlib.metadata``
discovers through their ``.dist-info/entry_points.txt`` on ``sys.path``.

``fake_dist`` writes a one-module distribution into a folder (as pip would lay it out in a
site-packages); ``broken_methods_plugin`` puts one whose import fails onto ``sys.path`` and
makes METHODS load its plugins again (:func:`unbreak` undoes it), so the CLI meets it as a
user with a broken installation would."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from lt_bench.methods import METHODS

BROKEN_DIST = "lt-bench-broken-plugin"
EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "lt_bench_example_plugin"
EXAMPLE_DIST = "lt-bench-example-plugin"


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


def install_example_plugin(root: Path) -> tuple[Path, dict, Path]:
    """(python, env, root): a venv under ``root`` with the example plugin installed editable
    (``pip install -e``, as its README says); it sees this environment's packages (lt_bench
    from this checkout first, torch, open_clip, snakemake) through a .pth file, and its
    ``bin/lt-bench`` runs lt-bench with the venv's Python, so a Snakemake run with that
    Python (whose jobs call ``lt-bench`` next to it) sees the plugin in every job."""
    if subprocess.run([sys.executable, "-m", "pip", "--version"], capture_output=True
                      ).returncode != 0:
        pytest.skip("pip is not installed in the test environment")
    repo = EXAMPLE.parents[1]
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig."
                                "get_paths()['purelib'])"], capture_output=True, text=True,
                               check=True).stdout.strip())
    (site / "lt_bench_test_env.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    src = root / "example"  # a copy: the install writes nothing into the repository
    shutil.copytree(EXAMPLE, src, ignore=shutil.ignore_patterns("*.egg-info", "build"))
    r = subprocess.run([str(python), "-m", "pip", "install", "--no-deps",
                        "--no-build-isolation", "--no-index", "-e", str(src)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    script = venv / "bin" / "lt-bench"  # what pip writes for lt-bench's console script
    script.write_text(f"#!{python}\nimport sys\nfrom lt_bench.cli import main\n"
                      "sys.exit(main())\n")
    script.chmod(0o755)
    env = {**os.environ, "PYTHONPATH": str(repo), "HF_HUB_OFFLINE": "1"}
    return python, env, root
