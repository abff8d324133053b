"""GPU claiming with lock files, tested without GPUs (LT_BENCH_FAKE_GPUS)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from lt_bench.features import device

HOLDER = """
import sys
from lt_bench.features.device import claim_gpu
c = claim_gpu()
print(c.index if c else "none", flush=True)
sys.stdin.read()  # hold the claim until the test closes stdin
"""


@pytest.fixture
def fake_gpus(tmp_path, monkeypatch):
    monkeypatch.setenv("LT_BENCH_FAKE_GPUS", "4")
    monkeypatch.setenv("LT_BENCH_GPU_LOCK_DIR", str(tmp_path / "locks"))
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    device.release_gpus()
    yield tmp_path / "locks"
    device.release_gpus()


def _holder(env_extra=None) -> subprocess.Popen:
    env = {**os.environ, **(env_extra or {})}
    return subprocess.Popen([sys.executable, "-c", HOLDER], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def _release(procs):
    for p in procs:
        if p.poll() is None:
            p.stdin.close()
            p.wait(timeout=30)


def test_no_gpu_means_cpu(monkeypatch, tmp_path):
    monkeypatch.setenv("LT_BENCH_FAKE_GPUS", "0")
    monkeypatch.setenv("LT_BENCH_GPU_LOCK_DIR", str(tmp_path / "locks"))
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    device.release_gpus()
    assert str(device.pick_device()) == "cpu"
    assert not (tmp_path / "locks").exists()


def test_scheduler_assignment_is_honoured_without_locks(fake_gpus, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")  # e.g. SLURM --gpus=1
    assert str(device.pick_device()) == "cuda:0"  # the first *visible* device
    assert not fake_gpus.exists()


def test_concurrent_jobs_get_distinct_gpus_and_a_fifth_waits_then_errors(fake_gpus):
    procs = [_holder() for _ in range(4)]
    try:
        got = sorted(int(p.stdout.readline()) for p in procs)
        assert got == [0, 1, 2, 3]
        # a fifth job in this process: nothing free, short wait, clear error naming holders
        t0 = time.monotonic()
        with pytest.raises(device.NoFreeGPUError) as err:
            device.claim_gpu(wait_s=1.0)
        assert 0.9 < time.monotonic() - t0 < 10
        msg = str(err.value)
        assert "all 4 GPUs are claimed" in msg and str(fake_gpus) in msg
        assert all(f"pid {p.pid}" in msg for p in procs)
        assert "--resources gpu=4" in msg
    finally:
        _release(procs)


def test_waiting_job_gets_the_gpu_a_finished_or_killed_job_frees(fake_gpus):
    procs = [_holder() for _ in range(4)]
    try:
        indices = {int(p.stdout.readline()): p for p in procs}
        assert sorted(indices) == [0, 1, 2, 3]
        waiter = _holder({"LT_BENCH_GPU_WAIT_S": "60"})
        time.sleep(1.5)
        assert waiter.poll() is None  # still waiting: nothing printed, nothing claimed
        os.kill(indices[2].pid, signal.SIGKILL)  # a killed job frees its GPU (kernel drops flock)
        assert int(waiter.stdout.readline()) == 2
        procs.append(waiter)
    finally:
        _release(procs)


def test_claim_is_held_for_the_life_of_the_process(fake_gpus):
    first = device.claim_gpu(wait_s=0)
    assert first.index == 0 and device.claim_gpu(wait_s=0) is first
    p = _holder({"LT_BENCH_GPU_WAIT_S": "0"})
    try:
        assert int(p.stdout.readline()) == 1  # 0 is ours
    finally:
        _release([p])
    device.release_gpus()
    p = _holder({"LT_BENCH_GPU_WAIT_S": "0"})
    try:
        assert int(p.stdout.readline()) == 0  # released: free again
    finally:
        _release([p])


def test_bad_fake_gpu_count_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("LT_BENCH_FAKE_GPUS", "four")
    with pytest.raises(ValueError, match="LT_BENCH_FAKE_GPUS must be an integer"):
        device.gpu_count()


def test_several_visible_devices_are_claimed_by_their_ids(fake_gpus, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")  # e.g. exported in a shell profile
    procs = [_holder() for _ in range(2)]
    try:
        assert sorted(int(p.stdout.readline()) for p in procs) == [0, 1]  # torch indices
        assert sorted(p.name for p in fake_gpus.glob("*.lock")) == ["gpu2.lock", "gpu3.lock"]
        with pytest.raises(device.NoFreeGPUError, match="all 2 GPUs are claimed"):
            device.claim_gpu(wait_s=0)
    finally:
        _release(procs)


def test_empty_visible_devices_means_cpu(fake_gpus, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert str(device.pick_device()) == "cpu"
