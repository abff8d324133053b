"""Where run folders live: the one owner of the path layout (docs/architecture.md §3.5).

``results/runs/{dataset}/{backbone}/{method}/seed{seed}/``; runs that combine several
backbones are filed under the backbone :data:`ENSEMBLE_BACKBONE`. The workflow's paths
(``lt_bench.plan``), the runs index, the report and tracking build and parse run folder
paths only through these functions. No heavy import: planning uses this module.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple

#: the runs root as the workflow names it, relative to the project folder
RUNS_ROOT = "results/runs"
#: the backbone under which runs over several backbones (the backdoor, its controls) are
#: filed; a run on one backbone that combines several runs of it (the same-backbone
#: control) keeps its backbone (``RunFolder.is_ensemble`` says whether a run combines runs)
ENSEMBLE_BACKBONE = "ensemble"
CONFIG_JSON = "config.json"
#: written last: its presence marks a finished run
METRICS_JSON = "metrics.json"
#: a run folder below a runs root
RUN_DIR = "{dataset}/{backbone}/{method}/seed{seed}"
#: the glob of every finished run below a runs root
_FINISHED_GLOB = f"*/*/*/seed*/{METRICS_JSON}"


def run_dir(dataset: str, backbone: str, method: str, seed: int | str,
            root: str | os.PathLike = RUNS_ROOT) -> Path:
    """The run folder of (dataset, backbone, method, seed) below ``root``."""
    return Path(root) / RUN_DIR.format(dataset=dataset, backbone=backbone, method=method,
                                       seed=seed)


def metrics_path(run_path: str | os.PathLike) -> Path:
    return Path(run_path) / METRICS_JSON


def config_path(run_path: str | os.PathLike) -> Path:
    return Path(run_path) / CONFIG_JSON


def is_ensemble_backbone(backbone: str) -> bool:
    """Whether ``backbone`` (a table's backbone column) is the one of runs over several
    backbones."""
    return backbone == ENSEMBLE_BACKBONE


class Coordinates(NamedTuple):
    """What a run folder's path says: the ``runs_root`` it is found below and its place."""

    runs_root: Path
    dataset: str
    backbone: str
    method: str
    seed: str


def coordinates(run_path: str | os.PathLike) -> Coordinates:
    """(runs_root, dataset, backbone, method, seed) read off a path laid out as
    :func:`run_dir` lays it out (``seed`` without its prefix)."""
    p = Path(run_path)
    return Coordinates(p.parents[3], p.parts[-4], p.parts[-3], p.parts[-2],
                       p.name.removeprefix("seed"))


def below(runs_root: str | os.PathLike, recorded: str | os.PathLike) -> Path:
    """The run folder a recorded path (a run folder, or its metrics.json, as the workflow
    names it: ``results/runs/{dataset}/{backbone}/{method}/seed{s}[/metrics.json]``) is
    below ``runs_root``, wherever the project is now."""
    p = Path(recorded)
    if p.name == METRICS_JSON:
        p = p.parent
    return Path(runs_root).joinpath(*p.parts[-4:])


def find_run_dirs(runs_root: str | os.PathLike) -> list[Path]:
    """Every finished run folder under ``runs_root`` (those with a metrics.json), sorted."""
    return sorted(p.parent for p in Path(runs_root).glob(_FINISHED_GLOB))


def project_root_of(run_path: str | os.PathLike) -> Path | None:
    """The folder holding ``results/`` for a run folder laid out as ``run_dir`` says."""
    p = Path(run_path).absolute()
    root = Path(RUNS_ROOT)
    if len(p.parts) > 6 and p.parents[3].name == root.name \
            and p.parents[4].name == root.parent.name:
        return p.parents[5]
    return None


def resolve_recorded(path: str | os.PathLike, run_path: str | os.PathLike) -> Path:
    """A path recorded in a run's config.json, found again: as recorded where absolute;
    a relative one is relative to the run's own project root (the folder holding its
    ``results/runs``, the workflow's working directory), else to the working directory —
    so ``lt-bench logits`` works from any folder and after the project folder moved, and
    never picks up another project's files that happen to sit at the same relative path
    under the working directory."""
    p = Path(path)
    if p.is_absolute():
        return p
    root = project_root_of(run_path)
    return root / p if root is not None else p


def logits_path(run_path: str | os.PathLike, split: str) -> Path:
    """Stored val/test logits (run folders of earlier versions: predictor kind ``stored``)."""
    return Path(run_path) / f"logits_{split}.parquet"


def run_features_path(run_path: str | os.PathLike, split: str) -> Path:
    """A fine-tuning's stored pre-head features of ``split``."""
    return Path(run_path) / f"features_{split}.parquet"


def predictions_path(run_path: str | os.PathLike, split: str) -> Path:
    """A run's stored per-image arg-max of its ``split`` logits (``runs.stored``)."""
    return Path(run_path) / f"predictions_{split}.parquet"
