"""The real workflow through a real SLURM cluster (the local one-node cluster of
scripts/slurm-cluster.sh, started by the ``slurm_cluster`` fixture), against a local run.

The tiny toy world, cut to one seed and a few methods (crt and gla are post-hoc on ce and
la: jobs that depend on jobs of the same SLURM group job), runs twice from scratch:
locally (``--cores 2``) and with ``--profile profiles/slurm-local-test``. The SLURM run
must submit every GPU stage as its own SLURM job with ``--gpus=1`` (the heads: one job per
dataset x backbone x seed), keep the head-node rules local, and end with the
very numbers of the local run (same machine, same thread counts).
"""

from __future__ import annotations

import json
import math
import re
import signal
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from conftest import REPO, copy_workflow

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

TINY = REPO / "tests/data/tiny_config.yaml"
METHODS = ["zero_shot", "ce", "la", "crt", "gla", "backdoor"]
SEEDS = [0]
SLURM_ARGS = ("--profile", "profiles/slurm-local-test", "--workflow-profile", "none")
GPU_RULES = {"pretrain_toy_clip", "extract_features", "fit_heads"}
LOCAL_RULES = {"prepare_dataset", "aggregate", "significance", "findings", "ingest_mlflow",
               "prior_table"}
RUN_TIMEOUT_S = 2400

SUBMITTED = re.compile(
    r"Job (\S+) has been submitted with SLURM jobid (\d+) \(log: (\S+)\)\.")
JOB_LOG_LINE = re.compile(r"host=(\S+) slurm_job=(\S+) gpus=(\S+)")


def write_config(path: Path) -> dict:
    cfg = yaml.safe_load(TINY.read_text())
    suite = cfg["suites"][cfg["suite"]]
    suite["methods"], suite["seeds"] = METHODS, SEEDS
    path.write_text(yaml.safe_dump(cfg))
    return suite


def start_snakemake(wf: Path, config: Path, *args: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "snakemake", "--configfile", str(config), *args]
    out = (wf / "snakemake.out").open("w")
    return subprocess.Popen(cmd, cwd=wf, stdout=out, stderr=subprocess.STDOUT, text=True)


def wait(proc: subprocess.Popen, wf: Path, what: str) -> str:
    try:
        proc.wait(timeout=RUN_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGINT)  # Snakemake cancels its SLURM jobs on the way out
        try:
            proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    log = (wf / "snakemake.out").read_text()
    assert proc.returncode == 0, f"{what} run failed ({proc.returncode}):\n{log[-6000:]}"
    return log


@pytest.fixture(scope="module")
def runs(slurm_cluster, tmp_path_factory):
    """Both runs, from scratch, side by side (the SLURM one mostly waits on SLURM)."""
    root = tmp_path_factory.mktemp("slurm_wf")
    config = root / "config.yaml"
    suite = write_config(config)
    local, slurm = copy_workflow(root / "local"), copy_workflow(root / "slurm")
    # --verbose: the plugin logs each sbatch call (debug level) -- the resources asked for.
    slurm_proc = start_snakemake(slurm, config, *SLURM_ARGS, "--verbose")
    local_proc = start_snakemake(local, config, "--cores", "2")
    local_log = wait(local_proc, local, "local")
    slurm_log = wait(slurm_proc, slurm, "SLURM")
    return {"local": local, "slurm": slurm, "suite": suite, "local_log": local_log,
            "slurm_log": slurm_log}


def submissions(log: str) -> list[dict]:
    """One entry per sbatch submission: the rule (or group) and SLURM job id."""
    subs = []
    for _snakemake_id, slurm_id, logfile in SUBMITTED.findall(log):
        # .snakemake/slurm_logs/rule_<rule>/<wildcards>/<id>.log or group_<group>/<id>.log
        parts = Path(logfile).parts
        kind = parts[parts.index("slurm_logs") + 1]
        subs.append({"slurm_id": slurm_id, "log": Path(logfile), "kind": kind})
    return subs


def sbatch_calls(log: str) -> list[str]:
    return [line.split("--wrap", 1)[0] for line in log.splitlines()
            if line.startswith("sbatch call: ")]


def test_gpu_stages_are_slurm_jobs_with_one_gpu(runs):
    wf, log = runs["slurm"], runs["slurm_log"]
    subs = submissions(log)
    ids = {s["slurm_id"] for s in subs}
    for s in subs:  # the plugin's log of every SLURM job is kept
        assert s["log"].exists(), s
    n_backbones = len(runs["suite"]["backbones"])
    for rule in GPU_RULES:
        n_jobs = n_backbones * (len(SEEDS) if rule == "fit_heads" else 1)
        gpu_subs = [s for s in subs if s["kind"] == f"rule_{rule}"]
        assert len(gpu_subs) == n_jobs, (rule, subs)
        calls = [c for c in sbatch_calls(log) if f"--comment rule_{rule}_" in c]
        assert len(calls) == n_jobs, calls
        for call in calls:
            assert "--gpus=1" in call and "--cpus-per-gpu=1" in call, call
        # the rule's own log, written inside the job: the SLURM job id and one GPU
        logfiles = sorted((wf / "logs" / rule).rglob("*.log"))
        assert len(logfiles) == n_jobs, logfiles
        for logfile in logfiles:
            first = logfile.read_text().splitlines()[0]
            m = JOB_LOG_LINE.match(first)
            assert m, (logfile, first)
            assert m.group(2) in ids, (logfile, first, ids)
            assert re.fullmatch(r"\d", m.group(3)), f"not exactly one GPU: {first}"


def test_heads_are_one_job_per_backbone_and_seed_and_head_node_rules_stay_local(runs):
    log, suite = runs["slurm_log"], runs["suite"]
    subs = submissions(log)
    kinds = [s["kind"] for s in subs]
    n_b, n_s = len(suite["backbones"]), len(suite["seeds"])
    # every head of one dataset x backbone x seed (crt, gla: built on ce, la) in one job
    assert kinds.count("rule_fit_heads") == n_b * n_s, kinds
    assert not [k for k in kinds if k.startswith("group_")], kinds
    assert kinds.count("rule_estimate_prior") == n_b, kinds
    # every ensemble of one seed (the backdoor) in one job
    assert kinds.count("rule_combine_runs") == n_s, kinds
    assert len(subs) == 2 * n_b + n_b + n_b * n_s + n_s, kinds  # GPU stages + prior + heads + backdoor
    for call in sbatch_calls(log):
        if not any(f"--comment rule_{r}_" in call for r in GPU_RULES):
            assert "--gpus" not in call, call
    for rule in LOCAL_RULES:
        assert f"localrule {rule}:" in log, rule
        assert f"rule_{rule}" not in kinds, kinds


def _numbers_equal(a, b, path="") -> list[str]:
    """Differences between two metrics.json trees, ignoring wall-clock timings (seconds and
    the training's start/end times)."""
    if isinstance(a, dict) and isinstance(b, dict):
        diffs = [f"{path}: keys {sorted(set(a) ^ set(b))}"] if set(a) != set(b) else []
        for k in sorted(set(a) & set(b)):
            if "seconds" not in k and k not in ("started_at", "finished_at"):
                diffs += _numbers_equal(a[k], b[k], f"{path}.{k}")
        return diffs
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [d for i, (x, y) in enumerate(zip(a, b, strict=True))
                for d in _numbers_equal(x, y, f"{path}[{i}]")]
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return []
    return [] if a == b else [f"{path}: {a!r} != {b!r}"]


def test_outputs_equal_a_local_run(runs):
    local, slurm = runs["local"], runs["slurm"]
    metrics = sorted(p.relative_to(local) for p in (local / "results/runs").rglob("metrics.json"))
    suite = runs["suite"]
    n_runs = len(suite["backbones"]) * (len(METHODS) - 1) * len(SEEDS) + len(SEEDS)
    assert len(metrics) == n_runs, metrics
    for rel in metrics:
        a = json.loads((local / rel).read_text())
        b = json.loads((slurm / rel).read_text())
        diffs = _numbers_equal(a, b)
        assert not diffs, f"{rel}: {diffs[:10]}"
    main_local = pd.read_csv(local / "results/tables/main.csv")
    main_slurm = pd.read_csv(slurm / "results/tables/main.csv")
    assert len(main_local) == len(suite["backbones"]) * (len(METHODS) - 1) + 1
    pd.testing.assert_frame_equal(main_local, main_slurm, check_exact=True)
