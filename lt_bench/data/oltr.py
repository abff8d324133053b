"""A user's own long-tailed dataset from OLTR split lists (README.md, "Benchmark your own
method"):

    datasets:
      my_lt: {type: oltr_lists, split_dir: /data/my_lt/splits, image_root: /data/my_lt/images}

``split_dir`` holds ``train.txt``, ``test.txt``, optionally ``val.txt`` (``relative/path
label`` per line, paths relative to the image root, labels ``0..K-1``) and
``classnames.txt`` (line ``i`` names label ``i``; K = its number of lines). ``prepare``
reads them — a malformed line or a label outside ``0..K-1`` is one line naming the user's
file and line — writes the lists into the workflow's split folder and runs the integrity
checks every built-in dataset passes (:func:`lt_bench.data.splits.check_split_integrity`:
no duplicate lines, no image in two splits, every class with a training image). The
D-groups come from the train counts, the prompts from the class names, as for any dataset.

The images: ``image_root`` (absolute, or relative to the project folder), else the
workflow's ``<data_root>/<data_dirs[name]>`` as for the built-in real datasets; they are
verified (``verify-images``) and sampled by ``lt-bench doctor`` like ImageNet's.

**Without val.txt** (docs/protocol.md, "A user's dataset without val"): a class-balanced
val of at most ``val_per_class`` (20, ImageNet-LT's and Places-LT's) images per class is
drawn from train with ``seed`` (0), by ``val_policy``:

``"train_subset"`` (default)
    train.txt stays exactly the user's (so do the D-groups) and val is a subset of it — the
    iNat2018 protocol's recorded exception (``val_overlaps_train``): val serves what needs
    labelled data but no fitted head (q̂ from zero-shot logits), and no knob of a head
    trained on train is tuned on it (post-hoc methods keep their defaults).
``"holdout"``
    val is held out of train (each class keeps at least one training image), so every knob
    is tuned on val, at the price of fewer training images (and D-groups from what is left).

With a ``val.txt`` these parameters are unused; its images may not be in train.txt.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from lt_bench.data.base import DATASETS, DataRootError, Dataset, DatasetParamError
from lt_bench.data.splits import (
    SplitIntegrityError,
    check_or_remove,
    read_classnames,
    read_split,
    write_classnames,
    write_split,
)

VAL_POLICIES = ("train_subset", "holdout")


@DATASETS.register("oltr_lists")
class OltrLists(Dataset):
    """A user's long-tailed dataset from OLTR split lists (type oltr_lists)."""

    name = "oltr_lists"
    num_classes = 0  # the number of lines of the user's classnames.txt
    defaults: ClassVar[dict[str, Any]] = {"split_dir": None, "image_root": None,
                                          "val_policy": "train_subset", "val_per_class": 20,
                                          "seed": 0}
    needs_data_root = True  # the user's images: verified before extraction (or image_root)

    def check_params(self) -> None:
        if not self.params["split_dir"]:
            raise DatasetParamError(f"dataset {self.name!r}: split_dir is required (the folder "
                                    "with train.txt, test.txt, classnames.txt, optional val.txt)")
        if self.params["val_policy"] not in VAL_POLICIES:
            raise DatasetParamError(f"dataset {self.name!r}: val_policy "
                                    f"{self.params['val_policy']!r} is not one of "
                                    f"{', '.join(VAL_POLICIES)}")
        n = self.params["val_per_class"]
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise DatasetParamError(f"dataset {self.name!r}: val_per_class {n!r} is not an "
                                    "integer >= 1")

    @property
    def source_dir(self) -> Path:
        return Path(self.params["split_dir"]).expanduser()

    @property
    def carves_val(self) -> bool:
        """True where val is drawn from train (no val.txt in split_dir)."""
        return not (self.source_dir / "val.txt").is_file()

    @property
    def val_overlaps_train(self) -> bool:
        return self.carves_val and self.params["val_policy"] == "train_subset"

    def list_sources(self) -> dict[str, Path]:
        """The user's files (doctor samples its images before anything is prepared)."""
        return {s: self.source_dir / f"{s}.txt" for s in self.splits
                if (self.source_dir / f"{s}.txt").is_file()}

    def source_files(self) -> list[Path]:
        """Every file ``prepare`` reads (the workflow's inputs: an edit re-prepares)."""
        names = self.source_dir / "classnames.txt"
        return [*self.list_sources().values(), *([names] if names.is_file() else [])]

    def prepare(self, split_dir: Path) -> None:
        src, split_dir = self.source_dir, Path(split_dir)
        if not src.is_dir():
            raise DatasetParamError(f"dataset {self.name!r}: split_dir {str(src)!r} is not a "
                                    "directory")
        for required in ("classnames.txt", "train.txt", "test.txt"):
            if not (src / required).is_file():
                raise DatasetParamError(
                    f"dataset {self.name!r}: {src / required} not found; split_dir must hold "
                    "train.txt, test.txt and classnames.txt (val.txt optional)")
        names = read_classnames(src / "classnames.txt")
        # a label outside 0..K-1 is one line naming the user's file and line
        lists = {s: read_split(f, num_classes=len(names)) for s, f in self.list_sources().items()}
        if self.carves_val:
            lists["train"], lists["val"] = self._carve_val(*lists["train"])
        split_dir.mkdir(parents=True, exist_ok=True)
        for split, (paths, labels) in lists.items():
            write_split(split_dir / f"{split}.txt", paths, labels)
        write_classnames(split_dir / "classnames.txt", names)
        try:
            check_or_remove(split_dir, allow_val_in_train=self.val_overlaps_train)
        except SplitIntegrityError as e:  # name the user's lists, not only our copies
            raise SplitIntegrityError(f"dataset {self.name!r} (lists of {src}): {e}") from None

    def _carve_val(self, paths: list[str], labels: list[int]):
        from lt_bench.data.lift import balanced_sample

        holdout = self.params["val_policy"] == "holdout"
        idx = balanced_sample(np.asarray(labels), int(self.params["val_per_class"]),
                              int(self.params["seed"]), keep=1 if holdout else 0)
        val = ([paths[i] for i in idx], [labels[i] for i in idx])
        if not holdout:
            return (paths, labels), val
        held = np.zeros(len(paths), dtype=bool)
        held[idx] = True
        return ([p for p, h in zip(paths, held, strict=True) if not h],
                [y for y, h in zip(labels, held, strict=True) if not h]), val

    def image_root(self, split_dir: Path, data_root: str | None) -> Path:
        given = self.params["image_root"]
        root = Path(given).expanduser() if given else (
            Path(data_root).expanduser() if data_root else None)
        if root is None:
            raise DataRootError(f"dataset {self.name!r}: set datasets.{self.name}.image_root "
                                "to the folder its split lists' paths are relative to (or "
                                "data_root)")
        if not root.is_dir():
            key = f"datasets.{self.name}.image_root" if given else "data_root"
            raise DataRootError(f"dataset {self.name!r}: image root {str(root)!r} ({key}) is "
                                "not a directory; expected the folder the split lists' paths "
                                "are relative to")
        return root
