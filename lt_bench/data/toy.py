"""The toy world: a procedural long-tailed image dataset with readable class names.

Classes are compositions of attributes (shape x colour x texture); each image adds
random nuisance (position, scale, rotation, background, colour jitter, noise). The
images are written to disk with OLTR split lists, exactly like a real dataset, so
every real code path (decode, open_clip preprocessing, Parquet) runs on them.

Rendering is vectorised numpy over a whole batch: ~5k images/s on 2 cores, so the
toy pre-training sets (tens of thousands of pairs) are drawn on the fly.
"""

from __future__ import annotations

import itertools
import logging
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from PIL import Image
from tqdm import tqdm

from lt_bench.data.base import DATASETS, Dataset
from lt_bench.data.splits import check_or_remove, write_classnames, write_split
from lt_bench.io import write_json

log = logging.getLogger(__name__)

SHAPES = ("circle", "square", "triangle", "ring", "cross")
COLOURS = {
    "red": (220, 45, 45),
    "green": (40, 170, 60),
    "blue": (45, 80, 225),
    "yellow": (235, 205, 40),
    "purple": (150, 60, 200),
}
TEXTURES = ("plain", "striped", "dotted", "checkered")
MAX_CLASSES = len(SHAPES) * len(COLOURS) * len(TEXTURES)

# Caption templates of the toy pre-training corpus (and the toy prompt ensemble).
CAPTION_TEMPLATES = (
    "a photo of a {}.",
    "a {}.",
    "an image of a {}.",
    "a drawing of a {}.",
    "a picture of the {}.",
)


def class_attributes(num_classes: int) -> list[tuple[str, str, str]]:
    """(colour, texture, shape) per class, interleaved so any prefix mixes attributes."""
    if not 2 <= num_classes <= MAX_CLASSES:
        raise ValueError(f"toy num_classes must be in [2, {MAX_CLASSES}], got {num_classes}")
    combos = list(itertools.product(COLOURS, TEXTURES, SHAPES))
    # A fixed shuffle so a 10-class toy world still has several shapes and colours.
    order = np.random.default_rng(1234).permutation(len(combos))
    return [combos[i] for i in order[:num_classes]]


def class_names(num_classes: int) -> list[str]:
    return [f"{c} {t} {s}" for c, t, s in class_attributes(num_classes)]


def exponential_profile(num_classes: int, max_count: int, imbalance: float) -> np.ndarray:
    """LIFT/OLTR profile: rank i gets ``int(max * IR ** (-i / (K - 1)))`` images."""
    ranks = np.arange(num_classes)
    return (max_count * imbalance ** (-ranks / max(num_classes - 1, 1))).astype(int)


def long_tailed_counts(
    num_classes: int, max_count: int, imbalance: float, order_seed: int
) -> np.ndarray:
    """Per-class counts of an exponential profile over a seeded random class order."""
    order = np.random.default_rng(order_seed).permutation(num_classes)
    counts = np.empty(num_classes, dtype=int)
    counts[order] = exponential_profile(num_classes, max_count, imbalance)
    return counts


def render(labels: np.ndarray, rng: np.random.Generator, num_classes: int,
           size: int = 32) -> np.ndarray:
    """Render one image per label: uint8 array (N, size, size, 3)."""
    labels = np.asarray(labels)
    n = len(labels)
    attrs = class_attributes(num_classes)
    colour_idx = np.array([list(COLOURS).index(a[0]) for a in attrs])[labels]
    texture_idx = np.array([TEXTURES.index(a[1]) for a in attrs])[labels]
    shape_idx = np.array([SHAPES.index(a[2]) for a in attrs])[labels]

    lin = (np.arange(size) + 0.5) / size * 2 - 1
    yy, xx = np.meshgrid(lin, lin, indexing="ij")
    cx, cy = rng.uniform(-0.3, 0.3, (2, n, 1, 1))
    r = rng.uniform(0.45, 0.75, (n, 1, 1))
    th = rng.uniform(0, 2 * np.pi, (n, 1, 1))
    dx, dy = xx - cx, yy - cy
    u = (dx * np.cos(th) + dy * np.sin(th)) / r
    v = (-dx * np.sin(th) + dy * np.cos(th)) / r
    rad = np.sqrt(u**2 + v**2)

    masks = np.stack([
        rad < 1.0,                                                       # circle
        np.maximum(abs(u), abs(v)) < 0.8,                                # square
        (v > -0.55) & (v + 1.9 * abs(u) < 0.95),                         # triangle
        (rad > 0.55) & (rad < 1.0),                                      # ring
        ((abs(u) < 0.3) & (abs(v) < 0.95)) | ((abs(v) < 0.3) & (abs(u) < 0.95)),  # cross
    ])
    mask = masks[shape_idx, np.arange(n)]

    freq = rng.uniform(6.0, 8.0, (n, 1, 1))
    su, sv = np.sin(u * freq), np.sin(v * freq)
    patterns = np.stack([
        np.ones_like(u, dtype=bool),          # plain
        su > 0,                               # striped
        (su * sv) > 0.25,                     # dotted
        (su * sv) > 0,                        # checkered
    ])
    pattern = patterns[texture_idx, np.arange(n)]

    base = np.array(list(COLOURS.values()), dtype=float)[colour_idx]  # (n, 3)
    base = base + rng.normal(0, 12, (n, 3))
    fg = np.where(pattern[..., None], base[:, None, None, :], base[:, None, None, :] * 0.35)
    bg_level = rng.uniform(60, 200, (n, 1, 1, 1))
    bg = bg_level + rng.normal(0, 8, (n, 1, 1, 3))
    img = np.where(mask[..., None], fg, bg)
    img = img + rng.normal(0, 10, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


@DATASETS.register("toy")
class ToyDataset(Dataset):
    """Procedural long-tailed dataset (docs/architecture.md §5). Images live in ``split_dir/images``."""

    name = "toy"
    num_classes = 100  # default; the real value is ``params["num_classes"]``
    defaults: ClassVar[dict[str, Any]] = {
        "num_classes": 100,
        "max_per_class": 500,
        "imbalance": 100,
        "val_per_class": 20,
        "test_per_class": 100,
        "image_size": 32,
        "seed": 0,
    }

    def __init__(self, **params: Any):
        unknown = set(params) - set(self.defaults)
        if unknown:
            raise ValueError(
                f"unknown toy dataset parameter(s) {sorted(unknown)}; valid: {sorted(self.defaults)}"
            )
        super().__init__(**{**self.defaults, **params})

    def train_counts(self) -> np.ndarray:
        p = self.params
        return long_tailed_counts(p["num_classes"], p["max_per_class"], p["imbalance"],
                                  order_seed=p["seed"])

    def prepare(self, split_dir: Path) -> None:
        p = self.params
        split_dir = Path(split_dir)
        k = p["num_classes"]
        per_split = {
            "train": self.train_counts(),
            "val": np.full(k, p["val_per_class"]),
            "test": np.full(k, p["test_per_class"]),
        }
        for s_i, (split, counts) in enumerate(per_split.items()):
            labels = np.repeat(np.arange(k), counts)
            rng = np.random.default_rng([p["seed"], 17, s_i])
            rows: list[tuple[str, int]] = []
            for start in tqdm(range(0, len(labels), 2048), desc=f"toy {split}", unit="batch"):
                batch = labels[start:start + 2048]
                images = render(batch, rng, k, p["image_size"])
                for j, (y, im) in enumerate(zip(batch, images, strict=True)):
                    rel = f"images/{split}/{y:03d}/{start + j:06d}.png"
                    out = split_dir / rel
                    out.parent.mkdir(parents=True, exist_ok=True)
                    Image.fromarray(im).save(out)
                    rows.append((rel, int(y)))
            write_split(split_dir / f"{split}.txt", [r for r, _ in rows], [y for _, y in rows])
            log.info("toy %s: %d images", split, len(rows))
        write_classnames(split_dir / "classnames.txt", class_names(k))
        write_json(split_dir / "toy_meta.json", {"params": p,
                                                 "train_counts": per_split["train"].tolist()})
        check_or_remove(split_dir)  # duplicates, overlaps, empty classes: refused

    def image_root(self, split_dir: Path, data_root: str | None) -> Path:
        return Path(split_dir)
