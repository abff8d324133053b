"""Predictors: what a features-consuming run saves to rebuild its logits without retraining.

A linear predictor covers zero-shot, every trained head and the post-hoc adjustments:
``logits = Σ_t s_t · f̂_t · (W_t / ‖W_t‖^p_t)ᵀ + b`` where ``f̂_t`` is the feature, first
mapped by the term's projection ``P_t`` if it has one (zero-shot on the pre-projection
feature: ``f @ P`` is open_clip's ``encode_image``), then optionally L2-normalised.
``p = 1`` with normalised features is the cosine classifier, ``p`` in [0, 2] is
τ-normalisation, and ``b`` holds logit adjustments such as −τ log π.
Weights go to safetensors (no pickle), the structure to JSON.

Every predictor has ``logits(features)`` for in-memory features (tuning a knob on val)
and, through :func:`split_features_logits`, the seam's ``split_logits(split)`` on the
features folder it was fitted on. Where a split carries test-time crops
(``FeatureSplit.crops``, LIFT's five-crop TTE) the logits are averaged over the crops.

``predictor.json`` is written and read only through ``lt_bench.predictor_spec``, which
registers the two kinds of this floor (``linear`` here, ``knn``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lt_bench.blocks import crop_blocks
from lt_bench.errors import InputValidationError
from lt_bench.io import atomic_path
from lt_bench.predictor_spec import (
    FEATURE_KINDS,
    PREDICTOR_JSON,
    load_predictor,
    predictor_spec_of,
    read_predictor_spec,  # noqa: F401  (re-exported)
    write_predictor_spec,
)


def _unit_rows(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


@dataclass
class LinearTerm:
    weight: np.ndarray  # (K, E)
    scale: float = 1.0
    normalize_features: bool = True
    weight_power: float = 1.0  # rows divided by ‖w_k‖^power
    projection: np.ndarray | None = None  # (D, E): features are mapped f @ P first

    def logits(self, features: np.ndarray) -> np.ndarray:
        f = features.astype(np.float64)
        if self.projection is not None:
            f = f @ self.projection.astype(np.float64)
        if self.normalize_features:
            f = _unit_rows(f)
        w = self.weight.astype(np.float64)
        norms = np.maximum(np.linalg.norm(w, axis=1, keepdims=True), 1e-12)
        return self.scale * f @ (w / norms**self.weight_power).T


@dataclass
class LinearPredictor:
    terms: list[LinearTerm]
    bias: np.ndarray | None = None
    kind: str = field(default="linear", init=False)

    def logits(self, features: np.ndarray) -> np.ndarray:
        # summed in place: at iNat2018's test shape (24,426 x 8,142) each float64 copy of
        # z is 1.6 GB, and the report rebuilds every run's logits (benchmarks/scale.py)
        z = self.terms[0].logits(features)
        for t in self.terms[1:]:
            z += t.logits(features)
        if self.bias is not None:
            z += self.bias
        return z.astype(np.float32)

    def save(self, run_dir: Path) -> None:
        tensors = {f"term{i}.weight": np.ascontiguousarray(t.weight, dtype=np.float32)
                   for i, t in enumerate(self.terms)}
        tensors.update({f"term{i}.projection": np.ascontiguousarray(t.projection,
                                                                    dtype=np.float32)
                        for i, t in enumerate(self.terms) if t.projection is not None})
        if self.bias is not None:
            tensors["bias"] = np.ascontiguousarray(self.bias, dtype=np.float32)
        from safetensors.numpy import save_file

        with atomic_path(run_dir / "predictor.safetensors") as tmp:
            save_file(tensors, str(tmp))
        write_predictor_spec(run_dir, {
            "kind": "linear", "has_bias": self.bias is not None,
            "terms": [{"scale": float(t.scale), "normalize_features": t.normalize_features,
                       "weight_power": float(t.weight_power),
                       "has_projection": t.projection is not None} for t in self.terms]})


def load_linear(folder) -> LinearPredictor:
    """The ``linear`` predictor kind (``lt_bench.predictor_spec``)."""
    from safetensors.numpy import load_file

    run_dir = Path(folder)
    spec = predictor_spec_of(folder)
    tensors = load_file(str(run_dir / "predictor.safetensors"))
    terms = []
    for i, t in enumerate(spec["terms"]):
        t = dict(t)
        proj = tensors[f"term{i}.projection"] if t.pop("has_projection", False) else None
        terms.append(LinearTerm(tensors[f"term{i}.weight"], projection=proj, **t))
    return LinearPredictor(terms, tensors.get("bias") if spec["has_bias"] else None)


def load_feature_predictor(folder):
    """The saved predictor of a features-consuming run (linear or k-NN)."""
    kind = predictor_spec_of(folder)["kind"]
    if kind not in FEATURE_KINDS:
        raise InputValidationError(
            f"{folder}/{PREDICTOR_JSON}: predictor kind {kind!r} does not act on features; "
            f"valid: {', '.join(FEATURE_KINDS)}")
    return load_predictor(folder)


def split_features_logits(predictor, split) -> np.ndarray:
    """Logits of ``predictor`` on a FeatureSplit, averaged over its test-time crops if any.

    A linear predictor's crop logits go a block of images at a time
    (``lt_bench.blocks.crop_blocks``), the crops' mean written into one float32 N × K
    output: the whole split's crops at once are N·C × K float64 (iNat2018's test: 24,426 ×
    5 × 8,142 = 8 GB, and a float32 copy) in every head job, ensemble and ``lt-bench
    logits`` of a TTE twin. A split that fits one block (the toy world's) is one call, as
    before. k-NN searches the neighbours of all crops at once (what it caches) and votes a
    block at a time (``knn_vote_logits``)."""
    crops = getattr(split, "crops", None)
    if crops is None:
        return predictor.logits(split.features)
    n, c, d = crops.shape
    if getattr(predictor, "kind", None) == "knn":
        return predictor.logits(crops.reshape(n * c, d).astype(np.float32), crops=c)
    if not isinstance(predictor, LinearPredictor):  # a kind of another floor: one call
        z = predictor.logits(crops.reshape(n * c, d).astype(np.float32))
        return z.reshape(n, c, -1).mean(1).astype(np.float32)
    k = predictor.terms[0].weight.shape[0]
    out = np.empty((n, k), np.float32)
    for rows in crop_blocks(n, c, k):
        block = crops[rows]
        z = predictor.logits(block.reshape(-1, d).astype(np.float32))
        out[rows] = z.reshape(len(block), c, k).mean(1)
    return out
