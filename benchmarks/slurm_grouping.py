"""SLURM group jobs: wall time and sbatch submissions with and without grouping the heads.

Runs the tiny toy config (tests/data/tiny_config.yaml: 2 toy CLIPs x 15 methods x 2 seeds,
60 run_on_features jobs) through the local one-node SLURM cluster (scripts/slurm-cluster.sh)
with profiles/slurm-local-test as it is (heads grouped: one SLURM job per dataset x
backbone x seed) and with its `groups`/`group-components` keys removed (one SLURM job per
head), and locally (`--cores 2`) for reference. Prints wall time, sbatch submissions and
the ratios.

    scripts/slurm-cluster.sh start          # as root; once
    python benchmarks/slurm_grouping.py     # the heads phase: upstream done once, locally
    python benchmarks/slurm_grouping.py --from-scratch --variants grouped,local

By default the upstream stages (toy world, pre-training, features, priors) run once,
locally, and every variant starts from a copy of that state, so the numbers compare the
part grouping changes: run_on_features (+ backdoor, tables, figures, MLflow ingest, which are
the same in all variants). `--from-scratch` times whole runs instead (GPU stages through
SLURM too). Needs a machine with nobody else's jobs on the cluster to be meaningful.
"""

from __future__ import annotations

import argparse
import collections
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "tests/data/tiny_config.yaml"
PROFILE = REPO / "profiles/slurm-local-test/config.yaml"
GROUP_KEYS = ("groups", "group-components")
from lt_bench.workflow_copy import copy_workflow  # noqa: E402

SUBMITTED = re.compile(r"has been submitted with SLURM jobid (\d+) \(log: (\S+)\)")


def ungrouped_profile(dest: Path) -> Path:
    """profiles/slurm-local-test without its grouping keys."""
    cfg = yaml.safe_load(PROFILE.read_text())
    for key in GROUP_KEYS:
        cfg.pop(key)
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    return dest


def snakemake(wf: Path, config: Path, args: list[str], log: Path) -> float:
    cmd = [sys.executable, "-m", "snakemake", "--configfile", str(config), *args]
    t0 = time.perf_counter()
    with log.open("w") as out:
        r = subprocess.run(cmd, cwd=wf, stdout=out, stderr=subprocess.STDOUT)
    seconds = time.perf_counter() - t0
    if r.returncode != 0:
        sys.exit(f"failed ({r.returncode}): {' '.join(cmd)} in {wf}\n"
                 + log.read_text()[-4000:])
    return seconds


def submissions(log: Path) -> collections.Counter:
    """sbatch submissions by rule (rule_<name>) or group (group_<name>)."""
    kinds = collections.Counter()
    for _jobid, logfile in SUBMITTED.findall(log.read_text()):
        parts = Path(logfile).parts
        kind = parts[parts.index("slurm_logs") + 1]
        kinds[re.sub(r"^group_heads_.*", "group_heads_*", kind)] += 1
    return kinds


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", type=Path, default=TINY, help="config file (default: tiny)")
    ap.add_argument("--variants", default="ungrouped,grouped,local",
                    help="comma-separated subset of ungrouped,grouped,local")
    ap.add_argument("--from-scratch", action="store_true",
                    help="time whole runs (default: upstream once, locally; time the rest)")
    ap.add_argument("--workdir", type=Path, default=None,
                    help="keep the runs here (default: a temporary folder, removed)")
    args = ap.parse_args(argv)
    variants = args.variants.split(",")
    if set(variants) - {"ungrouped", "grouped", "local"}:
        ap.error(f"unknown variant in {args.variants}")

    if subprocess.run([str(REPO / "scripts/slurm-cluster.sh"), "status"],
                      capture_output=True).returncode != 0 and variants != ["local"]:
        sys.exit("no usable local SLURM cluster: run scripts/slurm-cluster.sh start (as root)")

    tmp = None
    if args.workdir is None:
        tmp = tempfile.TemporaryDirectory(prefix="slurm-grouping-")
        args.workdir = Path(tmp.name)
    work = args.workdir.resolve()
    config = args.config.resolve()
    base = copy_workflow(work / "base")
    if not args.from_scratch:
        print("upstream (toy world, pre-training, features, priors), locally ...", flush=True)
        s = snakemake(base, config, ["--cores", "2", "--until", "estimate_prior"],
                      work / "upstream.log")
        print(f"  {s:.0f} s", flush=True)

    slurm = ["--workflow-profile", "none"]
    runs = {
        "ungrouped": ["--profile", str(ungrouped_profile(work / "profile-ungrouped"))] + slurm,
        "grouped": ["--profile", "profiles/slurm-local-test"] + slurm,
        "local": ["--cores", "2"],
    }
    results = {}
    for name in variants:
        wf = work / name
        shutil.copytree(base, wf, symlinks=True)  # copy2: mtimes kept, nothing reruns
        print(f"{name} ...", flush=True)
        log = work / f"{name}.log"
        seconds = snakemake(wf, config, runs[name], log)
        results[name] = (seconds, submissions(log))
        print(f"  {seconds:.0f} s, {sum(results[name][1].values())} sbatch submissions",
              flush=True)

    phase = "whole run" if args.from_scratch else "after the upstream stages"
    print(f"\n{config.name}, {phase}:")
    print(f"{'variant':<10} {'wall s':>7} {'sbatch':>7}  submissions by rule/group")
    for name, (seconds, kinds) in results.items():
        detail = ", ".join(f"{k} {n}" for k, n in sorted(kinds.items())) or "-"
        print(f"{name:<10} {seconds:7.0f} {sum(kinds.values()):7d}  {detail}")
    if "ungrouped" in results and "grouped" in results:
        (su, ku), (sg, kg) = results["ungrouped"], results["grouped"]
        print(f"ungrouped / grouped: wall time x{su / sg:.2f}, "
              f"sbatch submissions x{sum(ku.values()) / max(1, sum(kg.values())):.1f}")
    if "local" in results:
        for name in ("grouped", "ungrouped"):
            if name in results:
                print(f"{name} SLURM / local: wall time x{results[name][0] / results['local'][0]:.2f}")
    tables = {n: (work / n / "results/tables/main.csv").read_text() for n in results}
    same = len(set(tables.values())) == 1
    print(f"results/tables/main.csv identical across variants: {'yes' if same else 'NO'}")
    if tmp is not None:
        tmp.cleanup()
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
