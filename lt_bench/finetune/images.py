"""Image loading for fine-tuning: split rows -> decoded, transformed tensors.

Reproducible views
    A training item is requested as ``(row, view_seed)``: the random crop and flip of that
    view are drawn from torch's generator seeded with ``view_seed`` (inside ``fork_rng``, so
    nothing else is disturbed). The seeds and the shuffled order come from
    :func:`epoch_order`, a function of ``(seed, epoch)`` only, so an epoch sees the same
    images in the same order with the same crops whatever the number of loader workers and
    whether or not the run was resumed.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset, Sampler

from lt_bench.data.images import to_rgb
from lt_bench.errors import InputValidationError


class FinetuneImageError(InputValidationError):
    """A listed image is missing or cannot be decoded; the message names the file."""


def epoch_order(n: int, seed: int, epoch: int) -> tuple[np.ndarray, np.ndarray]:
    """The shuffled rows of epoch ``epoch`` and one view seed per position."""
    rng = np.random.default_rng([int(seed), int(epoch), 0x5EED])
    order = rng.permutation(n)
    view_seeds = rng.integers(0, 2**62, size=n, dtype=np.int64)
    return order, view_seeds


class EpochSampler(Sampler):
    """Yields ``(row, view_seed)`` in :func:`epoch_order`; set ``epoch`` before iterating."""

    def __init__(self, n: int, seed: int):
        self.n, self.seed, self.epoch = n, seed, 0

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[tuple[int, int]]:
        order, seeds = epoch_order(self.n, self.seed, self.epoch)
        return iter(zip(order.tolist(), seeds.tolist(), strict=True))


class ImageItems(Dataset):
    """``(image tensor, label)`` of ``(relative_path, label)`` rows under ``root``.

    Keys are a row index (deterministic transforms) or ``(row, view_seed)`` (random views).
    """

    def __init__(self, root: Path, items: Sequence[tuple[str, int]], transform, split: str):
        self.root, self.transform, self.split = Path(root), transform, split
        self.paths = [str(p) for p, _ in items]
        self.labels = np.asarray([int(y) for _, y in items], dtype=np.int64)

    def __len__(self) -> int:
        return len(self.paths)

    def _load(self, i: int) -> Image.Image:
        path = self.root / self.paths[i]
        try:
            with Image.open(path) as im:
                return to_rgb(im)  # forces a full decode: truncated files fail here
        except (OSError, ValueError, Image.DecompressionBombError) as e:
            what = "missing" if isinstance(e, FileNotFoundError) else "unreadable"
            raise FinetuneImageError(
                f"cannot read image {path} ({what}; row {i + 1} of the {self.split} list, "
                f"image root {self.root}): {type(e).__name__}: {e}") from e

    def __getitem__(self, key):
        if isinstance(key, tuple):
            i, view_seed = key
            img = self._load(i)
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(view_seed)
                x = self.transform(img)
        else:
            i = key
            x = self.transform(self._load(i))
        return x, int(self.labels[i])
