"""Start-up tax of the CLI and of planning the paper suite.

    .venv/bin/python benchmarks/startup.py [--repeats 3] [--skip-snakemake]

Each command runs as a fresh subprocess (what a Snakemake job or a user pays); the
median of ``--repeats`` runs is printed, with peak memory (max RSS of the child), then
one more run under ``python -X importtime`` says which heavy modules (torch, open_clip,
mlflow, pandas, scipy, ...) the command imports and what each costs, and what dominates.

- ``lt-bench --help`` and ``lt-bench list methods``: target well under 1 s;
- ``snakemake -n --config suite=paper`` in a throw-away copy of the workflow
  (:func:`lt_bench.workflow_copy.copy_workflow`; no data needed: the paper suite's DAG is
  built from the pinned split lists): target <= 3 s.

Times depend on the machine's load (printed with the numbers): compare the rows of one
run with each other, not with another day's.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from lt_bench.workflow_copy import copy_workflow  # noqa: E402

HEAVY = ("torch", "open_clip", "timm", "mlflow", "pandas", "scipy", "pyarrow", "sklearn",
         "matplotlib", "torchvision", "yaml", "jsonschema", "numpy", "snakemake")
#: the modules the issue names: any of these on a start-up path is a finding
BANNED = ("torch", "open_clip", "mlflow", "pandas", "scipy")


def _bin(name: str) -> str:
    exe = Path(sys.executable).with_name(name)
    return str(exe) if exe.exists() else name


def timed_run(cmd: list[str], cwd: Path | None, env: dict[str, str]) -> tuple[float, float]:
    """(wall seconds, peak RSS MiB) of one run of ``cmd``; exits with its stderr on failure."""
    with tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        p = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=err)
        _, status, usage = os.wait4(p.pid, 0)  # this child's own rusage (ru_maxrss in KiB)
        wall = time.perf_counter() - t0
        p.returncode = os.waitstatus_to_exitcode(status)
        if p.returncode != 0:
            err.seek(0)
            raise SystemExit(f"{' '.join(cmd)} failed (rc {p.returncode}):\n"
                             f"{err.read().decode(errors='replace')[-3000:]}")
    return wall, usage.ru_maxrss / 1024


def import_costs(stderr: str, names=HEAVY) -> dict[str, float]:
    """Cumulative seconds of each named package's first import (benchmarks/heads.py)."""
    from heads import import_costs as costs  # benchmarks/ is on sys.path for its scripts

    return costs(stderr, names)


def top_level_imports(stderr: str, n: int = 6) -> list[tuple[str, float]]:
    """The n most expensive imports made directly by the program (depth 0 in the log)."""
    rows = []
    for line in stderr.splitlines():
        m = re.match(r"import time:\s+(\d+) \|\s+(\d+) \| (\S+)$", line)
        if m:
            rows.append((m.group(3), int(m.group(2)) / 1e6))
    return sorted(rows, key=lambda r: -r[1])[:n]


def measure(label: str, cmd: list[str], py_cmd: list[str], cwd: Path | None,
            env: dict[str, str], repeats: int, target: float) -> dict:
    runs = [timed_run(cmd, cwd, env) for _ in range(repeats)]
    wall = statistics.median(r[0] for r in runs)
    rss = max(r[1] for r in runs)
    r = subprocess.run([sys.executable, "-X", "importtime", *py_cmd], cwd=cwd, env=env,
                       capture_output=True, text=True)
    costs = import_costs(r.stderr)
    banned = {k: v for k, v in costs.items() if k in BANNED}
    top = top_level_imports(r.stderr)
    verdict = "ok" if wall <= target else "OVER"
    print(f"{label}\n    median {wall:.2f} s of {repeats} (target <= {target:g} s: {verdict}), "
          f"runs {', '.join(f'{x[0]:.2f}' for x in runs)}; peak RSS <= {rss:.0f} MiB")
    print("    heavy modules imported: " + (", ".join(
        f"{k} {v:.2f} s" for k, v in sorted(costs.items(), key=lambda x: -x[1])) or "none"))
    print("    of the ones to keep off start-up paths: " + (", ".join(sorted(banned)) or "none"))
    print("    dominant top-level imports: " + ", ".join(f"{k} {v:.2f} s" for k, v in top))
    return {"label": label, "median_s": wall, "runs_s": [x[0] for x in runs],
            "target_s": target, "rss_mib": rss, "imports_s": costs,
            "banned": sorted(banned), "top": top}


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--skip-snakemake", action="store_true")
    a = ap.parse_args(argv)
    if a.repeats < 1:
        ap.error("--repeats must be >= 1")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    print(f"machine: {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}")
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", "pass"], env=env)
    print(f"bare `python -c pass`: {time.perf_counter() - t0:.2f} s")
    cli = ["-m", "lt_bench.cli"]
    out = [
        measure("lt-bench --help", [_bin("lt-bench"), "--help"], [*cli, "--help"], None, env,
                a.repeats, 1.0),
        measure("lt-bench list methods", [_bin("lt-bench"), "list", "methods"],
                [*cli, "list", "methods"], None, env, a.repeats, 1.0),
    ]
    if not a.skip_snakemake:
        tmp = Path(tempfile.mkdtemp(prefix="lt_bench_startup_"))
        try:
            wf = copy_workflow(tmp / "wf")
            sm = ["-m", "snakemake", "-n", "--quiet", "--config", "suite=paper"]
            # the first plan also writes .snakemake/ (metadata, conda hashes): untimed
            subprocess.run([sys.executable, *sm], cwd=wf, env=env, capture_output=True)
            out.append(measure("snakemake -n --config suite=paper", [sys.executable, *sm],
                               sm, wf, env, a.repeats, 3.0))
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    worst = max(out, key=lambda r: r["median_s"] / r["target_s"])
    dom = max(worst["imports_s"].items(), key=lambda x: x[1], default=("nothing", 0.0))
    print(f"dominates: {worst['label']} at {worst['median_s']:.2f} s "
          f"({worst['median_s'] / worst['target_s']:.1f}x its target); its costliest heavy "
          f"import is {dom[0]} ({dom[1]:.2f} s)")
    return out


if __name__ == "__main__":
    main()
