"""Small helpers of feature extraction (workers, versions, progress, shard bounds)."""

from __future__ import annotations

import logging
import re
import sys
from pathlib import Path

import pyarrow as pa
import torch
from tqdm import tqdm

from lt_bench.features.store import read_meta

log = logging.getLogger("lt_bench.features.extract")


def auto_num_workers(cap: int = 16) -> int:
    """Decode workers for this process: its share of the CPUs it may run on, minus one.

    The CPUs are this process's affinity (a SLURM job's allocation); they are shared by the
    GPU jobs that can run at once on this machine (one per GPU it can see), so four
    extraction jobs on a 4-GPU, 32-core box get 7 workers each. At most ``cap``.
    """
    import os

    from lt_bench.features.device import gpu_count, visible_devices

    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    visible = visible_devices()
    gpus = gpu_count() if visible is None else min(len(visible), gpu_count())
    return max(1, min(cpus // max(1, gpus) - 1, cap))


def library_versions() -> dict[str, str]:
    import open_clip
    import timm

    return {"torch": torch.__version__, "open_clip": open_clip.__version__,
            "timm": timm.__version__, "pyarrow": pa.__version__}


def _shard_bounds(i: int, shard_size: int, n: int) -> tuple[int, int]:
    return i * shard_size, min((i + 1) * shard_size, n)


def _shard_ok(path: Path, rows: int) -> bool:
    if not path.exists():
        return False
    try:
        ok = read_meta(path).get("rows") == rows
    except Exception:  # a torn shard cannot exist (atomic rename), but be safe
        ok = False
    if not ok:
        log.warning("discarding unusable shard %s", path)
        path.unlink(missing_ok=True)
    return ok


def _clean_worker_error(e: Exception) -> str:
    """The message of an error re-raised from a DataLoader worker, without its traceback."""
    found = re.findall(r"^(?:\S*ImageReadError: )?(cannot read image .*)$", str(e), re.M)
    return found[-1] if found else str(e)


def _progress(total: int, initial: int, desc: str) -> tqdm:
    tty = sys.stderr.isatty()
    # In a rule's log file (not a terminal) a line every 30 s, not a carriage-return storm.
    return tqdm(total=total, initial=initial, desc=desc, unit="img", file=sys.stderr,
                mininterval=2 if tty else 30, dynamic_ncols=tty, ascii=not tty)


def _yield_to_model(worker_id: int) -> None:
    """On CPU the model is the bottleneck: decode workers run niced, filling the cores'
    idle gaps instead of stalling the model's parallel regions."""
    import os

    try:
        os.nice(10)
    except OSError:
        pass


def _batches(todo: list[int], shard_size: int, n: int, batch_size: int) -> list[list[int]]:
    out = []
    for s in todo:
        lo, hi = _shard_bounds(s, shard_size, n)
        out += [list(range(b, min(b + batch_size, hi))) for b in range(lo, hi, batch_size)]
    return out
