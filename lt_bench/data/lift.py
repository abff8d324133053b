"""The LIFT-list datasets: ImageNet-LT, Places-LT and iNaturalist 2018.

Split lists
    These datasets use the OLTR split lists pinned in LIFT (``github.com/shijxcs/LIFT`` at
    :data:`LIFT_COMMIT`, folder ``datasets/``). ``prepare`` downloads them (params
    ``split_base_url`` to use a mirror, or ``split_dir_local`` for a folder that already
    holds the files), checks each file's sha256 (its git blob id where no sha256 is
    pinned) and the known statistics of docs/architecture.md §6, and only then writes ``train.txt``,
    ``val.txt``, ``test.txt`` and ``classnames.txt``, which
    :func:`~lt_bench.data.splits.check_split_integrity` then checks against each other.
    The verified originals are kept in ``<split_dir>/source/`` so a rerun needs no
    network. Split lists are byte-for-byte copies of LIFT's, so their sha256 is the pinned
    one. Images live under the user's ``data_root`` (``needs_data_root``); ``image_root``
    explains the expected layout when it is missing or wrong (checks and downloads:
    :mod:`lt_bench.data.images`).

iNaturalist 2018: what is tuned on what
    iNat2018 has no test split: the official val list (LIFT's ``iNaturalist18_val.txt``,
    24,426 images, 3 per class) *is* the test set, so it is written as ``test.txt`` and
    nothing may be tuned on it. ``val.txt`` is built from the *training* list, chosen by
    the param ``val_policy``:

    ``"train_subset"`` (default)
        ``train.txt`` is the official list, unchanged, so training reproduces the
        published protocol exactly. ``val.txt`` is a class-balanced sample of it
        (``val_per_class`` images per class, default 3, fewer only for classes that
        have fewer; drawn with ``seed``). Because these images are also trained on,
        ``val_overlaps_train`` is True (and the integrity check records val ⊂ train
        instead of refusing it). This val set is sound for what needs labelled data but
        no fitted head (GLA's prior estimate ``q̂`` from *zero-shot* logits; choosing a
        temperature for the zero-shot model). It is **not** sound for tuning knobs on the
        outputs of heads trained on ``train.txt`` (``tau_norm``'s τ, ``la_posthoc``'s τ),
        which would see their own training images: on this dataset those knobs stay at
        their untuned defaults (τ = 1, the Bayes-consistent value of logit adjustment), as
        in the published iNat2018 protocol, which tunes nothing.
    ``"holdout"``
        ``val.txt`` is a class-balanced sample held *out* of training (at most
        ``val_per_class`` per class, always leaving at least one training image per
        class) and ``train.txt`` is the rest: every knob can then be tuned on val, at the
        price of training on fewer images than the published protocol
        (``val_overlaps_train`` is False).

    iNat labels are kept as in the split lists (category ids 0..8141, as in
    ``categories.json``); ``classnames.txt`` line ``i`` is the ``name`` of category ``i``.
    LIFT re-numbers classes by sorted name at load time; that is a permutation of ours and
    changes no metric.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from lt_bench.data.base import DATASETS, DataRootError, Dataset, DatasetParamError
from lt_bench.data.download import ChecksumMismatchError, download, hash_matches, parse_hash
from lt_bench.data.lift_pins import (  # noqa: F401  (re-exported)
    IMAGENET_LAYOUT,
    IMAGENET_LT_SOURCES,
    IMAGENET_LT_STATS,
    INAT2018_SOURCES,
    INAT2018_STATS,
    INAT_LAYOUT,
    LIFT_BASE_URL,
    LIFT_COMMIT,
    PLACES_LAYOUT,
    PLACES_LT_SOURCES,
    PLACES_LT_STATS,
    SourceFile,
)
from lt_bench.data.splits import (
    check_or_remove,
    read_split,
    split_stats,
    write_classnames,
    write_split,
)
from lt_bench.errors import InputValidationError, UserError
from lt_bench.io import atomic_path

SPLIT_FILES = ("train.txt", "val.txt", "test.txt")

class SplitVerificationError(InputValidationError):
    """A downloaded split list does not have the pinned statistics."""


class SourceNotFoundError(UserError, FileNotFoundError):
    """A pinned file is missing from the user's ``split_dir_local`` folder."""


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
        return _copy_verified(find_local_source(spec, Path(local_dir)), dest, spec.known_hash)
    url = f"{(base_url or LIFT_BASE_URL).rstrip('/')}/{spec.relpath}"
    return download(url, dest, spec.known_hash, progress=progress)


def find_local_source(spec: SourceFile, local_dir: Path) -> Path:
    # Accept both a mirror of LIFT's datasets/ folder and a flat folder of the files.
    candidates = [local_dir / spec.relpath, local_dir / spec.filename]
    for c in candidates:
        if c.is_file():
            return c
    raise SourceNotFoundError(
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
            f"(docs/architecture.md §6): {'; '.join(diffs)}"
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


class LiftSplitDataset(Dataset):
    """A dataset whose split lists are pinned files of LIFT's repository."""

    #: ``verify_sources: false`` takes the lists in ``split_dir_local`` as they are (no
    #: pinned checksum, no pinned statistics; the class count and every integrity check
    #: stay): a user's own relabelled copy, or the synthetic real-layout lists of the tests
    defaults: ClassVar[dict[str, Any]] = {"split_base_url": None, "split_dir_local": None,
                                          "verify_sources": True}
    needs_data_root = True
    sources: ClassVar[dict[str, SourceFile]]
    expected_stats: ClassVar[dict[str, dict[str, int]]]
    layout: ClassVar[str]
    image_subdirs: ClassVar[tuple[str, ...]]

    # -- prepare

    def prepare(self, split_dir: Path) -> None:
        split_dir = Path(split_dir)
        files = self.fetch_sources(split_dir / "source")
        try:
            for role, expected in self.expected_stats.items():
                if self.params["verify_sources"]:
                    check_stats(files[role], expected, self.num_classes)
            outputs = self.build_outputs(files)
        except Exception:
            # A source that passed its checksum but not the statistics is not trusted either.
            for path in files.values():
                path.unlink(missing_ok=True)
            raise
        self.write_outputs(split_dir, files, outputs)

    def check_params(self) -> None:
        if not self.params["verify_sources"] and not self.params["split_dir_local"]:
            raise DatasetParamError(
                f"dataset {self.name!r}: verify_sources: false needs split_dir_local (lists "
                "downloaded from LIFT are always checked against their pinned hashes)")

    def fetch_sources(self, source_dir: Path) -> dict[str, Path]:
        if not self.params["verify_sources"]:
            local = Path(self.params["split_dir_local"])
            out = {}
            for role, spec in self.sources.items():
                out[role] = source_dir / spec.filename
                with atomic_path(out[role]) as tmp:
                    shutil.copyfile(find_local_source(spec, local), tmp)
            return out
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
        check_or_remove(split_dir, allow_val_in_train=self.val_overlaps_train)

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
    VAL_POLICIES: ClassVar[tuple[str, ...]] = ("train_subset", "holdout")

    def check_params(self) -> None:
        super().check_params()
        policy = self.params["val_policy"]
        if policy not in self.VAL_POLICIES:
            raise DatasetParamError(
                f"dataset 'inat2018': val_policy {policy!r} is not one of "
                f"{', '.join(self.VAL_POLICIES)}")

    @property
    def val_overlaps_train(self) -> bool:
        return self.params["val_policy"] == "train_subset"

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


