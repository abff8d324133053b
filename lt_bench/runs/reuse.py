"""Fits keyed by everything that decides them, so a rerun refits only what changed.

The workflow fits all heads of one (dataset, backbone, seed) in one process (start-up and
feature loading paid once, not per method: benchmarks/README.md, "heads.py"). Snakemake
reruns such a job as a whole when any one method's hyper-parameters change, and deletes
its outputs first, so the job itself must know which fits are still valid. Each finished
run is copied to ``<reuse_dir>/<fit key>/``; the key hashes the method, its resolved hyper-parameters, the
seed, the content of the features and prior files, the keys of its base runs, the tune
flag, the device type, the D-group counts, the run folder, and the lt_bench source code.
A later job whose run has the same key copies the folder back instead of fitting:
changing ``la.tau`` refits la and the runs built on it (gla), nothing else; editing any
library file refits everything (conservative, never stale). ``rm -r results/cache/fits``
forces every fit.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import time
from functools import cache
from pathlib import Path
from typing import Any

from lt_bench.io import read_json, sha256_file, stable_hash
from lt_bench.runs.layout import METRICS_JSON

log = logging.getLogger(__name__)

#: files of a run folder that are not part of the fit (rewritten on restore)
_DONE = METRICS_JSON


@cache
def source_hash() -> str:
    """sha256 over every lt_bench/*.py (path and bytes): code changes invalidate fits."""
    root = Path(__file__).resolve().parents[1]
    h = hashlib.sha256()
    for p in sorted(root.rglob("*.py")):
        h.update(str(p.relative_to(root)).encode())
        h.update(p.read_bytes())
    return h.hexdigest()[:16]


def run_key(run_path: Path) -> str:
    """A finished run's fit key (config.json ``fit_key``), else a hash of its predictor
    files (a run made without reuse, e.g. by `lt-bench fit` without --reuse-dir)."""
    from lt_bench.runs.run_folder import RunFolder

    run_path = Path(run_path)
    cfg = RunFolder.open(run_path).config
    if cfg.get("fit_key"):
        return str(cfg["fit_key"])
    files = sorted(p for p in run_path.glob("predictor*") if p.is_file())
    return stable_hash([(p.name, sha256_file(p)) for p in files], n=16)


def fit_key(**parts: Any) -> str:
    """The key of one fit: a hash of ``parts`` (JSON-able) and the library source."""
    return stable_hash({**parts, "code": source_hash()}, n=16)


def restore(reuse_dir: Path | None, key: str, out_dir: Path) -> dict[str, Any] | None:
    """Copy the cached run ``key`` into ``out_dir`` (metrics.json last, so an interrupted
    copy is an unfinished run); its metrics, or None when there is no such fit."""
    if reuse_dir is None:
        return None
    src = Path(reuse_dir) / key
    if not (src / _DONE).is_file():
        return None
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / _DONE).unlink(missing_ok=True)
    names = sorted(p.name for p in src.iterdir() if p.is_file() and p.name != _DONE)
    now = time.time()
    for name in [*names, _DONE]:
        shutil.copyfile(src / name, out_dir / name)
        # now, not the cached time: the file is this job's output, newer than its inputs
        os.utime(out_dir / name, (now, now))
    metrics = read_json(out_dir / _DONE)
    when = time.strftime("%Y-%m-%d %H:%M", time.localtime(metrics.get("finished_at", 0)))
    log.info("%s: configuration unchanged (fit key %s): reused the fit of %s from %s",
             out_dir, key, when, src)
    return metrics


def store(reuse_dir: Path | None, key: str, out_dir: Path) -> None:
    """Copy a finished run into the cache under ``key`` (atomically: a temp folder renamed)."""
    if reuse_dir is None:
        return
    reuse_dir = Path(reuse_dir)
    reuse_dir.mkdir(parents=True, exist_ok=True)
    final = reuse_dir / key
    tmp = reuse_dir / f".{key}.{os.getpid()}.part"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    for p in Path(out_dir).iterdir():
        if p.is_file():
            shutil.copyfile(p, tmp / p.name)
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
