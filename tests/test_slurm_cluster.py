"""Infrastructure test: the local one-node SLURM cluster (scripts/slurm-cluster.sh).

Checks that real SLURM jobs run, that `--gpus` hands out (fake) GPUs the way a GPU
cluster does, and that squeue sees a job while it runs -- what the Snakemake SLURM
profile relies on. The ``slurm_cluster`` fixture (conftest.py) uses a running cluster or
starts one (and stops it after the session); the tests skip only where it cannot:

    pytest -m slurm tests/test_slurm_cluster.py
"""

from __future__ import annotations

import os
import subprocess
import time
import uuid
from pathlib import Path

import pytest

pytestmark = pytest.mark.slurm

JOB_TIMEOUT_S = 120


def _env_without_gpus() -> dict[str, str]:
    # sbatch exports the caller's environment; a GPU setting inherited from the test
    # runner would hide what SLURM itself set.
    env = dict(os.environ)
    for var in ("CUDA_VISIBLE_DEVICES", "SLURM_JOB_GPUS", "SLURM_JOB_ID"):
        env.pop(var, None)
    return env


def _parse_env_dump(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


def _squeue_state(job_name: str) -> str:
    res = subprocess.run(
        ["squeue", "-h", "-n", job_name, "-o", "%T"],
        capture_output=True,
        text=True,
        timeout=15,
    )
    return res.stdout.strip()


ENV_DUMP = (
    'echo "CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES-<unset>}"; '
    'echo "SLURM_JOB_GPUS=${SLURM_JOB_GPUS-<unset>}"; '
    'echo "SLURM_JOB_ID=${SLURM_JOB_ID-<unset>}"'
)


def _sbatch_wait(tmp_path: Path, *args: str, wrap: str) -> dict[str, str]:
    out = tmp_path / f"job-{uuid.uuid4().hex}.out"
    res = subprocess.run(
        ["sbatch", "--wait", "-t", "2", "-o", str(out), *args, "--wrap", wrap],
        capture_output=True,
        text=True,
        timeout=JOB_TIMEOUT_S,
        env=_env_without_gpus(),
    )
    log = out.read_text() if out.exists() else "<no output file>"
    assert res.returncode == 0, f"sbatch failed: {res.stderr}\njob output:\n{log}"
    return _parse_env_dump(log)


def test_gpu_job_is_allocated_and_visible_in_squeue(slurm_cluster, tmp_path):
    job_name = f"lt-bench-test-{uuid.uuid4().hex[:12]}"
    out = tmp_path / "gpu-job.out"
    # The job sleeps so that squeue can be asked while it runs.
    proc = subprocess.Popen(
        [
            "sbatch", "--wait", "--gpus=1", "-t", "2",
            "-J", job_name, "-o", str(out),
            "--wrap", f"{ENV_DUMP}; sleep 4",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env_without_gpus(),
    )  # fmt: skip
    seen_states = set()
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            state = _squeue_state(job_name)
            if state:
                seen_states.add(state)
            if state == "RUNNING":
                break
            time.sleep(0.2)
        _, stderr = proc.communicate(timeout=JOB_TIMEOUT_S)
    finally:
        if proc.poll() is None:
            subprocess.run(["scancel", "-n", job_name], timeout=15)
            proc.kill()
    assert "RUNNING" in seen_states, f"squeue never showed the job running: {seen_states}"
    log = out.read_text() if out.exists() else "<no output file>"
    assert proc.returncode == 0, f"sbatch --wait failed: {stderr}\njob output:\n{log}"

    env = _parse_env_dump(log)
    assert env["CUDA_VISIBLE_DEVICES"].isdigit(), log
    assert env["SLURM_JOB_GPUS"] not in ("", "<unset>"), log


def test_two_gpus_are_distinct_devices(slurm_cluster, tmp_path):
    env = _sbatch_wait(tmp_path, "--gpus=2", wrap=ENV_DUMP)
    devices = env["CUDA_VISIBLE_DEVICES"].split(",")
    assert len(devices) == 2 and len(set(devices)) == 2, env


def test_cpu_job_gets_no_gpu(slurm_cluster, tmp_path):
    env = _sbatch_wait(tmp_path, wrap=ENV_DUMP)
    assert env["SLURM_JOB_ID"].isdigit(), env
    assert env["CUDA_VISIBLE_DEVICES"] in ("", "<unset>"), env
