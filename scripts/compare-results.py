#!/usr/bin/env python3
"""Compare two results folders run by run: every ``metrics.json`` and ``per_class.parquet``.

    python scripts/compare-results.py BEFORE/results AFTER/results

A refactor must keep every number identical (CONTRIBUTING.md, "Numbers unchanged unless
on purpose"). Wall-clock fields (``started_at``, ``finished_at``, ``*_seconds``,
``*_per_second``) are not
numbers of the science and are skipped; everything else is compared exactly (floats bit
for bit, after JSON). Exit 0 when identical, 1 with one line per difference otherwise.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pyarrow.parquet as pq

#: fields that measure the machine, not the science
WALL_CLOCK = ("started_at", "finished_at")


def _timing(key: str) -> bool:
    return (key in WALL_CLOCK or key.endswith("_seconds")
            or key.endswith("seconds_per_epoch") or key.endswith("_per_second"))


def _diff(a, b, where: str, out: list[str]) -> None:
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b)):
            if _timing(k):
                continue
            if k not in a or k not in b:
                out.append(f"{where}.{k}: only in {'after' if k in b else 'before'}")
            else:
                _diff(a[k], b[k], f"{where}.{k}", out)
    elif isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _diff(x, y, f"{where}[{i}]", out)
    elif a != b and not (a != a and b != b):  # NaN == NaN here
        out.append(f"{where}: {a!r} -> {b!r}")


def _runs(root: Path) -> dict[str, Path]:
    return {str(p.parent.relative_to(root)): p.parent
            for p in sorted((root / "runs").rglob("metrics.json"))}


def compare(before: Path, after: Path) -> list[str]:
    a, b = _runs(before), _runs(after)
    out = [f"{r}: only in {'after' if r in b else 'before'}" for r in sorted(set(a) ^ set(b))]
    for r in sorted(set(a) & set(b)):
        _diff(json.loads((a[r] / "metrics.json").read_text()),
              json.loads((b[r] / "metrics.json").read_text()), f"{r}/metrics.json", out)
        pa, pb = a[r] / "per_class.parquet", b[r] / "per_class.parquet"
        if pa.exists() != pb.exists():
            out.append(f"{r}/per_class.parquet: only in {'after' if pb.exists() else 'before'}")
        elif pa.exists() and not pq.read_table(pa).equals(pq.read_table(pb)):
            out.append(f"{r}/per_class.parquet: differs")
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("before", type=Path)
    ap.add_argument("after", type=Path)
    args = ap.parse_args()
    diffs = compare(args.before, args.after)
    n = len(_runs(args.before))
    for line in diffs:
        print(line)
    print(f"{n} runs before, {len(_runs(args.after))} after; {len(diffs)} difference(s)")
    return 1 if diffs else 0


if __name__ == "__main__":
    sys.exit(main())
