"""Real datasets: ImageNet-LT, Places-LT, iNaturalist 2018 and CIFAR-100-LT.

Split lists
    ImageNet-LT, Places-LT and iNat2018 use the OLTR split lists pinned in LIFT
    (``github.com/shijxcs/LIFT`` at :data:`LIFT_COMMIT`, folder ``datasets/``). ``prepare``
    downloads them (params ``split_base_url`` to use a mirror, or ``split_dir_local`` for a
    folder that already holds the files), checks each file's sha256 (its git blob id where
    no sha256 is pinned) and the known statistics of DESIGN §6, and only then writes
    ``train.txt``, ``val.txt``, ``test.txt`` and ``classnames.txt``. The verified originals
    are kept in ``<split_dir>/source/`` so a rerun needs no network. Split lists are
    byte-for-byte copies of LIFT's, so their sha256 is the pinned one.

Images
    Real datasets need the config key ``data_root``; ``image_root`` explains the expected
    layout when it is missing or wrong, and :func:`verify_images` checks that every listed
    image exists and that a sample decodes. ImageNet is never downloaded (licence).
    Places365-Standard and iNat2018 archives are downloaded by :func:`download_images`
    only when the config asks for it (``download_images: true``); both resume and are
    extracted with :func:`lt_bench.data.download.safe_extract_tar`. :func:`ensure_images`
    (``lt-bench check-images``, the workflow's ``verify_images`` rule) verifies and, when
    allowed, downloads what is missing first.

iNaturalist 2018: what is tuned on what
    iNat2018 has no test split: the official val list (LIFT's ``iNaturalist18_val.txt``,
    24,426 images, 3 per class) *is* the test set, so it is written as ``test.txt`` and
    nothing may be tuned on it. ``val.txt`` is built from the *training* list, chosen by
    the param ``val_policy``:

    ``"train_subset"`` (default)
        ``train.txt`` is the official list, unchanged, so training reproduces the
        published protocol exactly. ``val.txt`` is a class-balanced sample of it
        (``val_per_class`` images per class, default 3, fewer only for classes that
        have fewer; drawn with ``seed``). Because these images are also trained on, the
        dataset sets ``val_overlaps_train = True``. This val set is sound for what needs
        labelled data but no fitted head (GLA's prior estimate ``q̂`` from *zero-shot*
        logits; choosing a temperature for the zero-shot model). It is **not** sound for
        tuning knobs on the outputs of heads trained on ``train.txt`` (``tau_norm``'s τ,
        ``la_posthoc``'s τ), which would see their own training images: on this dataset
        those knobs stay at their untuned defaults (τ = 1, the Bayes-consistent value of
        logit adjustment), as in the published iNat2018 protocol, which tunes nothing.
    ``"holdout"``
        ``val.txt`` is a class-balanced sample held *out* of training (at most
        ``val_per_class`` per class, always leaving at least one training image per
        class) and ``train.txt`` is the rest: every knob can then be tuned on val, at the
        price of training on fewer images than the published protocol
        (``val_overlaps_train = False``).

    iNat labels are kept as in the split lists (category ids 0..8141, as in
    ``categories.json``); ``classnames.txt`` line ``i`` is the ``name`` of category ``i``.
    LIFT re-numbers classes by sorted name at load time; that is a permutation of ours and
    changes no metric.

CIFAR-100-LT
    Built on the user's machine from torchvision's CIFAR-100 download (param
    ``download_root``, default ``<split_dir>/cifar-100``), with LIFT's profile
    ``int(500 * IR**(-i/99))`` for class ``i`` (param ``imb_ratio``: 100, 50 or 10) and
    LIFT's sampling (``RandomState(seed)`` shuffling each class in turn; with the default
    ``seed = 0`` the training images are exactly LIFT's). ``val.txt`` is a balanced set of
    ``val_per_class`` (default 20) CIFAR-train images per class not used for training,
    taken from the same shuffle; the head classes whose training count leaves fewer than
    that many spare images (class 0 at every IR, class 1 at IR 10) have the shortfall
    filled from their own training images, and ``split_info.json`` records how many (with
    the defaults: 20 images of class 0, plus 8 of class 1 at IR 10, out of 2,000; only in
    the best-populated classes, where it matters least). No split can avoid this: class 0
    keeps all 500 of its CIFAR training images. ``test.txt`` is
    the whole CIFAR-100 test set (100 per class). Images are written as PNG files under
    ``<split_dir>/images/``, which is their image root.

    ``cifar100_lt_ir100``, ``cifar100_lt_ir50`` and ``cifar100_lt_ir10`` are the same
    dataset with the imbalance ratio fixed by the name (no ``imb_ratio`` param), so each IR
    gets its own ``resources/data/<name>/`` and its own features and runs; ``cifar100_lt``
    (``imb_ratio`` param, default 100) stays for use outside the workflow.
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, ClassVar

import numpy as np

from lt_bench.data.base import DATASETS, Dataset, get_dataset
from lt_bench.data.download import (
    ChecksumMismatchError,
    download,
    file_hash,
    hash_matches,
    is_extracted,
    parse_hash,
    safe_extract_tar,
)
from lt_bench.data.splits import (
    read_split,
    split_stats,
    stats_from_labels,
    write_classnames,
    write_split,
)
from lt_bench.io import atomic_path, write_json, write_text

log = logging.getLogger(__name__)

LIFT_COMMIT = "661ead9b78368f05ba79abe4672d63154467f823"
LIFT_BASE_URL = f"https://raw.githubusercontent.com/shijxcs/LIFT/{LIFT_COMMIT}/datasets"
SPLIT_FILES = ("train.txt", "val.txt", "test.txt")


class DataRootError(FileNotFoundError):
    """The image root is not set or does not have the expected layout."""


class SplitVerificationError(ValueError):
    """A downloaded split list does not have the pinned statistics."""


class ImageVerificationError(RuntimeError):
    """Listed images are missing or unreadable; ``.report`` holds the details."""

    def __init__(self, message: str, report: dict):
        super().__init__(message)
        self.report = report


class UnknownParamError(ValueError):
    """A dataset was given a parameter it does not know; the message lists the valid ones."""


@dataclass(frozen=True)
class SourceFile:
    """A file of LIFT's ``datasets/`` folder with its pinned checksums (DESIGN §6)."""

    relpath: str
    git_blob: str
    sha256: str | None = None

    @property
    def known_hash(self) -> str:
        # sha256 where DESIGN pins one; otherwise the git blob id, which pins it as well
        return f"sha256:{self.sha256}" if self.sha256 else f"gitblob:{self.git_blob}"

    @property
    def filename(self) -> str:
        return PurePosixPath(self.relpath).name


# --------------------------------------------------------------------- pinned constants

IMAGENET_LT_SOURCES = {
    "train": SourceFile("ImageNet_LT/ImageNet_LT_train.txt",
                        "a063f095fcd475db4cf8b0658c4b73955535bbf9"),
    "val": SourceFile("ImageNet_LT/ImageNet_LT_val.txt",
                      "3ed3188b2f44829ce2dec1cc27040d8d40984088",
                      "9af7ba688acf9532ff5845a8fb14a1e97fdc4c51ac48bc72c08ea9c3f7ff142e"),
    "test": SourceFile("ImageNet_LT/ImageNet_LT_test.txt",
                       "76a2fb9749d6cd29e765cc4f8c270f2504131e2f",
                       "d1590191cf8a71fada7b1aaedaa2d139a2aea93ff2f1b755319d0bd8dbaa55d5"),
    "classnames": SourceFile("ImageNet_LT/classnames.txt",
                             "91710b143a9ea19996f66d1b92af859f99e96e8e",
                             "89e0b642c6697a3a43a06a2bb65f9fefb3ca295ccc5f4ba9ce385f1a3a58c629"),
}
IMAGENET_LT_STATS = {
    "train": {"n_images": 115_846, "n_classes": 1000, "max_count": 1280, "min_count": 5},
    "val": {"n_images": 20_000, "n_classes": 1000, "max_count": 20, "min_count": 20},
    "test": {"n_images": 50_000, "n_classes": 1000, "max_count": 50, "min_count": 50},
}

PLACES_LT_SOURCES = {
    "train": SourceFile("Places_LT/Places_LT_train.txt",
                        "6392252f8ae867bc8a5e841cc1b29e5b8ef4b636",
                        "726c4871dcbf07ce2f857703bfe32e9a83ffbf52d704239f6d95c4f4f4c247f7"),
    "val": SourceFile("Places_LT/Places_LT_val.txt",
                      "b93a2ca58ccb7f3b671c176f395a70bf52c95533",
                      "719e3cf3766c09134ea28f56f1036c78def511ac1ed2c2532a6beef78f2439ba"),
    "test": SourceFile("Places_LT/Places_LT_test.txt",
                       "e732e58b8aa718a2c1c11933375f5710652c2b93",
                       "44eee8441c8098c59195465abede425721bc35525d75209f9433b161a6eb37bc"),
    "classnames": SourceFile("Places_LT/classnames.txt",
                             "f2d229cdfdab6b888fcbc0f1ecbd78a06ee5fd27",
                             "bee03ea5431ad49d156f159d24961f8c2787d3b7ac853b962c9cf256cafe50d1"),
}
# DESIGN §6 gives only sizes for Places-LT val/test; class coverage follows from them
PLACES_LT_STATS = {
    "train": {"n_images": 62_500, "n_classes": 365, "max_count": 4980, "min_count": 5},
    "val": {"n_images": 7_300, "n_classes": 365},
    "test": {"n_images": 36_500, "n_classes": 365},
}

INAT2018_SOURCES = {
    "train": SourceFile("iNaturalist18/iNaturalist18_train.txt",
                        "4accdb7584d2f0a5106c40a33ed6afa392189bcc"),
    # the official val list: our *test* split
    "val": SourceFile("iNaturalist18/iNaturalist18_val.txt",
                      "4c23900857fd0f5adcd4cc0dffef345039eeb05f",
                      "efaeff65f80641b60864470e6f255aa69453406ef5717eec8c6681748f3a61f3"),
    "categories": SourceFile("iNaturalist18/categories.json",
                             "5804f413dc401661710ea810d7bcd3abf4c632e2",
                             "9c7adca5cafad83bc015e21dc773580769ef641543c412708a08fd81ea99ceb0"),
}
INAT2018_STATS = {
    "train": {"n_images": 437_513, "n_classes": 8142},
    "val": {"n_images": 24_426, "n_classes": 8142, "max_count": 3, "min_count": 3},
}


@dataclass(frozen=True)
class ImageArchive:
    """An image archive that :func:`download_images` may fetch."""

    url: str
    #: ``"alg:hex"``; None where the publisher gives no checksum
    known_hash: str | None
    size_note: str


IMAGE_ARCHIVES = {
    # Places365 publishes no checksum for this archive: we check the length the server
    # announces and record the sha256 we computed beside the archive (trust on first use).
    "places_lt": ImageArchive(
        "http://data.csail.mit.edu/places/places365/places365standard_easyformat.tar",
        None, "about 105 GB"),
    "inat2018": ImageArchive(
        "https://ml-inat-competition-datasets.s3.amazonaws.com/2018/train_val2018.tar.gz",
        "md5:b1c6952ce38f31868cc50ea72d066cc3", "about 120 GB"),
}

IMAGENET_LAYOUT = """\
ImageNet-LT uses the ILSVRC-2012 (ImageNet-1k) images, which lt-bench never downloads
(licence): request access and download them at https://image-net.org/download.php.
data_root must be the ILSVRC-2012 root, with the val images sorted into class folders
(e.g. with the usual valprep.sh):
  <data_root>/train/n01440764/n01440764_10026.JPEG   (1000 class folders)
  <data_root>/val/n01440764/ILSVRC2012_val_00000293.JPEG"""

PLACES_LAYOUT = """\
Places-LT uses Places365-Standard in the "easy directory structure"
(places365standard_easyformat.tar, from http://places2.csail.mit.edu/download.html, or
set download_images: true). data_root must be its places365_standard folder (the folder that
contains places365_standard/ works too):
  <data_root>/train/airfield/00000001.jpg
  <data_root>/val/airfield/Places365_val_00000435.jpg"""

INAT_LAYOUT = """\
iNaturalist 2018 uses train_val2018.tar.gz (120 GB; from
https://github.com/visipedia/inat_comp/tree/master/2018, or set download_images: true).
data_root must be the folder that contains train_val2018/:
  <data_root>/train_val2018/Actinopterygii/2229/2c5596da5091695e44b5604c2a53c477.jpg"""


# --------------------------------------------------------------------- parameter handling


class _ParamsMixin:
    #: accepted params and their defaults
    defaults: ClassVar[dict[str, Any]] = {}

    def _resolve_params(self, params: dict[str, Any]) -> dict[str, Any]:
        unknown = sorted(set(params) - set(self.defaults))
        if unknown:
            raise UnknownParamError(
                f"dataset {self.name!r}: unknown parameter(s) {', '.join(unknown)}; "  # type: ignore[attr-defined]
                f"valid: {', '.join(sorted(self.defaults)) or '(none)'}"
            )
        return {**self.defaults, **params}


def _require_dir(data_root: str | os.PathLike | None, name: str, layout: str) -> Path:
    if data_root in (None, ""):
        raise DataRootError(
            f"dataset {name!r} needs its images: set the config key `data_root` for it "
            f"(on the CLI: --data-root).\n{layout}"
        )
    root = Path(data_root).expanduser()
    if not root.is_dir():
        raise DataRootError(f"dataset {name!r}: data_root {str(root)!r} is not a directory.\n{layout}")
    return root


def _require_subdirs(root: Path, subdirs: tuple[str, ...], name: str, layout: str) -> Path:
    missing = [d for d in subdirs if not (root / d).is_dir()]
    if missing:
        raise DataRootError(
            f"dataset {name!r}: data_root {str(root)!r} has no {', '.join(d + '/' for d in missing)}"
            f" folder.\n{layout}"
        )
    return root


# --------------------------------------------------------------------- LIFT split datasets


def fetch_source(spec: SourceFile, source_dir: Path, *, base_url: str | None,
                 local_dir: str | os.PathLike | None, progress: bool = True) -> Path:
    """Put one pinned LIFT file into ``source_dir``, verified; returns its path."""
    dest = source_dir / spec.filename
    if local_dir:
        return _copy_verified(_find_local(spec, Path(local_dir)), dest, spec.known_hash)
    url = f"{(base_url or LIFT_BASE_URL).rstrip('/')}/{spec.relpath}"
    return download(url, dest, spec.known_hash, progress=progress)


def _find_local(spec: SourceFile, local_dir: Path) -> Path:
    # Accept both a mirror of LIFT's datasets/ folder and a flat folder of the files.
    candidates = [local_dir / spec.relpath, local_dir / spec.filename]
    for c in candidates:
        if c.is_file():
            return c
    raise FileNotFoundError(
        f"split_dir_local: {spec.filename} not found; looked for "
        f"{' and '.join(str(c) for c in candidates)}"
    )


def _copy_verified(src: Path, dest: Path, known_hash: str) -> Path:
    with atomic_path(dest) as tmp:
        shutil.copyfile(src, tmp)
        ok, actual = hash_matches(tmp, known_hash)
        if not ok:
            alg, expected = parse_hash(known_hash)
            raise ChecksumMismatchError(
                f"{src}: {alg} mismatch: expected {expected}, got {actual}; "
                f"nothing was written to {dest}"
            )
    return dest


def check_stats(path: Path, expected: dict[str, int], num_classes: int) -> dict:
    """Compare a split list's statistics with the pinned ones; raise naming each difference."""
    stats = split_stats(path, num_classes)
    diffs = [f"{k}: expected {v}, got {stats[k]}" for k, v in expected.items() if stats[k] != v]
    if diffs:
        raise SplitVerificationError(
            f"{path}: statistics differ from the pinned LIFT@{LIFT_COMMIT[:7]} split "
            f"(DESIGN §6): {'; '.join(diffs)}"
        )
    return stats


def read_lift_classnames(path: Path, num_classes: int) -> list[str]:
    """LIFT's ``classnames.txt``: ``<folder> <class name words>`` per line."""
    names = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        folder, _, name = line.strip().partition(" ")
        if not name.strip():
            raise SplitVerificationError(
                f"{path}, line {lineno}: expected '<folder> <class name>', got {line!r}")
        names.append(name.strip())
    if len(names) != num_classes:
        raise SplitVerificationError(f"{path}: expected {num_classes} class names, got {len(names)}")
    return names


def read_inat_categories(path: Path, num_classes: int) -> list[str]:
    """Class names from iNat's ``categories.json``, indexed by category id.

    LIFT's file is a list of ``{"id": …, "name": …, "kingdom": …, …}`` in id order. Also
    accepted: the official ``{"categories": [...]}`` wrapper, a plain list of names, and an
    ``{id: name}`` mapping.
    """
    data = json.loads(path.read_text(encoding="utf-8"))
    if isinstance(data, dict) and "categories" in data:
        data = data["categories"]
    if isinstance(data, dict):
        by_id = {int(k): str(v) for k, v in data.items()}
    elif isinstance(data, list) and all(isinstance(x, str) for x in data):
        by_id = dict(enumerate(data))
    elif isinstance(data, list) and all(isinstance(x, dict) and "name" in x for x in data):
        by_id = {int(x.get("id", i)): str(x["name"]) for i, x in enumerate(data)}
    else:
        raise SplitVerificationError(
            f"{path}: expected a list of categories with 'name' (and 'id'), a list of names "
            f"or an {{id: name}} mapping")
    if sorted(by_id) != list(range(num_classes)):
        raise SplitVerificationError(
            f"{path}: expected category ids 0..{num_classes - 1}, got {len(by_id)} ids "
            f"ranging {min(by_id, default=None)}..{max(by_id, default=None)}")
    return [by_id[i] for i in range(num_classes)]


class LiftSplitDataset(_ParamsMixin, Dataset):
    """A dataset whose split lists are pinned files of LIFT's repository."""

    defaults: ClassVar[dict[str, Any]] = {"split_base_url": None, "split_dir_local": None}
    sources: ClassVar[dict[str, SourceFile]]
    expected_stats: ClassVar[dict[str, dict[str, int]]]
    layout: ClassVar[str]
    image_subdirs: ClassVar[tuple[str, ...]]
    #: val.txt images also appear in train.txt (only iNat2018's default policy)
    val_overlaps_train: bool = False

    def __init__(self, **params: Any):
        super().__init__(**self._resolve_params(params))

    # -- prepare

    def prepare(self, split_dir: Path) -> None:
        split_dir = Path(split_dir)
        files = self.fetch_sources(split_dir / "source")
        try:
            for role, expected in self.expected_stats.items():
                check_stats(files[role], expected, self.num_classes)
            outputs = self.build_outputs(files)
        except Exception:
            # A source that passed its checksum but not the statistics is not trusted either.
            for path in files.values():
                path.unlink(missing_ok=True)
            raise
        self.write_outputs(split_dir, files, outputs)

    def fetch_sources(self, source_dir: Path) -> dict[str, Path]:
        return {
            role: fetch_source(spec, source_dir, base_url=self.params["split_base_url"],
                               local_dir=self.params["split_dir_local"])
            for role, spec in self.sources.items()
        }

    def build_outputs(self, files: dict[str, Path]) -> dict[str, Any]:
        """What to write: split name → source file to copy, plus the class names."""
        return {
            "train.txt": files["train"], "val.txt": files["val"], "test.txt": files["test"],
            "classnames": read_lift_classnames(files["classnames"], self.num_classes),
        }

    def write_outputs(self, split_dir: Path, files: dict[str, Path], outputs: dict) -> None:
        for name in SPLIT_FILES:
            src = outputs[name]
            if isinstance(src, Path):
                with atomic_path(split_dir / name) as tmp:
                    shutil.copyfile(src, tmp)
            else:  # (paths, labels) built here
                write_split(split_dir / name, *src)
        write_classnames(split_dir / "classnames.txt", outputs["classnames"])

    # -- images

    def image_root(self, split_dir: Path, data_root: str | None) -> Path:
        root = _require_dir(data_root, self.name, self.layout)
        return _require_subdirs(root, self.image_subdirs, self.name, self.layout)


@DATASETS.register("imagenet_lt")
class ImageNetLT(LiftSplitDataset):
    name = "imagenet_lt"
    num_classes = 1000
    sources = IMAGENET_LT_SOURCES
    expected_stats = IMAGENET_LT_STATS
    layout = IMAGENET_LAYOUT
    image_subdirs = ("train", "val")


@DATASETS.register("places_lt")
class PlacesLT(LiftSplitDataset):
    name = "places_lt"
    num_classes = 365
    sources = PLACES_LT_SOURCES
    expected_stats = PLACES_LT_STATS
    layout = PLACES_LAYOUT
    image_subdirs = ("train", "val")

    def image_root(self, split_dir: Path, data_root: str | None) -> Path:
        root = _require_dir(data_root, self.name, self.layout)
        # The archive unpacks to places365_standard/; accept its parent as data_root too.
        nested = root / "places365_standard"
        if not (root / "train").is_dir() and (nested / "train").is_dir():
            root = nested
        return _require_subdirs(root, self.image_subdirs, self.name, self.layout)


def balanced_sample(labels: np.ndarray, per_class: int, seed: int, keep: int = 0) -> np.ndarray:
    """Indices of up to ``per_class`` random images of each class, sorted.

    ``keep`` images of each class are never taken (so a held-out sample leaves every
    class with training data). Vectorised: iNat2018 has 437k images in 8142 classes.
    """
    labels = np.asarray(labels, dtype=np.int64)
    rng = np.random.default_rng(seed)
    order = np.lexsort((rng.random(labels.size), labels))  # by class, random within class
    counts = np.bincount(labels)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    sorted_labels = labels[order]
    rank = np.arange(labels.size) - starts[sorted_labels]
    quota = np.minimum(per_class, np.maximum(counts - keep, 0))
    return np.sort(order[rank < quota[sorted_labels]])


@DATASETS.register("inat2018")
class INat2018(LiftSplitDataset):
    name = "inat2018"
    num_classes = 8142
    defaults = {**LiftSplitDataset.defaults,
                "val_policy": "train_subset", "val_per_class": 3, "seed": 0}
    sources = INAT2018_SOURCES
    expected_stats = INAT2018_STATS
    layout = INAT_LAYOUT
    image_subdirs = ("train_val2018",)
    head_overrides = {"epochs": 20}
    VAL_POLICIES: ClassVar[tuple[str, ...]] = ("train_subset", "holdout")

    def __init__(self, **params: Any):
        super().__init__(**params)
        policy = self.params["val_policy"]
        if policy not in self.VAL_POLICIES:
            raise UnknownParamError(
                f"dataset 'inat2018': val_policy {policy!r} is not one of "
                f"{', '.join(self.VAL_POLICIES)}")
        self.val_overlaps_train = policy == "train_subset"

    def build_outputs(self, files: dict[str, Path]) -> dict[str, Any]:
        paths, labels = read_split(files["train"], self.num_classes)
        keep = 1 if self.params["val_policy"] == "holdout" else 0
        val_idx = balanced_sample(np.asarray(labels), int(self.params["val_per_class"]),
                                  int(self.params["seed"]), keep=keep)
        val = ([paths[i] for i in val_idx], [labels[i] for i in val_idx])
        if keep:
            held = np.zeros(len(paths), dtype=bool)
            held[val_idx] = True
            train: Any = ([p for p, h in zip(paths, held, strict=True) if not h],
                          [y for y, h in zip(labels, held, strict=True) if not h])
        else:
            train = files["train"]  # unchanged official list
        return {
            "train.txt": train, "val.txt": val,
            "test.txt": files["val"],  # the official val list is the test set
            "classnames": read_inat_categories(files["categories"], self.num_classes),
        }


# --------------------------------------------------------------------- CIFAR-100-LT


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
class Cifar100LT(_ParamsMixin, Dataset):
    name = "cifar100_lt"
    num_classes = 100
    defaults = {"imb_ratio": 100, "seed": 0, "val_per_class": 20, "download_root": None}
    val_overlaps_train: bool = False

    def __init__(self, **params: Any):
        super().__init__(**self._resolve_params(params))
        if float(self.params["imb_ratio"]) < 1:
            raise ValueError(f"dataset 'cifar100_lt': imb_ratio must be >= 1 "
                             f"(e.g. 100, 50, 10), got {self.params['imb_ratio']!r}")

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

    def image_root(self, split_dir: Path, data_root: str | None) -> Path:
        # prepare writes the images beside the split lists; data_root is not used
        return Path(split_dir)


class _Cifar100LTFixedIR(Cifar100LT):
    """CIFAR-100-LT with the imbalance ratio fixed by the registered name."""

    fixed_imb_ratio: ClassVar[int]
    defaults = {k: v for k, v in Cifar100LT.defaults.items() if k != "imb_ratio"}

    def __init__(self, **params: Any):
        Dataset.__init__(self, **self._resolve_params(params), imb_ratio=self.fixed_imb_ratio)


@DATASETS.register("cifar100_lt_ir100")
class Cifar100LTIR100(_Cifar100LTFixedIR):
    """CIFAR-100-LT, imbalance ratio 100 (500 -> 5 training images per class)."""

    name = "cifar100_lt_ir100"
    fixed_imb_ratio = 100


@DATASETS.register("cifar100_lt_ir50")
class Cifar100LTIR50(_Cifar100LTFixedIR):
    """CIFAR-100-LT, imbalance ratio 50 (500 -> 10 training images per class)."""

    name = "cifar100_lt_ir50"
    fixed_imb_ratio = 50


@DATASETS.register("cifar100_lt_ir10")
class Cifar100LTIR10(_Cifar100LTFixedIR):
    """CIFAR-100-LT, imbalance ratio 10 (500 -> 50 training images per class)."""

    name = "cifar100_lt_ir10"
    fixed_imb_ratio = 10


# --------------------------------------------------------------------- image checks


class _DirListing:
    """File names per directory, listed once with ``os.scandir`` (ImageNet-LT: ~186k paths)."""

    def __init__(self, root: Path):
        self.root = root
        self._cache: dict[str, frozenset[str]] = {}

    def _names(self, rel_dir: str) -> frozenset[str]:
        if rel_dir not in self._cache:
            try:
                with os.scandir(self.root / rel_dir) as it:
                    self._cache[rel_dir] = frozenset(e.name for e in it if e.is_file())
            except (FileNotFoundError, NotADirectoryError):
                self._cache[rel_dir] = frozenset()
        return self._cache[rel_dir]

    def exists(self, rel: str) -> bool:
        rel_dir, _, name = rel.rpartition("/")
        return name in self._names(rel_dir)


def _decode_error(path: Path) -> str | None:
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.load()  # full decode: catches truncated files, which verify() does not
    except Exception as err:  # noqa: BLE001 - any decoder failure means "unreadable"
        return f"{type(err).__name__}: {err}"
    return None


def verify_images(dataset_name: str, split_dir: str | os.PathLike,
                  data_root: str | os.PathLike | None, sample: int = 200, *,
                  seed: int = 0, strict: bool = False, params: dict | None = None) -> dict:
    """Check that every image in the split lists exists and that a sample decodes.

    Returns a report: ``ok``, ``image_root``, per-split ``n_listed``/``n_missing``, totals,
    ``missing_examples`` and ``corrupt_examples`` (at most 10 each) and ``error`` (a
    message naming the problems and the expected layout, or None). With ``strict`` a
    failed check raises :class:`ImageVerificationError` carrying the report.
    """
    ds = get_dataset(dataset_name, **(params or {}))
    split_dir = Path(split_dir)
    root = ds.image_root(split_dir, None if data_root is None else str(data_root))
    listing = _DirListing(root)
    report: dict[str, Any] = {"dataset": dataset_name, "image_root": str(root),
                              "split_dir": str(split_dir), "splits": {}}
    present: list[str] = []
    missing: list[str] = []
    for split in ds.splits:
        paths, _ = read_split(split_dir / f"{split}.txt")
        gone = [p for p in paths if not listing.exists(p)]
        report["splits"][split] = {"n_listed": len(paths), "n_missing": len(gone)}
        missing += gone
        present += [p for p in paths if listing.exists(p)]
    present = sorted(set(present))  # iNat's default val is a subset of train
    chosen = random.Random(seed).sample(present, min(sample, len(present)))
    corrupt = [(p, err) for p in chosen if (err := _decode_error(root / p))]
    report.update({
        "n_listed": sum(s["n_listed"] for s in report["splits"].values()),
        "n_missing": len(missing), "missing_examples": missing[:10],
        "n_sampled": len(chosen), "n_corrupt": len(corrupt),
        "corrupt_examples": [{"path": p, "error": e} for p, e in corrupt[:10]],
    })
    report["ok"] = not missing and not corrupt
    report["error"] = None if report["ok"] else _image_problem_message(ds, report)
    if strict and not report["ok"]:
        raise ImageVerificationError(report["error"], report)
    return report


def _image_problem_message(ds: Dataset, report: dict) -> str:
    lines = [f"dataset {report['dataset']!r}: images under {report['image_root']} failed checks:"]
    if report["n_missing"]:
        lines.append(f"  {report['n_missing']} of {report['n_listed']} listed images are missing, e.g.:")
        lines += [f"    {p}" for p in report["missing_examples"]]
    if report["n_corrupt"]:
        lines.append(f"  {report['n_corrupt']} of {report['n_sampled']} sampled images "
                     "could not be decoded:")
        lines += [f"    {c['path']}: {c['error']}" for c in report["corrupt_examples"]]
    layout = getattr(ds, "layout", None)
    if layout:
        lines.append(layout)
    return "\n".join(lines)


# --------------------------------------------------------------------- image downloads


def download_images(dataset: str, data_root: str | os.PathLike, *,
                    download_dir: str | os.PathLike | None = None, keep_archive: bool = True,
                    progress: bool = True) -> dict:
    """Download and safely extract a dataset's image archive into ``data_root``.

    Only for datasets in :data:`IMAGE_ARCHIVES` (Places-LT, iNat2018), and only to be
    called when the config asks for it (``download_images: true``). Resumable; the archive is
    verified (md5 for iNat2018; Places365 publishes no checksum, so its length is checked
    and the sha256 we compute is recorded in ``<archive>.sha256`` and checked on later
    runs). Returns what was done, with the archive's digest.
    """
    if dataset not in IMAGE_ARCHIVES:
        raise ValueError(_no_download_message(dataset))
    spec = IMAGE_ARCHIVES[dataset]
    data_root = Path(data_root).expanduser()
    archive = Path(download_dir or data_root / ".downloads") / PurePosixPath(spec.url).name
    result = {"dataset": dataset, "data_root": str(data_root), "archive": str(archive),
              "url": spec.url}
    if is_extracted(archive, data_root):
        return {**result, "status": "already extracted"}
    log.info("downloading %s (%s) to %s", spec.url, spec.size_note, archive)
    if spec.known_hash is not None:
        download(spec.url, archive, spec.known_hash, progress=progress)
        result["checksum"] = spec.known_hash
    else:
        result.update(_download_unchecksummed(spec.url, archive, progress))
    safe_extract_tar(archive, data_root)
    if not keep_archive:
        archive.unlink()
    return {**result, "status": "extracted"}


def _download_unchecksummed(url: str, archive: Path, progress: bool) -> dict:
    record = archive.with_name(archive.name + ".sha256")
    recorded = record.read_text().split()[0] if record.exists() else None
    download(url, archive, f"sha256:{recorded}" if recorded else None, progress=progress)
    if recorded:
        return {"checksum": f"sha256:{recorded}", "checksum_source": str(record)}
    digest = file_hash(archive, "sha256")
    write_text(record, f"{digest}  {archive.name}\n")
    log.warning("%s: the publisher gives no checksum; verified the length only. "
                "Computed sha256 %s, recorded in %s", url, digest, record)
    return {"checksum": f"sha256:{digest}", "checksum_source": "computed (none published)"}


def ensure_images(dataset: str, split_dir: str | os.PathLike,
                  data_root: str | os.PathLike | None, *, params: dict | None = None,
                  download: bool = False, sample: int = 200, seed: int = 0) -> dict:
    """Verify a dataset's images; with ``download``, fetch missing Places/iNat images first.

    Returns the :func:`verify_images` report (plus ``download`` when something was
    downloaded). Raises :class:`DataRootError` (no or wrong ``data_root``) or
    :class:`ImageVerificationError` (missing or unreadable images) with a message saying
    what is missing, where it was looked for and how to get it.
    """
    try:
        report = verify_images(dataset, split_dir, data_root, sample=sample, seed=seed,
                               params=params)
        if report["ok"]:
            return report
        problem: Exception = ImageVerificationError(report["error"], report)
    except DataRootError as err:
        if data_root in (None, ""):
            raise  # nowhere to put a download either
        problem = err
    if not download or dataset not in IMAGE_ARCHIVES:
        if dataset in IMAGE_ARCHIVES:
            hint = (f"\nlt-bench can download them: set the config key download_images: true "
                    f"(or run `lt-bench data download-images {dataset} --data-root {data_root}`).")
            if isinstance(problem, ImageVerificationError):
                raise ImageVerificationError(str(problem) + hint, problem.report) from None
            raise DataRootError(str(problem) + hint) from None
        raise problem
    log.warning("images of %s are missing under %s (%s); downloading them", dataset,
                data_root, str(problem).splitlines()[0])
    Path(data_root).expanduser().mkdir(parents=True, exist_ok=True)
    fetched = download_images(dataset, data_root)
    report = verify_images(dataset, split_dir, data_root, sample=sample, seed=seed,
                           params=params, strict=True)
    return {**report, "download": fetched}


def _no_download_message(dataset: str) -> str:
    if dataset == "imagenet_lt":
        return ("imagenet_lt: ImageNet is never downloaded by lt-bench (licence); "
                "set data_root to your copy.\n" + IMAGENET_LAYOUT)
    if dataset == "cifar100_lt":
        return "cifar100_lt: images are written by `prepare` from torchvision's CIFAR-100 download"
    return (f"dataset {dataset!r} has no image archive to download; datasets with one: "
            f"{', '.join(sorted(IMAGE_ARCHIVES))}")
