"""Predictors: what a run saves to rebuild its logits without retraining.

A linear predictor covers zero-shot, every trained head and the post-hoc adjustments:
``logits = Σ_t s_t · f̂_t · (W_t / ‖W_t‖^p_t)ᵀ + b`` where ``f̂`` is the (optionally
L2-normalised) feature. ``p = 1`` with normalised features is the cosine classifier,
``p`` in [0, 2] is τ-normalisation, and ``b`` holds logit adjustments such as −τ log π.
Weights go to safetensors (no pickle), the structure to JSON.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file, save_file

from lt_bench.io import atomic_path, write_json


@dataclass
class LinearTerm:
    weight: np.ndarray  # (K, D)
    scale: float = 1.0
    normalize_features: bool = True
    weight_power: float = 1.0  # rows divided by ‖w_k‖^power

    def logits(self, features: np.ndarray) -> np.ndarray:
        f = features.astype(np.float64)
        if self.normalize_features:
            f = f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-12)
        w = self.weight.astype(np.float64)
        norms = np.maximum(np.linalg.norm(w, axis=1, keepdims=True), 1e-12)
        return self.scale * f @ (w / norms**self.weight_power).T


@dataclass
class LinearPredictor:
    terms: list[LinearTerm]
    bias: np.ndarray | None = None
    kind: str = field(default="linear", init=False)

    def logits(self, features: np.ndarray) -> np.ndarray:
        z = sum(t.logits(features) for t in self.terms)
        if self.bias is not None:
            z = z + self.bias
        return z.astype(np.float32)

    def save(self, run_dir: Path) -> None:
        tensors = {f"term{i}.weight": np.ascontiguousarray(t.weight, dtype=np.float32)
                   for i, t in enumerate(self.terms)}
        if self.bias is not None:
            tensors["bias"] = np.ascontiguousarray(self.bias, dtype=np.float32)
        with atomic_path(run_dir / "predictor.safetensors") as tmp:
            save_file(tensors, str(tmp))
        write_json(run_dir / "predictor.json", {
            "kind": "linear", "has_bias": self.bias is not None,
            "terms": [{"scale": float(t.scale), "normalize_features": t.normalize_features,
                       "weight_power": float(t.weight_power)} for t in self.terms]})


def save_predictor(predictor, run_dir: Path) -> None:
    predictor.save(Path(run_dir))


def load_predictor(run_dir: Path):
    run_dir = Path(run_dir)
    spec_path = run_dir / "predictor.json"
    if not spec_path.is_file():
        raise FileNotFoundError(f"{run_dir}: no predictor.json; is this a finished run folder?")
    spec = json.loads(spec_path.read_text())
    kind = spec.get("kind")
    loader = PREDICTOR_LOADERS.get(kind)
    if loader is None:
        raise ValueError(f"{spec_path}: unknown predictor kind {kind!r}; "
                         f"valid: {sorted(PREDICTOR_LOADERS)}")
    return loader(run_dir, spec)


def _load_linear(run_dir: Path, spec: dict) -> LinearPredictor:
    tensors = load_file(str(run_dir / "predictor.safetensors"))
    terms = [LinearTerm(tensors[f"term{i}.weight"], **t) for i, t in enumerate(spec["terms"])]
    return LinearPredictor(terms, tensors.get("bias") if spec["has_bias"] else None)


#: kind -> loader(run_dir, spec); other predictor kinds (k-NN, ensembles) add theirs
PREDICTOR_LOADERS = {"linear": _load_linear}
