"""What the provenance checks cost: the readers that check what they read against what was
recorded (a run's feature sha256, an ensemble's members, the tables and significance
refusing stale runs) timed with and without the checks, side by side, on a finished
workflow's results (e.g. the tiny test workflow or the demo).

Each measurement is a fresh process (the sha256 memo is per process, as in the workflow's
jobs), alternated ABAB, median of ``--rounds``. "Without" replaces the check functions
by no-ops in that process only. Also printed: the bytes each reader hashes (every feature
file once per process) and the time to hash them once (the checks' floor), and for a
features folder the bytes the demo's jobs would hash (``--features-root``).

    .venv/bin/python benchmarks/provenance_checks.py --project /tmp/wf [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

CHILD = r"""
import json, sys, time
from lt_bench.cli import main
import lt_bench.io as io
# imported before the clock in both variants: only the checks' own work is compared
import lt_bench.runs.ensemble as ens, lt_bench.runs.run_folder as pred
import lt_bench.report.cli, lt_bench.report.significance, lt_bench.report.tables  # noqa
checks = sys.argv[1] == "on"
if not checks:
    pred.check_features_fresh = lambda *a, **k: None
    pred.check_fresh = lambda *a, **k: None
    ens.check_members_fresh = lambda *a, **k: None
argv = json.loads(sys.argv[2])
t0 = time.perf_counter()
rc = main(argv)
print(json.dumps({"rc": rc, "seconds": time.perf_counter() - t0, **io.HASH_STATS}))
"""


def child(project: Path, checks: bool, argv: list[str]) -> dict:
    r = subprocess.run([sys.executable, "-c", CHILD, "on" if checks else "off", json.dumps(argv)],
                       cwd=project, capture_output=True, text=True)
    last = r.stdout.strip().splitlines()[-1] if r.stdout.strip() else ""
    if r.returncode != 0 or not last.startswith("{"):
        raise SystemExit(f"{argv}: failed\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}")
    out = json.loads(last)
    if out["rc"] != 0:
        raise SystemExit(f"{argv}: exit {out['rc']}\n{r.stderr[-2000:]}")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--project", type=Path, required=True,
                    help="a finished workflow's folder (results/runs/<dataset>/index.txt)")
    ap.add_argument("--dataset", default="toy")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--features-root", type=Path,
                    help="a features folder tree to hash once (default: the project's)")
    a = ap.parse_args()
    project = a.project.resolve()
    index = (project / f"results/runs/{a.dataset}/index.txt").read_text().split()
    ens = next(str(Path(f).parent) for f in index if "/ensemble/" in f)
    tmp = project / "results/benchmarks/provenance_checks"
    cases = {
        "logits of an ensemble": ["logits", ens, "--out", str(tmp / "l.parquet")],
        "tables": ["tables", "--metrics", *index, "--out-dir", str(tmp / "tables")],
        "significance (n_boot 200)": ["significance", "--metrics", *index, "--n-boot", "200",
                                      "--out", str(tmp / "sig.csv")],
    }
    print(f"project {project}: {len(index)} runs; {a.rounds} rounds, ABAB, fresh processes")
    print(f"{'reader':28s} {'with checks':>12s} {'without':>9s} {'cost':>8s}  hashed")
    total = 0.0
    for name, argv in cases.items():
        on, off, hashed = [], [], None
        for _ in range(a.rounds):
            r = child(project, True, argv)
            on.append(r["seconds"])
            hashed = (r["files"], r["bytes"])
            off.append(child(project, False, argv)["seconds"])
        m_on, m_off = statistics.median(on), statistics.median(off)
        total += m_on - m_off
        print(f"{name:28s} {m_on:11.3f}s {m_off:8.3f}s {m_on - m_off:+7.3f}s  "
              f"{hashed[0]} files, {hashed[1] / 1e6:.1f} MB")
    from lt_bench.io import sha256_file

    root = a.features_root or project / "results/features"
    files = sorted(p for p in root.rglob("*.parquet") if p.name != "text.parquet")
    t0 = time.perf_counter()
    for p in files:
        sha256_file(p)
    dt = time.perf_counter() - t0
    size = sum(p.stat().st_size for p in files)
    print(f"hashing every split file under {root} once: {len(files)} files, "
          f"{size / 1e6:.1f} MB in {dt:.3f} s ({size / 1e6 / max(dt, 1e-9):.0f} MB/s)")
    print(f"sum of the readers' cost above: {total:+.3f} s")
    # the checks alone, in this process (no start-up noise): every run of the index,
    # cold (each feature file hashed once) and warm (memo hits only)
    import os

    from lt_bench import io
    from lt_bench.runs.predictors import check_fresh

    os.chdir(project)
    for label in ("cold", "warm"):
        t0 = time.perf_counter()
        for f in index:
            check_fresh(Path(f).parent)
        print(f"check_fresh over the {len(index)} runs, {label}: "
              f"{time.perf_counter() - t0:.3f} s ({io.HASH_STATS['files']} files, "
              f"{io.HASH_STATS['bytes'] / 1e6:.1f} MB hashed so far)")


if __name__ == "__main__":
    main()
