"""Copy the workflow (Snakefile, config, rules, profiles) somewhere else to run it there.

Used by the end-to-end tests and the benchmarks, which run the real workflow in
throw-away directories so they never touch the checkout's ``results/``.
"""

from __future__ import annotations

import shutil
from pathlib import Path

#: the checkout this package is installed from (editable install)
REPO = Path(__file__).resolve().parents[1]


def copy_workflow(dest: Path, repo: Path = REPO) -> Path:
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    for name in ("Snakefile", "config.yaml"):
        shutil.copy(repo / name, dest / name)
    for name in ("workflow", "profiles"):
        shutil.copytree(repo / name, dest / name, dirs_exist_ok=True)
    return dest
