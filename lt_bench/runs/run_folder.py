"""One reader of a run folder: :class:`RunFolder` (docs/architecture.md §4).

Everything that reads a finished run — ``lt-bench logits``, the ensembles, the tables,
significance, findings, figures, the runs index and MLflow ingestion — opens it with
:meth:`RunFolder.open` and asks it: its identity (dataset, backbone, method, seed, read
once from ``config.json``), ``config``, ``metrics`` (``runs.folder.read_metrics``),
``consumes``, whether it is an ensemble (decided here only), its resolved members, the
member it found best, and the seam (``predictor`` / ``split_logits``) built by its
predictor kind (``lt_bench.predictor_spec.PREDICTOR_KINDS``). Provenance is checked where
it is read: a run whose recorded inputs changed is stale (:class:`StaleRunError`).
"""

from __future__ import annotations

import os
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from lt_bench.errors import InputValidationError
from lt_bench.io import read_json
from lt_bench.predictor_spec import (
    FEATURE_KINDS,
    PREDICTOR_JSON,
    load_predictor,
    read_predictor_spec,
)
from lt_bench.runs.folder import EVAL_SPLITS, SPLITS, read_metrics
from lt_bench.runs.layout import (
    CONFIG_JSON,
    METRICS_JSON,
    RUN_DIR,
    config_path,
    is_ensemble_backbone,
    metrics_path,
    predictions_path,
    resolve_recorded,
)

IDENTITY = ("dataset", "backbone", "method", "seed")


class NotARunFolderError(InputValidationError, FileNotFoundError):
    """A folder that is not a run folder where one was expected."""


class StaleRunError(InputValidationError):
    """A finished run whose recorded inputs changed since: its logits would now be other
    numbers than its metrics.json's. Reported, never silently recomputed."""


class RunFolder(os.PathLike):
    """A run folder (finished or not) as one object; ``os.PathLike``, so a predictor kind's
    loader written for a path takes it too. Open with :meth:`open`."""

    def __init__(self, path: Path, config: dict[str, Any]):
        self.path = Path(path)
        self.config = config

    @classmethod
    def open(cls, path: str | os.PathLike) -> RunFolder:
        """The run folder at ``path``; a :class:`NotARunFolderError` (one line) where it is
        none: no run's ``config.json`` (a finished run of an older layout without one is a
        run folder by its ``metrics.json``)."""
        if isinstance(path, RunFolder):
            return path
        path = Path(path)
        cfg = config_path(path)
        if cfg.is_file():
            config = read_json(cfg)
            if not (isinstance(config, dict) and {"method", "dataset"} <= set(config)):
                raise NotARunFolderError(f"{cfg}: not a run's {CONFIG_JSON} (no 'method' and "
                                         f"'dataset'); expected a run folder {RUN_DIR} "
                                         "written by lt-bench")
            return cls(path, config)
        if metrics_path(path).is_file():
            return cls(path, {})
        raise NotARunFolderError(f"{path}: not a run folder (no {CONFIG_JSON}); expected a "
                                 f"run folder {RUN_DIR} written by lt-bench fit/combine/finetune")

    def __fspath__(self) -> str:
        return str(self.path)

    def __str__(self) -> str:
        return str(self.path)

    def __repr__(self) -> str:
        return f"RunFolder({str(self.path)!r})"

    # --- identity and files -----------------------------------------------------------------

    def _ident(self, key: str):
        v = self.config.get(key)
        return v if v is not None or not self.finished else self.metrics.get(key)

    @property
    def dataset(self) -> str:
        return self._ident("dataset")

    @property
    def backbone(self) -> str:
        return self._ident("backbone")

    @property
    def method(self) -> str:
        return self._ident("method")

    @property
    def seed(self):
        return self._ident("seed")

    @property
    def identity(self) -> dict[str, Any]:
        """dataset, backbone, method, seed (a key missing from config.json and metrics.json
        is None)."""
        return {k: self._ident(k) for k in IDENTITY}

    @property
    def hparams(self) -> dict[str, Any] | None:
        return self.config.get("hparams")

    @property
    def finished(self) -> bool:
        return metrics_path(self.path).is_file()

    @cached_property
    def metrics(self) -> dict[str, Any]:
        """``metrics.json`` (an error naming the run where it is unfinished or malformed)."""
        return read_metrics(self.path)

    @cached_property
    def predictor_spec(self) -> dict[str, Any]:
        return read_predictor_spec(self.path)

    @property
    def consumes(self) -> str:
        """What the run's method consumed: "features", "runs" or "images"."""
        if self.config.get("consumes"):
            return self.config["consumes"]
        spec = self.predictor_spec  # run folders that did not record it
        if spec["kind"] in FEATURE_KINDS:
            return "features"
        if spec["kind"] == "ensemble" or spec.get("source"):
            return "runs"
        return "images"

    # --- members ----------------------------------------------------------------------------

    @cached_property
    def member_paths(self) -> list[Path]:
        """The member run folders recorded in config.json (``members``), resolved
        (``layout.resolve_recorded``), in the recorded order; [] for a run of no runs."""
        recorded = self.config.get("members")
        if not self.config and (self.path / PREDICTOR_JSON).is_file():  # an older layout
            recorded = self.predictor_spec.get("members")
        return [resolve_recorded(m["run_dir"] if isinstance(m, dict) else m, self.path)
                for m in recorded or []]

    @property
    def is_ensemble(self) -> bool:
        """Whether the run combines several runs' logits: a run over backbones (filed
        under ``layout.ENSEMBLE_BACKBONE``) or several runs of one backbone (the
        same-backbone control, filed under its backbone). A run that reports another view
        of one fine-tuning (one member) is not. The one decision of it."""
        return is_ensemble_backbone(self.backbone) or len(self.member_paths) > 1

    @cached_property
    def members(self) -> list[RunFolder]:
        """The member runs, opened; an error naming the member that is gone."""
        out = []
        for m in self.member_paths:
            if not m.is_dir():
                raise InputValidationError(
                    f"{self.path}: member run folder {m} not found ({CONFIG_JSON} "
                    "'members'); expected a finished run folder")
            out.append(RunFolder.open(m))
        return out

    def best_member(self, on: str = "val") -> RunFolder | None:
        """The member best on ``on``: "val" (the member the run would choose) or "test"
        (the oracle). Read from ``metrics["best_member"][on]`` (an index into
        :attr:`members`) where the run recorded it, else the member with the highest
        ``val_top1`` / ``top1`` (ties: the first); None without members or numbers."""
        if on not in ("val", "test"):
            raise AssertionError(f"best_member: on {on!r}; valid: val, test")
        recorded = self.metrics.get("best_member") if self.finished else None
        if isinstance(recorded, dict) and recorded.get(on) is not None:
            return self.members[int(recorded[on])]
        key = "val_top1" if on == "val" else "top1"
        scored = [(m.metrics.get(key), i) for i, m in enumerate(self.members)
                  if m.metrics.get(key) is not None]
        if not scored:
            return None
        return self.members[max(scored, key=lambda t: (t[0], -t[1]))[1]]

    # --- the seam -----------------------------------------------------------------------------

    @cached_property
    def predictor(self):
        """The object behind the seam (``split_logits(split) -> (labels, logits)``), built
        by the run's predictor kind; its recorded inputs are checked first (stale runs are
        refused)."""
        if self.predictor_spec["kind"] not in FEATURE_KINDS:
            return load_predictor(self)
        if not self.config.get("features_dir"):
            raise InputValidationError(f"{self.path}: a features predictor but {CONFIG_JSON} "
                                       "records no features folder")
        return FeatureRun(self)

    def split_logits(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        """(labels, logits) of the run on ``split``, in split-list order."""
        if split not in SPLITS:
            raise InputValidationError(f"unknown split {split!r}; valid: {', '.join(SPLITS)}")
        return self.predictor.split_logits(split)

    def predictions(self, split: str = "test") -> tuple[np.ndarray, np.ndarray]:
        """(labels, predicted class) of the run on ``split`` (val or test), int64, in
        split-list order: the arg-max of the logits its metrics were computed from, stored
        by ``write_run`` (``predictions_{split}.parquet``) so that readers needing only
        right/wrong per image (significance, compare) never rebuild K-wide logits. The
        run is checked fresh first, as the seam checks it. A run folder written before
        the file existed: ``numpy.argmax`` of the seam's logits (the same numbers: ties
        to the first class either way)."""
        from lt_bench.runs.stored import read_predictions

        if split not in EVAL_SPLITS:
            raise InputValidationError(f"predictions of split {split!r}; valid: "
                                       f"{', '.join(EVAL_SPLITS)}")
        path = predictions_path(self.path, split)
        if not path.is_file():
            labels, logits = self.split_logits(split)
            return np.asarray(labels, dtype=np.int64), np.asarray(logits).argmax(1)
        self.check_fresh()
        return read_predictions(path)

    def check_fresh(self) -> None:
        """A :class:`StaleRunError` where the run is no longer finished or its recorded
        inputs changed since it was made: its features (feature runs), its members
        (ensembles: each finished, unchanged and itself fresh). For readers of
        ``metrics.json`` (the tables), which must refuse a run whose files no longer give
        its numbers; readers of logits are checked when the predictor is built."""
        if not self.finished:
            raise StaleRunError(f"{self.path} is no longer a finished run (no {METRICS_JSON}: "
                                "deleted or unfinished); rerun it (snakemake reruns it and "
                                "rewrites the runs index)")
        kind = (self.predictor_spec["kind"] if (self.path / PREDICTOR_JSON).is_file()
                else None)
        if kind == "ensemble":  # not EnsembleRun: its module imports scipy (~0.7 s)
            members = [resolve_recorded(m, self.path) for m in self.predictor_spec["members"]]
            check_members_fresh(self.path, members)
            for m in members:
                RunFolder.open(m).check_fresh()
        elif self.config.get("features_dir") and self.config.get("feature_sha256"):
            check_features_fresh(self.path, self.config,
                                 resolve_recorded(self.config["features_dir"], self.path))


def check_fresh(run_path: str | os.PathLike) -> None:
    """:meth:`RunFolder.check_fresh` of the run at ``run_path`` (a folder that is gone or
    unfinished is stale)."""
    if not metrics_path(run_path).is_file():
        raise StaleRunError(f"{run_path} is no longer a finished run (no {METRICS_JSON}: "
                            "deleted or unfinished); rerun it (snakemake reruns it and "
                            "rewrites the runs index)")
    RunFolder.open(run_path).check_fresh()


def check_features_fresh(run_path: Path, cfg: dict, features_dir: Path) -> None:
    """Every feature file the run recorded (``feature_sha256``) still has that sha256
    (hashed once per file per process, ``io.sha256_cached``); a :class:`StaleRunError`
    naming the file and both hashes otherwise. Runs made before the hashes were recorded
    pass, and so do files that are gone (runs copied without their features still
    tabulate; a reader that needs the file says it is not found)."""
    from lt_bench.io import sha256_cached

    for split, recorded in (cfg.get("feature_sha256") or {}).items():
        path = Path(features_dir) / f"{split}.parquet"
        if not path.is_file():
            continue
        now = sha256_cached(path)
        if now != recorded:
            raise StaleRunError(
                f"{run_path}: stale run: its {split} features {path} changed (sha256 "
                f"{now[:12]}… now) since it was made (sha256 {str(recorded)[:12]}… in its "
                "config.json); rerun it (snakemake reruns it) or restore those features")


def check_members_fresh(run_path: Path, members: list[Path]) -> None:
    """Each member of the finished ensemble at ``run_path`` is still the finished run it
    was made from: its metrics.json exists and, where the ensemble recorded it, has the
    same sha256 (a member rerun since gives other logits). A StaleRunError naming the
    member otherwise; ``snakemake`` reruns the member and then the ensemble."""
    from lt_bench.io import sha256_cached

    cfg_path = config_path(run_path)
    recorded = (read_json(cfg_path).get("members") or []) if cfg_path.is_file() else []
    for i, m in enumerate(members):
        metrics = metrics_path(m)
        if not metrics.is_file():
            raise StaleRunError(
                f"ensemble {run_path}: member {m} is missing (no metrics.json: deleted or "
                "unfinished); rerun it (snakemake reruns the member, then the ensemble)")
        rec = recorded[i].get("metrics_sha256") if i < len(recorded) else None
        if rec is not None and sha256_cached(metrics) != rec:
            raise StaleRunError(
                f"ensemble {run_path}: stale: member {m} was rerun since the ensemble was "
                f"made (metrics.json sha256 {sha256_cached(metrics)[:12]}… now, {rec[:12]}… "
                "recorded); rerun the ensemble (snakemake does)")


class FeatureRun:
    """A run over cached features: its predictor (linear, knn) on the features folder it
    was fitted on, whose files must still be the ones it recorded."""

    def __init__(self, folder: RunFolder):
        from lt_bench.methods._predictor import load_feature_predictor

        self.run_path = folder.path
        self.features_dir = resolve_recorded(folder.config["features_dir"], folder.path)
        check_features_fresh(folder.path, folder.config, self.features_dir)
        self.predictor = load_feature_predictor(folder)
        self.view = folder.config.get("view")  # None (older runs): the file's default view

    def split_logits(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        from lt_bench.features.eval_views import split_view
        from lt_bench.features.store import read_features_shared
        from lt_bench.methods._predictor import split_features_logits

        feats = split_view(read_features_shared(self.features_dir / f"{split}.parquet"),
                           self.view, self.features_dir)
        return feats.labels, split_features_logits(self.predictor, feats)


def open_run(run_path: str | os.PathLike):
    """The run at ``run_path`` behind the seam: ``RunFolder.open(run_path).predictor``."""
    return RunFolder.open(run_path).predictor


def run_logits(run_path: str | os.PathLike, split: str) -> tuple[np.ndarray, np.ndarray]:
    """(labels, logits) of a finished run on ``split``, in split-list order."""
    if split not in SPLITS:
        raise InputValidationError(f"unknown split {split!r}; valid: {', '.join(SPLITS)}")
    return RunFolder.open(run_path).split_logits(split)
