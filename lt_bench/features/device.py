"""Pick the compute device for a job, and keep concurrent jobs on different GPUs.

Snakemake's ``--resources gpu=N`` only limits how many GPU jobs run at once; it does not
tell a job *which* GPU to use (snakemake#281). So on one machine each GPU job claims a
device itself: it takes an exclusive ``fcntl.flock`` on ``<lock dir>/gpu<index>.lock`` and
holds it for the life of the process (the kernel drops the lock when the process exits,
however it exits, so a killed job never leaves a GPU claimed). When every GPU is held, the
job waits for one to come free, up to a timeout, then fails naming the holders.

Where ``CUDA_VISIBLE_DEVICES`` already names a single device (SLURM sets it for
``--gpus=1``, or the user chose), the scheduler has done the assignment: the job uses it
and takes no lock. Where it names several (e.g. exported in a shell profile), jobs claim
among those, with lock files named by the listed ids (under SLURM, in a folder of their
own per job, since SLURM's ids are job-local).

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

from lt_bench.errors import InputValidationError, UserError

log = logging.getLogger(__name__)

DEFAULT_LOCK_DIR = "/tmp/lt-bench-gpu-locks"
DEFAULT_WAIT_S = 6 * 3600
POLL_S = 1.0


class NoFreeGPUError(UserError, RuntimeError):
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
            raise InputValidationError(f"LT_BENCH_FAKE_GPUS must be an integer (GPUs to "
                                       f"pretend), got {fake!r}") from None
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def lock_dir() -> Path:
    return Path(os.environ.get("LT_BENCH_GPU_LOCK_DIR") or DEFAULT_LOCK_DIR)


def _wait_seconds() -> float:
    raw = os.environ.get("LT_BENCH_GPU_WAIT_S")
    try:
        return DEFAULT_WAIT_S if raw in (None, "") else float(raw)
    except ValueError:
        raise InputValidationError(f"LT_BENCH_GPU_WAIT_S must be a number of seconds, got "
                                   f"{raw!r}") from None


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


def _holders(paths: list[Path]) -> str:
    out = []
    for path in paths:
        try:
            pid = path.read_text().strip() or "?"
        except OSError:
            pid = "?"
        out.append(f"{path.stem}: pid {pid}")
    return ", ".join(out)


def visible_devices() -> list[str] | None:
    """The ids listed in ``CUDA_VISIBLE_DEVICES``; None when it is not set."""
    raw = os.environ.get("CUDA_VISIBLE_DEVICES")
    if raw is None:
        return None
    return [d.strip() for d in raw.split(",") if d.strip()]


def claim_gpu(wait_s: float | None = None) -> GPUClaim | None:
    """Claim a GPU for this process; None when there is no GPU.

    A single device in ``CUDA_VISIBLE_DEVICES``: that one, no lock. Otherwise the first
    free one (of the visible ones, or of all), waiting up to ``wait_s`` seconds (default:
    ``LT_BENCH_GPU_WAIT_S``) when all are claimed, then :class:`NoFreeGPUError`.
    ``GPUClaim.index`` is the torch index (``cuda:<index>``). A second call in the same
    process returns the first claim.
    """
    if _CLAIMS:
        return _CLAIMS[0]
    visible = visible_devices()
    n = gpu_count() if visible is None else min(len(visible), gpu_count())
    if n == 0:
        return None
    if visible is not None and len(visible) == 1:
        log.info("using the GPU of CUDA_VISIBLE_DEVICES=%s (assigned by the scheduler)",
                 visible[0])
        _CLAIMS.append(GPUClaim(0, None))
        return _CLAIMS[0]
    ids = visible[:n] if visible is not None else [str(i) for i in range(n)]
    directory = lock_dir()
    if visible is not None and os.environ.get("SLURM_JOB_ID"):
        directory = directory / f"slurm-{os.environ['SLURM_JOB_ID']}"
    directory.mkdir(parents=True, exist_ok=True)
    try:  # shared between users of the machine: world-writable, sticky like /tmp
        os.chmod(directory, 0o1777)
    except OSError:
        pass
    paths = [directory / f"gpu{_safe(i)}.lock" for i in ids]
    wait_s = _wait_seconds() if wait_s is None else wait_s
    deadline = time.monotonic() + wait_s
    next_note = 0.0
    while True:
        for index, path in enumerate(paths):
            fd = _try_lock(path)
            if fd is not None:
                _CLAIMS.append(GPUClaim(index, path, fd))
                log.info("claimed GPU %s (cuda:%d of %d; lock %s)", ids[index], index, n, path)
                return _CLAIMS[0]
        now = time.monotonic()
        if now >= deadline:
            raise NoFreeGPUError(
                f"all {n} GPUs are claimed by other lt-bench jobs ({_holders(paths)}; "
                f"lock files in {directory}) and none came free within {wait_s:g} s. Run fewer "
                f"GPU jobs at once (snakemake --resources gpu={n}), raise LT_BENCH_GPU_WAIT_S, "
                "or pass --device explicitly.")
        if now >= next_note:
            log.info("all %d GPUs are claimed (%s); waiting up to %.0f s more for one",
                     n, _holders(paths), deadline - now)
            next_note = now + 60
        time.sleep(min(POLL_S, max(0.0, deadline - now)))


def _safe(device_id: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in device_id)


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
