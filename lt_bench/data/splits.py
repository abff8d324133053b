"""Split lists in the OLTR format and class-name files.

A split list has one ``relative/path label`` per line. Labels are integers in
``[0, num_classes)``. A path is everything before the *last* run of whitespace, so a
path with inner spaces survives (the ImageNet/Places/iNat lists have none, but user
datasets may). ``classnames.txt`` has one class name per line; line ``i`` names
label ``i``.

Data groups follow the paper: *many* = classes with more than 100 training images,
*medium* = 20 to 100 inclusive, *few* = fewer than 20. A dataset whose groups are defined
by other counts than its own training counts (CIFAR-100-LT at IR 10 and 50, which LIFT
groups by the IR-100 counts) writes them to ``group_counts.txt`` beside the lists
(:func:`write_group_counts` / :func:`read_group_counts`).

``prepare`` ends with :func:`check_split_integrity`: no path listed twice in a split, no
path in two splits (val inside train only where the dataset says so), every class with at
least one training image, every label in ``0..K-1``. It records what it found in
``splits_check.json``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from lt_bench.errors import InputValidationError
from lt_bench.io import atomic_path, sha256_file, write_json

#: a class is "many" above this many training images
MANY_ABOVE = 100
#: a class is "few" below this many training images
FEW_BELOW = 20


class SplitFormatError(InputValidationError):
    """A split list or class-name file is malformed; the message names file and line."""


class SplitIntegrityError(InputValidationError):
    """Split lists that parse but would give wrong numbers (duplicates, overlap between
    splits, a class without training images); the message names files and examples."""


def _where(path: str | os.PathLike, lineno: int) -> str:
    return f"{path}, line {lineno}"


def parse_split_line(line: str, path: str | os.PathLike = "<split>", lineno: int = 0,
                     num_classes: int | None = None) -> tuple[str, int]:
    """Parse one ``relative/path label`` line (split on the last whitespace)."""
    text = line.strip()
    parts = text.rsplit(None, 1)
    if len(parts) != 2:
        raise SplitFormatError(
            f"{_where(path, lineno)}: expected 'relative/path label', got {text!r}"
        )
    rel, raw_label = parts
    try:
        label = int(raw_label)
    except ValueError:
        raise SplitFormatError(
            f"{_where(path, lineno)}: label {raw_label!r} is not an integer "
            f"(expected 'relative/path label')"
        ) from None
    if label < 0 or (num_classes is not None and label >= num_classes):
        bound = f"[0, {num_classes})" if num_classes is not None else ">= 0"
        raise SplitFormatError(f"{_where(path, lineno)}: label {label} is out of range {bound}")
    check_relative(rel, _where(path, lineno))
    return rel, label


def check_relative(rel: str, where: str) -> None:
    """A listed path stays under the image root: no absolute path, no ``..`` part (the
    lists are joined to data_root, so either would read images from elsewhere)."""
    parts = rel.replace("\\", "/").split("/")
    if rel.startswith(("/", "\\")) or rel[1:2] == ":" and rel[0].isalpha() or ".." in parts:
        raise SplitFormatError(
            f"{where}: path {rel!r} leaves the image root; expected a path relative to it "
            "without '..' (as 'train/class/image.jpg')")


def _read_text_lines(path: str | os.PathLike) -> list[str]:
    """The lines of a UTF-8 text file (a leading BOM dropped); any other encoding is an
    error naming the file (a Latin-1 or UTF-16 list would otherwise give a bare codec
    error, or paths full of NUL characters)."""
    try:
        text = Path(path).read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise SplitFormatError(f"{path}: not UTF-8 text (byte {e.start}: {e.reason}); "
                               "expected a UTF-8 file (re-save it as UTF-8)") from None
    if "\0" in text:
        raise SplitFormatError(f"{path}: holds NUL characters (UTF-16?); expected a UTF-8 "
                               "file (re-save it as UTF-8)")
    # split on newlines only: str.splitlines() would also split inside a path on \x1c, \x85...
    return [line.rstrip("\r") for line in text.split("\n")]


def read_split(path: str | os.PathLike, num_classes: int | None = None
               ) -> tuple[list[str], list[int]]:
    """Read a split list; returns ``(relative_paths, labels)``.

    Blank lines are skipped (a trailing newline is normal). Any other malformed line
    raises :class:`SplitFormatError` naming the file and its 1-based line number.
    """
    paths: list[str] = []
    labels: list[int] = []
    for lineno, line in enumerate(_read_text_lines(path), start=1):
        if not line.strip():
            continue
        rel, label = parse_split_line(line, path, lineno, num_classes)
        paths.append(rel)
        labels.append(label)
    return paths, labels


def write_split(path: str | os.PathLike, paths: Sequence[str], labels: Sequence[int]) -> None:
    """Write a split list atomically; refuses entries that could not be read back."""
    if len(paths) != len(labels):
        raise SplitFormatError(f"{path}: {len(paths)} paths but {len(labels)} labels")
    lines = []
    for i, (rel, label) in enumerate(zip(paths, labels, strict=True)):
        # A path with a newline, or with leading/trailing whitespace, would not parse back.
        if not rel or "\n" in rel or "\r" in rel or rel != rel.strip():
            raise SplitFormatError(f"{path}: entry {i}: path {rel!r} cannot be written to a "
                                   "split list")
        lines.append(f"{rel} {int(label)}\n")
    with atomic_path(path) as tmp:
        tmp.write_text("".join(lines), encoding="utf-8")


def class_counts(labels: Sequence[int] | np.ndarray, num_classes: int) -> np.ndarray:
    """Images per class as an int64 array of length ``num_classes``."""
    arr = np.asarray(labels, dtype=np.int64)
    if arr.size and (arr.min() < 0 or arr.max() >= num_classes):
        bad = int(arr.max()) if arr.max() >= num_classes else int(arr.min())
        raise SplitIntegrityError(f"label {bad} is out of range [0, {num_classes})")
    return np.bincount(arr, minlength=num_classes)


def group_of_count(count: int) -> str:
    """D-group of a class from its training-image count: 'many', 'medium' or 'few'."""
    if count > MANY_ABOVE:
        return "many"
    if count >= FEW_BELOW:
        return "medium"
    return "few"


def group_counts(counts: np.ndarray) -> dict[str, int]:
    """How many classes fall in each D-group."""
    counts = np.asarray(counts)
    return {
        "many": int((counts > MANY_ABOVE).sum()),
        "medium": int(((counts >= FEW_BELOW) & (counts <= MANY_ABOVE)).sum()),
        "few": int((counts < FEW_BELOW).sum()),
    }


def stats_from_labels(labels: Sequence[int], num_classes: int | None = None) -> dict:
    """Statistics of a label list; see :func:`split_stats`."""
    arr = np.asarray(labels, dtype=np.int64)
    k = num_classes if num_classes is not None else (int(arr.max()) + 1 if arr.size else 0)
    counts = class_counts(arr, k)
    max_count = int(counts.max()) if k else 0
    min_count = int(counts.min()) if k else 0
    return {
        "n_images": int(arr.size),
        # classes that actually have images: a class missing from a split shows up here
        "n_classes": int((counts > 0).sum()),
        "max_count": max_count,
        "min_count": min_count,
        # None rather than inf when a class is empty: inf is not valid JSON
        "imbalance_ratio": (max_count / min_count) if min_count else None,
        **group_counts(counts),
    }


def split_stats(path: str | os.PathLike, num_classes: int | None = None) -> dict:
    """Statistics of a split list.

    Keys: ``n_images``, ``n_classes`` (classes with at least one image), ``max_count``,
    ``min_count``, ``imbalance_ratio`` (max/min; None if a class is empty), and
    ``many`` / ``medium`` / ``few`` (number of classes per D-group). Counts run over
    ``num_classes`` classes when given, else over ``0..max label``; classes with no
    image count as ``min_count = 0`` and as *few*.
    """
    _, labels = read_split(path, num_classes)
    return stats_from_labels(labels, num_classes)


def split_hash(path: str | os.PathLike) -> str:
    """sha256 of a split file (recorded in feature metadata to tie features to splits)."""
    return sha256_file(path)


def read_classnames(path: str | os.PathLike, num_classes: int | None = None) -> list[str]:
    """Read ``classnames.txt`` (one name per line; line i names label i)."""
    names = _read_text_lines(path)
    while names and not names[-1].strip():  # tolerate trailing blank lines only
        names.pop()
    for lineno, name in enumerate(names, start=1):
        if not name.strip():
            raise SplitFormatError(f"{_where(path, lineno)}: empty class name")
    if num_classes is not None and len(names) != num_classes:
        raise SplitFormatError(f"{path}: expected {num_classes} class names, found {len(names)}")
    return [n.strip() for n in names]


def write_classnames(path: str | os.PathLike, names: Sequence[str]) -> None:
    """Write ``classnames.txt`` atomically, one name per line."""
    for i, name in enumerate(names):
        if not name.strip() or "\n" in name or "\r" in name:
            raise SplitFormatError(f"{path}: class {i} has an invalid name {name!r}")
    with atomic_path(path) as tmp:
        tmp.write_text("".join(f"{n.strip()}\n" for n in names), encoding="utf-8")


# ----------------------------------------------------------------------------- group counts

GROUP_COUNTS_FILE = "group_counts.txt"


def write_group_counts(split_dir: str | os.PathLike, counts: Sequence[int]) -> None:
    """Write ``group_counts.txt``: one integer per class, class-id order (the training
    counts that define the Many/Medium/Few groups, when they are not the split's own)."""
    with atomic_path(Path(split_dir) / GROUP_COUNTS_FILE) as tmp:
        tmp.write_text("".join(f"{int(c)}\n" for c in counts), encoding="utf-8")


def read_group_counts(split_dir: str | os.PathLike) -> np.ndarray | None:
    """The group-defining counts of ``split_dir/group_counts.txt`` (int64, one per class),
    or None when the file is absent (the groups then come from train.txt's own counts)."""
    path = Path(split_dir) / GROUP_COUNTS_FILE
    if not path.exists():
        return None
    values = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            value = int(line)
        except ValueError:
            raise SplitFormatError(f"{_where(path, lineno)}: expected one integer count per "
                                   f"class, got {line.strip()!r}") from None
        if value < 0:
            raise SplitFormatError(f"{_where(path, lineno)}: count {value} is negative")
        values.append(value)
    return np.asarray(values, dtype=np.int64)


# ----------------------------------------------------------------------------- integrity

SPLITS_CHECK_FILE = "splits_check.json"
_EXAMPLES = 5  # how many offending paths a message shows


def _examples(items: Sequence[str]) -> str:
    shown = ", ".join(repr(x) for x in items[:_EXAMPLES])
    return shown + (", ..." if len(items) > _EXAMPLES else "")


def _duplicates(paths: Sequence[str]) -> dict[str, int]:
    seen: dict[str, int] = {}
    for p in paths:
        seen[p] = seen.get(p, 0) + 1
    return {p: n for p, n in seen.items() if n > 1}


def check_split_integrity(split_dir: Path, *, allow_val_in_train: bool = False) -> dict:
    """Check the split lists of ``split_dir`` against each other; write ``splits_check.json``.

    Refused with :class:`SplitIntegrityError` (each of these once gave a "finished"
    run with wrong numbers): a path listed twice in one split; a path in two splits (a
    test image that is also a train image inflates every metric); a class with no
    training image (``log pi = -inf`` for it). Labels outside ``0..K-1``, with K the number
    of lines of ``classnames.txt``, raise :class:`SplitFormatError` naming file and line.

    ``allow_val_in_train`` is for datasets whose val split is documented to share images
    with train (iNat2018's ``train_subset`` policy, where val is a subset of train, and
    CIFAR-100-LT's head classes); the overlap is then recorded, not refused. Returns (and
    writes) ``{"num_classes", "n_images": {split: n}, "val_in_train",
    "val_subset_of_train", "val_in_train_allowed"}``.
    """
    split_dir = Path(split_dir)
    for required in ("classnames.txt", "train.txt"):
        if not (split_dir / required).is_file():
            raise SplitIntegrityError(f"{split_dir}: no {required}; expected the output of "
                                      f"`lt-bench prepare`")
    names = read_classnames(split_dir / "classnames.txt")
    k = len(names)
    lists = {s: read_split(split_dir / f"{s}.txt", num_classes=k)
             for s in ("train", "val", "test") if (split_dir / f"{s}.txt").exists()}
    for split, (paths, _) in lists.items():
        dups = _duplicates(paths)
        if dups:
            extra = sum(dups.values()) - len(dups)
            raise SplitIntegrityError(
                f"{split_dir / f'{split}.txt'}: {len(dups)} path(s) listed more than once "
                f"({extra} duplicate line(s)), e.g. "
                + ", ".join(f"{p!r} x{n}" for p, n in list(dups.items())[:_EXAMPLES])
                + "; expected each image once per split")
    sets = {s: set(paths) for s, (paths, _) in lists.items()}
    val_in_train = 0
    for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
        if a not in sets or b not in sets:
            continue
        both = sorted(sets[a] & sets[b])
        if not both:
            continue
        if (a, b) == ("train", "val") and allow_val_in_train:
            val_in_train = len(both)
            continue
        raise SplitIntegrityError(
            f"{split_dir}: {len(both)} path(s) are in both {a}.txt and {b}.txt, e.g. "
            f"{_examples(both)}; expected disjoint splits (an image evaluated on that was "
            f"also {'trained' if a == 'train' else 'tuned'} on makes the numbers wrong)")
    empty = np.flatnonzero(class_counts(lists["train"][1], k) == 0)
    if empty.size:
        shown = ", ".join(f"{c} ({names[c]})" for c in empty[:_EXAMPLES].tolist())
        raise SplitIntegrityError(
            f"{split_dir / 'train.txt'}: {empty.size} class(es) have no training image: "
            f"{shown}{', ...' if empty.size > _EXAMPLES else ''}; expected at least one "
            f"training image per class of classnames.txt ({k} classes)")
    report = {
        "num_classes": k,
        "n_images": {s: len(paths) for s, (paths, _) in lists.items()},
        "val_in_train": val_in_train,
        "val_subset_of_train": bool(val_in_train) and val_in_train == len(sets.get("val", ())),
        "val_in_train_allowed": allow_val_in_train,
    }
    write_json(split_dir / SPLITS_CHECK_FILE, report)
    return report


#: what `lt-bench prepare` (every dataset) and the workflow write into a split folder:
#: the lists, their checks, the toy/CIFAR images and their staging folder, the LIFT
#: sources, the image check of `verify-images --out`
SPLIT_FOLDER_ENTRIES = frozenset({
    "train.txt", "val.txt", "test.txt", "classnames.txt", SPLITS_CHECK_FILE,
    GROUP_COUNTS_FILE, "toy_meta.json", "split_info.json", "images", ".images.partial",
    "cifar-100", "source", "images_verified.json"})


def is_split_folder(folder: Path) -> bool:
    """Does ``folder`` hold only what lt-bench writes into a split folder (and the hidden
    temp files of its atomic writes)?"""
    return all(p.name in SPLIT_FOLDER_ENTRIES or (p.name.startswith(".")
                                                  and p.name.endswith(".part"))
               for p in Path(folder).iterdir())


def check_split_out(folder: str | os.PathLike) -> None:
    """``prepare --out``: a new, empty or earlier split folder; never a user's folder."""
    from lt_bench.io import check_output_folder

    check_output_folder(folder, is_split_folder, "split folder")


def check_or_remove(split_dir: Path, *, allow_val_in_train: bool = False) -> dict:
    """:func:`check_split_integrity` for ``prepare``: on a refusal, the split lists and
    ``classnames.txt`` it just wrote are removed, so no later stage can read them."""
    try:
        return check_split_integrity(split_dir, allow_val_in_train=allow_val_in_train)
    except InputValidationError:
        for name in ("train.txt", "val.txt", "test.txt", "classnames.txt"):
            (Path(split_dir) / name).unlink(missing_ok=True)
        raise
