"""Which runs the report stands on: the workflow's runs index and the runs a verb is given.

``{runs_root}/{dataset}/index.txt`` (rule ``runs_index``, from ``Plan.dataset_runs``) lists
the suite's runs of a dataset, one ``metrics.json`` per line; the report verbs without
``--metrics`` read it where it exists, so the tables by hand equal the workflow's
(docs/architecture.md §3.5).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from lt_bench.errors import MissingInputError
from lt_bench.runs.layout import METRICS_JSON, RUN_DIR, below, coordinates, find_run_dirs

log = logging.getLogger(__name__)

#: the workflow's list of a dataset's runs (rule runs_index): runs_root/{dataset}/index.txt
RUNS_INDEX = "index.txt"


def write_runs_index(metrics_files: list[str], out: str | os.PathLike) -> None:
    """``{runs_root}/{dataset}/index.txt``: the suite's runs of a dataset, one metrics.json
    per line (lt_bench.plan.Plan.dataset_runs; the workflow's rule runs_index)."""
    from lt_bench.io import write_text

    write_text(out, "".join(f"{f}\n" for f in metrics_files))


def read_runs_index(index: str | os.PathLike, runs_root: str | os.PathLike) -> list[Path]:
    """The run folders an index lists, found below ``runs_root`` (lines are
    ``results/runs/{dataset}/{backbone}/{method}/seed{s}/metrics.json`` as the workflow
    names them: found again wherever the project is now)."""
    lines = Path(index).read_text(encoding="utf-8").splitlines()
    return [below(runs_root, line.strip()) for line in lines if line.strip()]


def report_run_dirs(runs_root: str | os.PathLike) -> list[Path]:
    """The finished runs the report stands on when no list is given: per dataset, the runs
    of the workflow's ``index.txt`` where there is one, else every finished run.

    The one decision that makes `lt-bench tables` (significance, figures, ingest) by hand
    agree with the workflow: the suite's runs only. The same-backbone control's member
    runs at extra seeds (la at s + 1000, s + 2000) are finished runs too, but inputs of that
    ensemble, not rows of the tables (they would triple the LA row's seeds)."""
    runs_root = Path(runs_root)
    by_dataset: dict[str, list[Path]] = {}
    for d in find_run_dirs(runs_root):
        by_dataset.setdefault(coordinates(d).dataset, []).append(d)
    out: list[Path] = []
    for dataset, dirs in sorted(by_dataset.items()):
        index = runs_root / dataset / RUNS_INDEX
        if not index.is_file():
            out += dirs
            continue
        finished = set(dirs)
        listed = read_runs_index(index, runs_root)
        missing = [d for d in listed if d not in finished]
        if missing:
            log.warning("%s lists %d run(s) that are not finished, e.g. %s; the tables by "
                        "hand leave them out", index, len(missing), missing[0])
        out += [d for d in listed if d in finished]
    return out


def selected_run_dirs(metrics: list[str] | None, runs_root: str | os.PathLike,
                      dataset: str | None = None) -> list[Path]:
    """The runs a verb acts on: explicit ``metrics.json`` files (the workflow lists them), or
    the report's runs under ``runs_root`` (of ``dataset``; :func:`report_run_dirs`); an
    error when there is none."""
    if metrics:
        return [Path(m).parent for m in metrics]
    dirs = [d for d in report_run_dirs(runs_root)
            if dataset is None or coordinates(d).dataset == dataset]
    if not dirs:
        raise MissingInputError(
            f"no finished runs ({METRICS_JSON}) under {runs_root}"
            + (f" for dataset {dataset!r}" if dataset else "")
            + f"; expected run folders {RUN_DIR}")
    return dirs
