"""Pick the compute device for a job, and keep concurrent jobs on different GPUs.

Snakemake's ``--resources gpu=N`` only limits how many GPU jobs run at once; it does not
tell a job *which* GPU to use (snakemake#281). So on one machine each GPU job claims a
device itself: it takes an exclusive ``fcntl.flock`` on ``<lock dir>/gpu<index>.lock`` and
holds it for the life of the process (the kernel drops the lock when the process exits,
however it exits, so a killed job never leaves a GPU claimed). When every GPU is held, the
job waits for one to come free, up to a timeout, then fails naming the holders.

Where ``CUDA_VISIBLE_DEVICES`` is already set (SLURM sets it for ``--gpus``, or the user
chose), the scheduler has done the assignment: the job uses the first visible device and
takes no lock.

Environment:
    ``LT_BENCH_GPU_LOCK_DIR``  lock folder (default ``/tmp/lt-bench-gpu-locks``)
    ``LT_BENCH_GPU_WAIT_S``    seconds to wait for a free GPU (default 21600 = 6 h; 0: fail at once)
    ``LT_BENCH_FAKE_GPUS``     pretend this many GPUs exist (tests; lock logic only)
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

DEFAULT_LOCK_DIR = "/tmp/lt-bench-gpu-locks"
DEFAULT_WAIT_S = 6 * 3600
POLL_S = 1.0


class NoFreeGPUError(RuntimeError):
    """Every GPU stayed claimed by other lt-bench jobs for the whole wait."""


@dataclass
class GPUClaim:
    index: int
    lock_path: Path | None  # None: assigned by the scheduler (CUDA_VISIBLE_DEVICES), no lock
    fd: int | None = None

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing the descriptor drops the flock
            self.fd = None


# Claims live as long as the process (a module-level reference keeps the fd open).
_CLAIMS: list[GPUClaim] = []


def gpu_count() -> int:
    """Number of GPUs on this machine (``LT_BENCH_FAKE_GPUS`` overrides it in tests)."""
    fake = os.environ.get("LT_BENCH_FAKE_GPUS")
    if fake not in (None, ""):
        try:
            return max(0, int(fake))
        except ValueError:
            raise ValueError(f"LT_BENCH_FAKE_GPUS must be an integer, got {fake!r}") from None
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def lock_dir() -> Path:
    return Path(os.environ.get("LT_BENCH_GPU_LOCK_DIR") or DEFAULT_LOCK_DIR)


def _wait_seconds() -> float:
    raw = os.environ.get("LT_BENCH_GPU_WAIT_S")
    try:
        return DEFAULT_WAIT_S if raw in (None, "") else float(raw)
    except ValueError:
        raise ValueError(f"LT_BENCH_GPU_WAIT_S must be a number of seconds, got {raw!r}") from None


def _open_lock(path: Path) -> int:
    try:
        return os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except PermissionError:  # created by another user: flock works on a read-only fd too
        return os.open(path, os.O_RDONLY)


def _try_lock(path: Path) -> int | None:
    fd = _open_lock(path)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        os.close(fd)
        if e.errno in (errno.EWOULDBLOCK, errno.EACCES, errno.EAGAIN):
            return None
        raise
    try:  # who holds it, for the error message of a waiting job (best effort)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    except OSError:
        pass
    return fd


def _holders(directory: Path, n: int) -> str:
    out = []
    for i in range(n):
        try:
            pid = (directory / f"gpu{i}.lock").read_text().strip() or "?"
        except OSError:
            pid = "?"
        out.append(f"gpu{i}: pid {pid}")
    return ", ".join(out)


def claim_gpu(wait_s: float | None = None) -> GPUClaim | None:
    """Claim a GPU for this process; None when there is no GPU.

    Honours ``CUDA_VISIBLE_DEVICES`` (no locking, device 0 of the visible ones). Otherwise
    returns the lowest free index, waiting up to ``wait_s`` seconds (default:
    ``LT_BENCH_GPU_WAIT_S``) when all are claimed, then raises :class:`NoFreeGPUError`.
    A second call in the same process returns the first claim.
    """
    if _CLAIMS:
        return _CLAIMS[0]
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip() not in ("",):
        if gpu_count() == 0:
            return None
        claim = GPUClaim(0, None)
        log.info("using cuda:0 of CUDA_VISIBLE_DEVICES=%s (assigned by the scheduler)", visible)
        _CLAIMS.append(claim)
        return claim
    n = gpu_count()
    if n == 0:
        return None
    directory = lock_dir()
    directory.mkdir(parents=True, exist_ok=True)
    try:  # shared between users of the machine: world-writable, sticky like /tmp
        os.chmod(directory, 0o1777)
    except OSError:
        pass
    wait_s = _wait_seconds() if wait_s is None else wait_s
    deadline = time.monotonic() + wait_s
    next_note = 0.0
    while True:
        for i in range(n):
            path = directory / f"gpu{i}.lock"
            fd = _try_lock(path)
            if fd is not None:
                claim = GPUClaim(i, path, fd)
                _CLAIMS.append(claim)
                log.info("claimed GPU %d of %d (lock %s)", i, n, path)
                return claim
        now = time.monotonic()
        if now >= deadline:
            raise NoFreeGPUError(
                f"all {n} GPUs are claimed by other lt-bench jobs ({_holders(directory, n)}; "
                f"lock files in {directory}) and none came free within {wait_s:g} s. Run fewer "
                f"GPU jobs at once (snakemake --resources gpu={n}), raise LT_BENCH_GPU_WAIT_S, "
                "or pass --device explicitly.")
        if now >= next_note:
            log.info("all %d GPUs are claimed (%s); waiting up to %.0f s more for one",
                     n, _holders(directory, n), deadline - now)
            next_note = now + 60
        time.sleep(min(POLL_S, max(0.0, deadline - now)))


def release_gpus() -> None:
    """Drop this process's claim (tests; a job's claim normally ends with the process)."""
    while _CLAIMS:
        _CLAIMS.pop().release()


def pick_device(wait_s: float | None = None):
    """The device a job should run on: a claimed ``cuda:<i>``, or ``cpu`` without GPUs."""
    import torch

    claim = claim_gpu(wait_s)
    if claim is None:
        return torch.device("cpu")
    return torch.device(f"cuda:{claim.index}")
