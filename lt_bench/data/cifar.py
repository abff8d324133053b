"""CIFAR-100-LT, built on the user's machine from torchvision's CIFAR-100 download.

Param ``download_root`` (default ``<split_dir>/cifar-100``) says where CIFAR-100 goes.
Training counts follow LIFT's profile ``int(500 * IR**(-i/99))`` for class ``i`` (param
``imb_ratio``: 100, 50 or 10) and LIFT's sampling (``RandomState(seed)`` shuffling each
class in turn; with the default ``seed = 0`` the training images are exactly LIFT's;
``shijxcs/LIFT`` ``datasets/cifar100.py``). ``val.txt`` is a balanced set of
``val_per_class`` (default 20) CIFAR-train images per class not used for training, taken
from the same shuffle; the head classes whose training count leaves fewer than that many
spare images (class 0 at every IR, class 1 at IR 10) have the shortfall filled from their
own training images, and ``split_info.json`` records how many (with the defaults: 20
images of class 0, plus 8 of class 1 at IR 10, out of 2,000; only in the best-populated
classes, where it matters least). No split can avoid this: class 0 keeps all 500 of its
CIFAR training images. The integrity check therefore allows (and records) val ∩ train
for CIFAR-100-LT. ``test.txt`` is the whole CIFAR-100 test set (100 per class). Images
are written as PNG files under ``<split_dir>/images/``, which is their image root.

Groups: LIFT defines the Many/Medium/Few groups of *every* CIFAR-100 variant by the IR-100
training counts (``trainer.py``: ``if cfg.dataset in ["CIFAR100", "CIFAR100_IR10",
"CIFAR100_IR50"]: split_cls_num_list = datasets.CIFAR100_IR100(root,
train=True).cls_num_list``), so IR 10, whose own counts are all >= 50, still has a Few
group. ``prepare`` writes those counts to ``group_counts.txt``
(:func:`lt_bench.data.splits.read_group_counts`).

``cifar100_lt_ir100``, ``cifar100_lt_ir50`` and ``cifar100_lt_ir10`` are the same dataset
with the imbalance ratio fixed by the name (no ``imb_ratio`` param), so each IR gets its own
``resources/data/<name>/`` and its own features and runs; ``cifar100_lt`` (``imb_ratio``
param, default 100) stays for use outside the workflow.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from lt_bench.data.base import DATASETS, Dataset, DatasetParamError
from lt_bench.data.splits import (
    check_or_remove,
    stats_from_labels,
    write_classnames,
    write_group_counts,
    write_split,
)
from lt_bench.io import write_json

#: the imbalance ratio whose training counts define the groups of every CIFAR-100-LT (LIFT)
GROUPS_IMB_RATIO = 100


def cifar_lt_profile(imb_ratio: float, num_classes: int = 100, img_max: int = 500) -> list[int]:
    """LIFT's per-class training counts ``int(img_max * IR**(-i/(K-1)))``.

    Written as LIFT writes it (``img_max * (1/IR) ** (i / (K - 1.0))``) so the float
    rounding, and hence every count, is LIFT's.
    """
    factor = 1.0 / imb_ratio
    return [int(img_max * factor ** (i / (num_classes - 1.0))) for i in range(num_classes)]


def cifar_lt_plan(train_targets, imb_ratio: float, seed: int, val_per_class: int,
                  num_classes: int = 100) -> dict[str, Any]:
    """Which CIFAR-train indices form the LT train and the balanced val split.

    Train: LIFT's selection (``RandomState(seed)`` shuffles each class in order; the first
    ``profile[c]`` are kept). Val: the next ``val_per_class`` of the same shuffle; where a
    class has fewer spare images, the rest comes from its training images (recorded).
    """
    targets = np.asarray(train_targets, dtype=np.int64)
    img_max = len(targets) // num_classes
    profile = cifar_lt_profile(imb_ratio, num_classes, img_max)
    rng = np.random.RandomState(seed)  # same stream as LIFT's np.random.seed + shuffle
    train_idx, val_idx, overlap = [], [], {}
    for c in range(num_classes):
        idx = np.where(targets == c)[0]
        rng.shuffle(idx)
        n = profile[c]
        train_idx.extend(idx[:n].tolist())
        spare = idx[n:n + val_per_class].tolist()
        short = val_per_class - len(spare)
        if short > 0:
            spare += idx[n - short:n].tolist()  # the last-picked training images
            overlap[c] = short
        val_idx.extend(spare)
    return {"train": train_idx, "val": val_idx, "profile": profile, "val_overlap": overlap}


def load_cifar100(root: Path) -> dict[str, Any]:
    """CIFAR-100 via torchvision (downloaded and md5-checked by torchvision)."""
    from torchvision.datasets import CIFAR100

    train = CIFAR100(str(root), train=True, download=True)
    test = CIFAR100(str(root), train=False, download=True)
    return {"train_images": train.data, "train_targets": list(train.targets),
            "test_images": test.data, "test_targets": list(test.targets),
            "classes": list(train.classes)}


def _write_pngs(images: np.ndarray, indices, labels, subset: str, root: Path) -> list[str]:
    from PIL import Image

    rels = []
    for i, y in zip(indices, labels, strict=True):
        rel = f"images/{subset}/{int(y):03d}/{int(i):05d}.png"
        out = root / rel
        out.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(images[i]).save(out)
        rels.append(rel)
    return rels


@DATASETS.register("cifar100_lt")
class Cifar100LT(Dataset):
    writes_group_counts: ClassVar[bool] = True
    """CIFAR-100-LT with the imbalance ratio as a parameter (default 100)."""

    name = "cifar100_lt"
    num_classes = 100
    defaults: ClassVar[dict[str, Any]] = {
        "imb_ratio": 100, "seed": 0, "val_per_class": 20, "download_root": None}

    def check_params(self) -> None:
        ratio = self.params["imb_ratio"]
        if isinstance(ratio, bool) or not isinstance(ratio, int | float) or ratio < 1:
            raise DatasetParamError(f"dataset {self.name!r}: imb_ratio must be a number >= 1 "
                                    f"(e.g. 100, 50, 10), got {ratio!r}")

    def prepare(self, split_dir: Path) -> None:
        split_dir = Path(split_dir)
        raw = load_cifar100(Path(self.params["download_root"] or split_dir / "cifar-100"))
        plan = cifar_lt_plan(raw["train_targets"], float(self.params["imb_ratio"]),
                             int(self.params["seed"]), int(self.params["val_per_class"]),
                             self.num_classes)
        train_y, test_y = raw["train_targets"], raw["test_targets"]
        staging = split_dir / ".images.partial"
        shutil.rmtree(staging, ignore_errors=True)
        # Images go to a staging folder renamed at the end: an interrupted prepare
        # leaves no images/ folder that looks complete.
        rel = {
            "train": _write_pngs(raw["train_images"], plan["train"],
                                 [train_y[i] for i in plan["train"]], "train", staging),
            "val": _write_pngs(raw["train_images"], plan["val"],
                               [train_y[i] for i in plan["val"]], "train", staging),
            "test": _write_pngs(raw["test_images"], range(len(test_y)), test_y, "test", staging),
        }
        shutil.rmtree(split_dir / "images", ignore_errors=True)
        os.replace(staging / "images", split_dir / "images")
        staging.rmdir()
        labels = {"train": [train_y[i] for i in plan["train"]],
                  "val": [train_y[i] for i in plan["val"]], "test": list(test_y)}
        for split in ("train", "val", "test"):
            write_split(split_dir / f"{split}.txt", rel[split], labels[split])
        write_classnames(split_dir / "classnames.txt", raw["classes"])
        write_json(split_dir / "split_info.json", {
            "imb_ratio": self.params["imb_ratio"], "seed": self.params["seed"],
            "val_per_class": self.params["val_per_class"], "profile": plan["profile"],
            "val_overlap_with_train": {str(k): v for k, v in plan["val_overlap"].items()},
            "train_stats": stats_from_labels(labels["train"], self.num_classes),
        })
        # LIFT groups every CIFAR-100 variant by the IR-100 counts (module docstring)
        write_group_counts(split_dir, cifar_lt_profile(GROUPS_IMB_RATIO, self.num_classes,
                                                       len(train_y) // self.num_classes))
        check_or_remove(split_dir, allow_val_in_train=True)

    def image_root(self, split_dir: Path, data_root: str | None) -> Path:
        # prepare writes the images beside the split lists; data_root is not used
        return Path(split_dir)


class _Cifar100LTFixedIR(Cifar100LT):
    """CIFAR-100-LT with the imbalance ratio fixed by the registered name."""

    defaults: ClassVar[dict[str, Any]] = {
        k: v for k, v in Cifar100LT.defaults.items() if k != "imb_ratio"}


@DATASETS.register("cifar100_lt_ir100")
class Cifar100LTIR100(_Cifar100LTFixedIR):
    """CIFAR-100-LT, imbalance ratio 100 (500 -> 5 training images per class)."""

    name = "cifar100_lt_ir100"
    fixed_params: ClassVar[dict[str, Any]] = {"imb_ratio": 100}


@DATASETS.register("cifar100_lt_ir50")
class Cifar100LTIR50(_Cifar100LTFixedIR):
    """CIFAR-100-LT, imbalance ratio 50 (500 -> 10 training images per class)."""

    name = "cifar100_lt_ir50"
    fixed_params: ClassVar[dict[str, Any]] = {"imb_ratio": 50}


@DATASETS.register("cifar100_lt_ir10")
class Cifar100LTIR10(_Cifar100LTFixedIR):
    """CIFAR-100-LT, imbalance ratio 10 (500 -> 50 training images per class)."""

    name = "cifar100_lt_ir10"
    fixed_params: ClassVar[dict[str, Any]] = {"imb_ratio": 10}


