"""A smoke run's split lists (lt_bench/smoke.py): a few images of every class, so K and
every shape stay the real ones."""

from __future__ import annotations

from pathlib import Path


def subsample_split(paths: list[str], labels: list[int], n: int) -> tuple[list[str], list[int]]:
    """The first ``n`` images of every class, in list order (deterministic, all classes)."""
    seen: dict[int, int] = {}
    keep_p, keep_y = [], []
    for p, y in zip(paths, labels, strict=True):
        if seen.get(y, 0) < n:
            seen[y] = seen.get(y, 0) + 1
            keep_p.append(p)
            keep_y.append(y)
    return keep_p, keep_y


def subsample_splits(split_dir: str | Path, limits: dict[str, int], *,
                     allow_val_in_train: bool = False) -> dict[str, int]:
    """Rewrite a prepared folder's split lists to at most ``limits[split]`` per class."""
    from lt_bench.data.splits import check_or_remove, read_split, write_split

    split_dir = Path(split_dir)
    sizes = {}
    for split, n in limits.items():
        f = split_dir / f"{split}.txt"
        if not f.is_file():
            continue
        paths, labels = read_split(f)
        paths, labels = subsample_split(list(paths), [int(y) for y in labels], n)
        write_split(f, paths, labels)
        sizes[split] = len(paths)
    # splits_check.json describes the lists as they now are
    check_or_remove(split_dir, allow_val_in_train=allow_val_in_train)
    return sizes
