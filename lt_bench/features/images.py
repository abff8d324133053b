"""A split's images as the encoder's DataLoader reads them on the CPU: the dataset (PIL
decode + transform), the seed of a row's random view, and the loader's worker helpers.
Decoding on the device instead is ``decode.py``; both raise :class:`ImageReadError`.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from lt_bench.data.images import to_rgb
from lt_bench.errors import UserError


class ImageReadError(UserError, RuntimeError):
    """A listed image is missing or cannot be decoded; the message names the file."""


def view_seed(seed: int, i: int) -> int:
    """The torch seed of row ``i``'s random view: independent of workers and batching."""
    return int(np.random.SeedSequence([int(seed), int(i)]).generate_state(1)[0])


def where_in_list(i: int, split_file: str | Path | None) -> str:
    """Row ``i`` as a user finds it: its line of the split list."""
    return f"line {i + 1} of {split_file}" if split_file else f"row {i}"


class ImageListDataset(Dataset):
    """Images of a split list; item ``i`` is ``(image, label)`` of row ``i``, or
    ``(image, crops, label)`` with a ``crops_transform``. With ``seed`` the (random)
    transform of row ``i`` runs under the torch seed :func:`view_seed` ``(seed, i)``."""

    def __init__(self, root: Path, paths: list[str], labels: np.ndarray, transform,
                 split_file: str | Path | None = None, crops_transform=None,
                 seed: int | None = None):
        self.root, self.paths, self.labels, self.transform = Path(root), paths, labels, transform
        self.split_file, self.crops_transform, self.seed = split_file, crops_transform, seed

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        path = self.root / self.paths[i]
        try:
            with Image.open(path) as im:
                img = to_rgb(im)  # forces a full decode: truncated files fail here
        except (OSError, ValueError, Image.DecompressionBombError) as e:
            what = "missing" if isinstance(e, FileNotFoundError) else "unreadable"
            raise ImageReadError(f"cannot read image {path} ({what}; "
                                 f"{where_in_list(i, self.split_file)}): "
                                 f"{type(e).__name__}: {e}") from e
        if self.seed is None:
            x = self.transform(img)
        else:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(view_seed(self.seed, i))
                x = self.transform(img)
        if self.crops_transform is None:
            return x, int(self.labels[i])
        return x, self.crops_transform(img), int(self.labels[i])


def clean_worker_error(e: Exception) -> str:
    """The message of an error re-raised from a DataLoader worker, without its traceback."""
    found = re.findall(r"^(?:\S*ImageReadError: )?(cannot read image .*)$", str(e), re.M)
    return found[-1] if found else str(e)


def yield_to_model(worker_id: int) -> None:
    """On CPU the model is the bottleneck: decode workers run niced, filling the cores'
    idle gaps instead of stalling the model's parallel regions."""
    import os

    try:
        os.nice(10)
    except OSError:
        pass
