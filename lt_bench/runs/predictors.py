"""The seam's run-level predictor kinds: every finished run answers
``split_logits(split) -> (labels, logits)``.

How it does so depends on what its method consumes (``Method.consumes``), decided once by
the run's ``predictor.json`` kind (``lt_bench.predictor_spec.PREDICTOR_KINDS``; the run
folder, ``runs.run_folder.RunFolder``, builds it):

- ``linear`` / ``knn`` (features): the saved predictor applied to the run's features folder;
- ``ensemble`` (runs): its member runs' logits, combined by its rule;
- ``finetuned`` (images, fine-tuning): the stored head applied, in float32, to the stored
  val/test pre-head features of one view (centre, or the five-crop mean); a run of another
  folder's fine-tuning (the TTE row) points at it with ``source``;
- ``stored``: val/test logits stored as they are (run folders of earlier versions).

Callers (``lt-bench logits``, ensembles, the report) never ask which: they ask the
``RunFolder`` (``open_run`` and ``run_logits`` are re-exported from there).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lt_bench.errors import MissingInputError
from lt_bench.runs.layout import logits_path, resolve_recorded, run_features_path

# the seam's reader is the run folder's; re-exported for the callers that import it here
from lt_bench.runs.run_folder import (  # noqa: F401
    FeatureRun,
    RunFolder,
    StaleRunError,
    check_features_fresh,
    check_fresh,
    check_members_fresh,
    open_run,
    run_logits,
)
from lt_bench.runs.stored import read_logits, read_run_features


def load_run_predictor(run_path: Path):
    """A features-consuming run's own predictor (post-hoc methods reuse its weights)."""
    from lt_bench.methods._predictor import load_feature_predictor

    return load_feature_predictor(RunFolder.open(run_path))


def split_logits_of(predictor, split) -> np.ndarray:
    """A feature predictor's logits on an in-memory FeatureSplit (crop-averaged under TTE)."""
    from lt_bench.methods._predictor import split_features_logits

    return split_features_logits(predictor, split)


class StoredRun:
    """The ``stored`` kind: val/test logits stored as they are (run folders of earlier
    versions)."""

    def __init__(self, run_path: Path):
        self.run_path = Path(run_path)

    def split_logits(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        path = logits_path(self.run_path, split)
        if not path.is_file():
            raise MissingInputError(f"{self.run_path}: no stored {split} logits ({path.name}); "
                                    "a fine-tuning run stores val and test logits only")
        return read_logits(path)


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
                raise MissingInputError(f"{self.run_path}: the fine-tuned head {path} is missing")
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
