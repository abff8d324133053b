"""A smoke run of any suite: the same DAG on a few images per class, one epoch, in its own
folder (README, "Before your first full run"; ``snakemake --config suite=paper smoke=true``).

Every dataset, backbone, method, seed, the fine-tuning track, the ensembles, tables and
MLflow run as in the full suite, so a smoke run that finishes has exercised every job a
full run will start. What shrinks:
- each split list keeps at most ``smoke_per_class`` images of every class (all classes
  kept, so K and the shapes of heads, priors and ensembles are the real ones);
- every method that trains gets ``epochs: 1`` (through ``method_overrides``, the one place
  per-dataset hyper-parameters are overridden);
- toy CLIPs pre-train on a few pairs for one epoch.
What does not: the backbones (real weights, real preprocessing; config-declared ones
included, their files and a declared dataset's folders taken from the project folder:
:func:`absolute_paths`), the images' layout and decoding, the Snakemake plan (its job count
equals the full plan's).

The smoke folder (``smoke_dir``, default ``results-smoke/``) is the workflow's working
directory, so its ``resources/``, ``results/`` and ``logs/`` never mix with a full run's;
its MLflow experiment is ``lt-bench/<suite>-smoke``. A folder holding a full run's results
is refused (one marker file says a folder is a smoke folder).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from lt_bench.errors import UserError

DEFAULT_DIR = "results-smoke"
#: images kept per class and split; the fewest that still leave val a per-class choice
DEFAULT_PER_CLASS = {"train": 3, "val": 2, "test": 2}
#: a toy CLIP in a smoke run: enough steps to exercise the loop, not to learn
SMOKE_PRETRAIN = {"num_pairs": 512, "epochs": 1, "eval_per_class": 2}
MARKER = ".lt-bench-smoke"
EXPERIMENT_SUFFIX = "-smoke"


class SmokeDirError(UserError):
    pass


def wants_smoke(config: dict[str, Any]) -> bool:
    """``smoke`` as a bool: ``--config smoke=true`` reaches the config as the string 'true'."""
    value = config.get("smoke", False)
    if isinstance(value, str):
        if value.lower() not in ("true", "false", "yes", "no", "1", "0", ""):
            raise UserError(f"config smoke={value!r}: expected true or false")
        return value.lower() in ("true", "yes", "1")
    return bool(value)


def per_class(config: dict[str, Any]) -> dict[str, int]:
    n = config.get("smoke_per_class")
    return dict(DEFAULT_PER_CLASS) if n is None else {s: int(n) for s in DEFAULT_PER_CLASS}


def smoke_config(config: dict[str, Any]) -> dict[str, Any]:
    """The full suite's config with a smoke run's overrides (epochs 1, tiny pre-training)."""
    from lt_bench.config import resolve_suite

    out = copy.deepcopy(config)
    overrides = out.setdefault("method_overrides", {}) or {}
    out["method_overrides"] = overrides
    for d in resolve_suite(out).datasets:
        overrides[d] = {**(overrides.get(d) or {}), "epochs": 1}
    out["toy_pretrain"] = {**(out.get("toy_pretrain") or {}), **SMOKE_PRETRAIN}
    return absolute_paths(out)


def absolute_paths(config: dict[str, Any]) -> dict[str, Any]:
    """The config's relative paths made absolute against the project folder (the current
    one): the smoke run's working directory is another folder, where a declared backbone's
    file, a declared dataset's ``split_dir``/``image_root`` or ``data_root`` would not be."""
    from lt_bench.backbones.spec import looks_like_file

    def absolute(value: str) -> str:
        return str(Path(value).expanduser().absolute())

    if config.get("data_root"):
        config["data_root"] = absolute(config["data_root"])
    for entry in (config.get("backbones") or {}).values():
        if isinstance(entry, dict) and looks_like_file(entry.get("pretrained")):
            entry["pretrained"] = absolute(entry["pretrained"])
    for params in (config.get("datasets") or {}).values():
        if isinstance(params, dict) and "type" in params:
            for key in ("split_dir", "image_root"):
                if isinstance(params.get(key), str) and params[key]:
                    params[key] = absolute(params[key])
    return config


def check_smoke_dir(path: str | Path) -> Path:
    """Refuse a folder that holds a full run's results; mark a new one as a smoke folder."""
    path = Path(path)
    marker = path / MARKER
    if path.is_dir() and not marker.is_file():
        full = [p for p in ("results/runs", "results/features", "results/mlflow", "runs",
                            "features") if (path / p).exists()]
        if full:
            raise SmokeDirError(
                f"smoke_dir {str(path)!r} holds a full run's results ({path / full[0]}); a "
                f"smoke run needs its own folder: leave smoke_dir unset ({DEFAULT_DIR}) or "
                "name an empty one")
    path.mkdir(parents=True, exist_ok=True)
    marker.write_text("this folder holds a smoke run (lt-bench, smoke=true)\n")
    return path
