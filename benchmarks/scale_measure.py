"""The measurement under benchmarks/scale.py: one command as a process of its own, its wall
time, peak RSS (``os.wait4``'s rusage of that very child) and the bytes it wrote."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def tree_bytes(path: Path) -> int:
    total = 0
    for dirpath, _, files in os.walk(path):
        for f in files:
            try:
                total += os.stat(os.path.join(dirpath, f)).st_size
            except OSError:
                pass
    return total


#: runs one command and prints its rusage peak RSS: Linux keeps a process's peak RSS across
#: fork + exec, so a stage forked from this (large) process would report at least our own
WRAPPER = ("import os, subprocess, sys; p = subprocess.Popen(sys.argv[2:]); "
           "_, st, ru = os.wait4(p.pid, 0); open(sys.argv[1], 'w').write(str(ru.ru_maxrss)); "
           "sys.exit(os.waitstatus_to_exitcode(st))")


def measure(cmd: list[str], cwd: Path, log: Path, env=None) -> tuple[float, float, int]:
    """(wall s, peak RSS of the stage's process in MiB, bytes written under results/)."""
    before = tree_bytes(cwd / "results")
    rss_file = log.with_suffix(".rss")
    t0 = time.time()
    with open(log, "w") as fh:
        code = subprocess.call([sys.executable, "-c", WRAPPER, str(rss_file), *cmd], cwd=cwd,
                               stdout=fh, stderr=subprocess.STDOUT, env=env)
    wall = time.time() - t0
    if code != 0:
        raise SystemExit(f"stage failed (exit {code}): {' '.join(cmd)[:300]}; see {log}")
    return wall, int(rss_file.read_text()) / 1024, tree_bytes(cwd / "results") - before


def lt(*args: str) -> list[str]:
    return [sys.executable, "-m", "lt_bench.cli", *args]
