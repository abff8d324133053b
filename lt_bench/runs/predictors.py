"""The seam: every finished run answers ``split_logits(split) -> (labels, logits)``.

How it does so depends on what its method consumes (``Method.consumes``), decided once here
from the run's ``predictor.json`` kind:

- ``linear`` / ``knn`` (features): the saved predictor applied to the run's features folder;
- ``ensemble`` (runs): its member runs' logits, combined by its rule;
- ``finetuned`` (images, fine-tuning): the stored head applied, in float32, to the stored
  val/test pre-head features of one view (centre, or the five-crop mean); a run of another
  folder's fine-tuning (the TTE row) points at it with ``source``;
- ``stored``: val/test logits stored as they are (run folders of earlier versions).

Callers (``lt-bench logits``, ensembles, the report) never ask which.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lt_bench.errors import InputValidationError
from lt_bench.runs.folder import (
    SPLITS,
    logits_path,
    read_logits,
    read_run_config,
    read_run_features,
    resolve_recorded,
    run_features_path,
)


def load_run_predictor(run_path: Path):
    """A features-consuming run's own predictor (post-hoc methods reuse its weights)."""
    from lt_bench.methods._predictor import load_feature_predictor

    return load_feature_predictor(Path(run_path))


def split_logits_of(predictor, split) -> np.ndarray:
    """A feature predictor's logits on an in-memory FeatureSplit (crop-averaged under TTE)."""
    from lt_bench.methods._predictor import split_features_logits

    return split_features_logits(predictor, split)


class StaleRunError(InputValidationError):
    """A finished run whose recorded inputs changed since: its logits would now be other
    numbers than its metrics.json's. Reported, never silently recomputed."""


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
    from lt_bench.io import read_json, sha256_cached

    cfg_path = Path(run_path) / "config.json"
    recorded = (read_json(cfg_path).get("members") or []) if cfg_path.is_file() else []
    for i, m in enumerate(members):
        metrics = Path(m) / "metrics.json"
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
    """A run over cached features: predictor + the features folder it was fitted on."""

    def __init__(self, run_path: Path, cfg: dict):
        self.run_path = Path(run_path)
        self.features_dir = resolve_recorded(cfg["features_dir"], self.run_path)
        check_features_fresh(self.run_path, cfg, self.features_dir)
        self.predictor = load_run_predictor(self.run_path)

    def split_logits(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        from lt_bench.features.store import read_features_shared

        feats = read_features_shared(self.features_dir / f"{split}.parquet")
        return feats.labels, split_logits_of(self.predictor, feats)


class StoredRun:
    """A run whose val/test logits were stored at the end of training (fine-tuning)."""

    def __init__(self, run_path: Path):
        self.run_path = Path(run_path)

    def split_logits(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        path = logits_path(self.run_path, split)
        if not path.is_file():
            raise FileNotFoundError(f"{self.run_path}: no stored {split} logits ({path.name}); "
                                    "a fine-tuning run stores val and test logits only")
        return read_logits(path)


def check_fresh(run_path: Path) -> None:
    """A :class:`StaleRunError` where a run is no longer finished, or its recorded inputs
    changed since it was made: its features (feature runs), its members (ensembles: each finished, unchanged
    and itself fresh). For readers of ``metrics.json`` (the tables), which must refuse a
    run whose files no longer give its numbers; readers of logits check in ``open_run``."""
    from lt_bench.io import read_json
    from lt_bench.predictor_spec import PREDICTOR_JSON, read_predictor_spec

    run_path = Path(run_path)
    if not (run_path / "metrics.json").is_file():
        raise StaleRunError(f"{run_path} is no longer a finished run (no metrics.json: "
                            "deleted or unfinished); rerun it (snakemake reruns it and "
                            "rewrites the runs index)")
    spec = (read_predictor_spec(run_path) if (run_path / PREDICTOR_JSON).is_file()
            else {"kind": None})
    cfg = run_path / "config.json"
    cfg = read_json(cfg) if cfg.is_file() else {}  # a run of an older layout: nothing to check
    if spec["kind"] == "ensemble":  # not EnsembleRun: its module imports scipy (~0.7 s)
        members = [resolve_recorded(m, run_path) for m in spec["members"]]
        check_members_fresh(run_path, members)
        for m in members:
            check_fresh(m)
    elif cfg.get("features_dir") and cfg.get("feature_sha256"):
        check_features_fresh(run_path, cfg, resolve_recorded(cfg["features_dir"], run_path))


def cosine_head_logits(features: np.ndarray, weight: np.ndarray, scale: float, view: str,
                       chunk: int = 4096) -> np.ndarray:
    """``scale · f̂ · ŵᵀ`` in float32, rows in chunks (bounded memory at K = 8,142): the
    fine-tuning's cosine head (``lt_bench.finetune.peft.CosineHead``). The ``centre`` view
    is normalised here; the ``tte`` view is already the mean of unit crop features, whose
    logits are the mean of the crops' logits."""
    w = np.asarray(weight, dtype=np.float32)
    w = w / np.maximum(np.linalg.norm(w, axis=1, keepdims=True), np.float32(1e-12))
    f = np.asarray(features, dtype=np.float32)
    out = np.empty((len(f), len(w)), np.float32)
    for lo in range(0, len(f), chunk):
        x = f[lo:lo + chunk]
        if view == "centre":
            x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), np.float32(1e-12))
        np.matmul(x, w.T, out=out[lo:lo + chunk])
        out[lo:lo + chunk] *= np.float32(scale)
    return out


class FinetunedRun:
    """A fine-tuned run: its stored head on its stored pre-head features (one view).

    ``source`` (in predictor.json) names the fine-tuned run folder holding both, when this
    run reports another view of that fine-tuning; otherwise they are in this folder.
    ``knn`` ({k, temperature}) makes it a k-NN probe of those features instead of the head:
    the source's val features are the bank (``lt_bench.methods.knn``)."""

    def __init__(self, run_path: Path, spec: dict):
        self.run_path = Path(run_path)
        src = spec.get("source")
        self.source = resolve_recorded(src, self.run_path) if src else self.run_path
        self.view = spec.get("view", "centre")
        self.scale = float(spec["scale"])
        self.head_file, self.head_key = spec.get("head", "trainable.safetensors"), \
            spec.get("head_key", "head.weight")
        self.knn = spec.get("knn")
        self.num_classes = spec.get("num_classes")
        self._weight = None

    @classmethod
    def from_folder(cls, folder) -> FinetunedRun:
        """The ``finetuned`` predictor kind (``lt_bench.predictor_spec``)."""
        from lt_bench.predictor_spec import predictor_spec_of

        return cls(Path(folder), predictor_spec_of(folder))

    @property
    def weight(self) -> np.ndarray:
        if self._weight is None:
            from safetensors import safe_open

            path = self.source / self.head_file
            if not path.is_file():
                raise FileNotFoundError(f"{self.run_path}: the fine-tuned head {path} is missing")
            with safe_open(str(path), framework="numpy") as f:  # only the head's tensor
                self._weight = f.get_tensor(self.head_key).astype(np.float32)
        return self._weight

    def split_features(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        """(labels, float32 features) of this run's view, as stored (float16-rounded)."""
        return read_run_features(run_features_path(self.source, split), self.view)

    def split_logits(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        labels, feats = self.split_features(split)
        if self.knn is not None:
            from lt_bench.methods.knn import knn_logits

            bank_labels, bank = self.split_features("val")
            return labels, knn_logits(feats, bank, bank_labels, int(self.knn["k"]),
                                      float(self.knn["temperature"]), int(self.num_classes))
        return labels, cosine_head_logits(feats, self.weight, self.scale, self.view)


def open_run(run_path: Path):
    """The run at ``run_path`` behind the seam (an object with ``split_logits``), built by
    its predictor kind (``lt_bench.predictor_spec.PREDICTOR_KINDS``)."""
    from lt_bench.predictor_spec import FEATURE_KINDS, load_predictor, read_predictor_spec

    run_path = Path(run_path)
    cfg = read_run_config(run_path)
    if read_predictor_spec(run_path)["kind"] not in FEATURE_KINDS:
        return load_predictor(run_path)
    if not cfg.get("features_dir"):
        raise InputValidationError(f"{run_path}: a features predictor but config.json "
                                   "records no features folder")
    return FeatureRun(run_path, cfg)


def run_logits(run_path: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """(labels, logits) of a finished run on ``split``, in split-list order."""
    if split not in SPLITS:
        raise InputValidationError(f"unknown split {split!r}; valid: {', '.join(SPLITS)}")
    return open_run(Path(run_path)).split_logits(split)
