"""Small synthetic feature folders and real run folders for the method tests.

A "backbone" here is a seeded linear view of shared latent class means: every backbone
sees the same images (same paths, labels and row order), so runs of different backbones
can be combined, as the backdoor ensemble requires.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lt_bench.features.store import features_table, write_table, write_text_embeddings
from lt_bench.prior import write_prior

TRAIN_COUNTS = (120, 60, 30, 15, 8, 4)  # many, medium x2, few x3
VAL_PER_CLASS = 6
TEST_PER_CLASS = 12
DIM = 8


def _labels(counts) -> np.ndarray:
    return np.repeat(np.arange(len(counts)), counts)


def make_features_dir(root: Path, backbone: str = "bb0", view_seed: int = 0,
                      dataset: str = "toy", counts=TRAIN_COUNTS, dim: int = DIM,
                      classnames: list[str] | None = None, logit_scale: float = 20.0,
                      permute_test: bool = False, text: bool = True) -> Path:
    """Write ``{train,val,test,text}.parquet`` for one synthetic (dataset, backbone)."""
    k = len(counts)
    out = Path(root) / dataset / backbone
    out.mkdir(parents=True, exist_ok=True)
    world = np.random.default_rng(1234)  # shared by every backbone: the images
    means = world.normal(0, 1, (k, dim))
    view = np.random.default_rng([view_seed, 7])  # the backbone: a mixing of the latents
    mix = np.eye(dim) + 0.3 * view.normal(0, 1, (dim, dim))
    per_split = {"train": list(counts), "val": [VAL_PER_CLASS] * k, "test": [TEST_PER_CLASS] * k}
    for s_i, (split, c) in enumerate(per_split.items()):
        labels = _labels(c)
        latent = means[labels] + world.normal(0, 0.9, (len(labels), dim))
        noise = np.random.default_rng([view_seed, s_i]).normal(0, 0.2, latent.shape)
        feats = latent @ mix + noise
        paths = [f"images/{split}/{y:03d}/{i:05d}.png" for i, y in enumerate(labels)]
        if permute_test and split == "test":
            order = np.random.default_rng(5).permutation(len(labels))
            labels, feats, paths = labels[order], feats[order], [paths[i] for i in order]
        # the same split list for every backbone (a permuted one keeps its hash: the
        # row check must catch it by the paths)
        meta = {"dataset": dataset, "backbone": backbone, "split": split,
                "split_sha256": f"sha-{dataset}-{split}"}
        write_table(features_table(paths, labels, feats.astype(np.float32), meta),
                    out / f"{split}.parquet")
    names = classnames or [f"class {c}" for c in range(k)]
    emb = None
    if text:
        emb = means @ mix + view.normal(0, 0.3, (k, dim))
        emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    write_text_embeddings(out / "text.parquet", names, emb,
                          {"dataset": dataset, "backbone": backbone, "split": "text",
                           **({"logit_scale": logit_scale} if text else {})})
    return out


def make_prior(path: Path, q: np.ndarray, temperature: float = 1.0) -> Path:
    q = np.asarray(q, dtype=np.float64)
    write_prior(Path(path), q / q.sum(), {"temperature": temperature})
    return Path(path)


FAST = {"epochs": 2, "batch_size": 32}
