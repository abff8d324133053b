"""``predictor.json``, the file of a run folder that says how to rebuild its logits: its one
writer, its one reader and the one registry of its kinds (docs/architecture.md §4).

Every kind of run writes it through :func:`write_predictor_spec` (heads and k-NN on the
methods floor, fine-tunings and ensembles on the runs floor), so it sits below both. Its
``kind`` names an entry of :data:`PREDICTOR_KINDS`, each registered here by name
(``"module:attr"``) and imported on first lookup: a kind lives with the code that computes
it (a higher floor; the ensemble's module imports scipy) without this module importing it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lt_bench.errors import InputValidationError, MissingInputError
from lt_bench.io import read_json, write_json
from lt_bench.registry import Registry

#: the file's name in a run folder
PREDICTOR_JSON = "predictor.json"

#: kind -> ``load(folder)``. ``folder`` is the run's folder, ``os.PathLike``: a
#: :class:`lt_bench.runs.run_folder.RunFolder` when opened through it (then also carrying
#: the read ``predictor_spec`` and ``config``), so a loader written for a path works too.
#: A kind that acts on features (linear, knn) returns a predictor with ``logits(features)``,
#: which the run folder applies to its features folder; every other kind returns the seam
#: itself, an object with ``split_logits(split)``.
PREDICTOR_KINDS: Registry[Any] = Registry("predictor kind")
for _kind, _target in {
    "linear": "lt_bench.methods._predictor:load_linear",  # heads, zero-shot, post-hoc
    "knn": "lt_bench.methods.knn:load_knn",
    "finetuned": "lt_bench.runs.predictors:FinetunedRun.from_folder",
    "stored": "lt_bench.runs.predictors:StoredRun",  # val/test logits of older run folders
    "ensemble": "lt_bench.runs.ensemble:EnsembleRun.from_folder",
}.items():
    PREDICTOR_KINDS.add_lazy(_kind, _target)
#: the kinds that act on features (the rest return the seam)
FEATURE_KINDS = ("linear", "knn")


def write_predictor_spec(run_dir: str | Path, spec: dict[str, Any]) -> Path:
    """Write ``spec`` as the ``predictor.json`` of the run folder ``run_dir`` (atomically):
    the one writer, for every kind. ``spec["kind"]`` must be a registered kind."""
    kind = spec.get("kind")
    if kind not in PREDICTOR_KINDS:  # the predictor's code picks the kind: a bug, not an input
        raise AssertionError(f"{run_dir}: predictor kind {kind!r} is not registered; valid "
                             f"predictor kinds: {', '.join(PREDICTOR_KINDS.names())}")
    path = Path(run_dir) / PREDICTOR_JSON
    write_json(path, spec)
    return path


def read_predictor_spec(run_dir: str | Path) -> dict[str, Any]:
    """The ``predictor.json`` of the run folder ``run_dir``: the one reader. A folder
    without one is not a finished run (FileNotFoundError); one without a ``kind`` is
    refused in one line."""
    path = Path(run_dir) / PREDICTOR_JSON
    if not path.is_file():
        raise MissingInputError(f"{run_dir}: no {PREDICTOR_JSON}; is this a finished run "
                                "folder?")
    spec = read_json(path)
    if not isinstance(spec, dict) or not isinstance(spec.get("kind"), str):
        raise InputValidationError(f"{path}: no predictor 'kind'; expected one of "
                                   f"{', '.join(PREDICTOR_KINDS.names())}")
    return spec


def predictor_spec_of(folder) -> dict[str, Any]:
    """The predictor spec of ``folder``: the one its RunFolder read, or read now."""
    spec = getattr(folder, "predictor_spec", None)
    return spec if spec is not None else read_predictor_spec(Path(folder))


def load_predictor(folder):
    """What the run at ``folder`` saved to rebuild its logits, by its predictor kind: a
    features predictor (``logits(features)``) or, for the other kinds, the seam object."""
    return PREDICTOR_KINDS.get(predictor_spec_of(folder)["kind"])(folder)
