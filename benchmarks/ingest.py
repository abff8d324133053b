"""MLflow ingestion speed: runs/s of `lt-bench ingest`'s library call, this tree vs a baseline
commit, side by side on the same synthetic run folders (issue: the paper suite's ~560 runs
must ingest within 2 minutes; the demo's 160 took 23 s).

    .venv/bin/python benchmarks/ingest.py                    # 160 runs, vs main's 8993666
    .venv/bin/python benchmarks/ingest.py --runs 560         # the paper suite's count
    .venv/bin/python benchmarks/ingest.py --profile          # + cProfile of this tree's call
    .venv/bin/python benchmarks/ingest.py --baseline ''      # this tree only

N run folders are written by ``tests/fakeruns.py`` (the stage-5 file contract: config,
10-epoch history, per_class.parquet, metrics.json with the D×P keys) over as many
(backbone, method, seed) coordinates as needed, plus a ``figures/toy`` folder of five
~250 kB PNG-sized files (the report's suite-wide figures). Each side ingests them into a
fresh SQLite store (the default store), in its own Python process that imports its own
``lt_bench`` (the baseline from ``git archive <ref> lt_bench``), first a cold ingestion
(every run created), then a second one (every run unchanged). Both sides run in the same
call, alternated, so machine load hits them alike. Printed: seconds, runs/s and the store's
artifact bytes.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

CHILD = r"""
import json, sys, time
from pathlib import Path
t0 = time.time()
from lt_bench.tracking import find_run_dirs, ingest
runs, uri, figures, prof = sys.argv[1:5]
dirs = find_run_dirs(Path(runs))
out = {}
for label in ("cold", "again"):
    t = time.time()
    if prof and label == "cold":
        import cProfile, pstats
        pr = cProfile.Profile(); pr.enable()
    man = ingest(dirs, "bench", uri, figures_root=figures)
    if prof and label == "cold":
        pr.disable()
        pstats.Stats(pr, stream=sys.stderr).sort_stats("cumulative").print_stats(35)
    out[label] = {"seconds": time.time() - t, "counts": man["counts"],
                  "import_mlflow": man["seconds"]["import_mlflow"]}
print(json.dumps(out))
"""


def make_folders(root: Path, n: int) -> Path:
    from fakeruns import make_runs

    runs = root / "results" / "runs"
    backbones = [f"toyclip{i}" for i in range(3)]
    methods = ["zero_shot", "ce", "focal", "ldam", "cb", "grw", "la", "bs", "lade", "crt",
               "tau_norm", "la_posthoc", "gla", "gla_train", "knn", "adaptformer_la",
               "vpt_la", "lora_la", "adaptformer_ce", "m19", "m20", "m21", "m22", "m23"]
    seeds = [0, 1, 2]
    per = len(backbones) * len(seeds)
    need = max(1, -(-n // per))
    if need > len(methods):
        methods += [f"extra{i}" for i in range(need - len(methods))]
    dirs = make_runs(runs, backbones=backbones, methods=methods[:need], seeds=seeds,
                     backdoor=False)
    for d in dirs[n:]:  # exactly n run folders
        for f in sorted(d.iterdir()):
            f.unlink()
        d.rmdir()
    for d in dirs[:n]:  # a 10-epoch history, as the demo's heads
        hist = [{"epoch": e, "train_loss": 2.0 / (e + 1), "val_top1": 0.3 + 0.02 * e,
                 "lr": 0.01 * (1 - e / 10)} for e in range(10)]
        (d / "history.json").write_text(json.dumps(hist))
    fig = root / "results" / "figures" / "toy"
    fig.mkdir(parents=True, exist_ok=True)
    for stem in ("acc_vs_count", "acc_vs_qhat", "dxp_la", "dxp_ce", "dxp_zero_shot"):
        (fig / f"{stem}.png").write_bytes(os.urandom(250_000))
    return runs


def baseline_tree(ref: str, dest: Path) -> Path:
    arch = dest / "base.tar"
    subprocess.run(["git", "-C", str(ROOT), "archive", "-o", str(arch), ref, "lt_bench"],
                   check=True)
    with tarfile.open(arch) as t:
        t.extractall(dest / "base", filter="data")
    return dest / "base"


def run_side(code_root: Path, runs: Path, store: Path, profile: bool) -> dict:
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")},
           "PYTHONPATH": str(code_root)}
    r = subprocess.run([sys.executable, "-c", CHILD, str(runs),
                        f"sqlite:///{store}/mlflow.db", str(runs.parent / "figures"),
                        "1" if profile else ""],
                       capture_output=True, text=True, env=env, cwd=str(runs.parent.parent))
    if r.returncode != 0:
        raise SystemExit(f"ingestion from {code_root} failed:\n{r.stderr[-3000:]}")
    if profile:
        print(r.stderr[-12000:])
    out = json.loads(r.stdout.strip().splitlines()[-1])
    out["artifact_bytes"] = sum(p.stat().st_size for p in (store / "artifacts").rglob("*")
                                if p.is_file())
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=160, help="run folders (demo 160, paper ~560)")
    ap.add_argument("--baseline", default="8993666",
                    help="git ref of the baseline lt_bench ('' = this tree only)")
    ap.add_argument("--profile", action="store_true", help="cProfile this tree's cold ingestion")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="lt-bench-ingest-bench-") as tmp:
        tmp = Path(tmp)
        runs = make_folders(tmp, args.runs)
        sides = {"this tree": ROOT}
        if args.baseline:
            sides = {f"baseline {args.baseline}": baseline_tree(args.baseline, tmp), **sides}
        results = {}
        for i, (name, code) in enumerate(sides.items()):
            t = time.time()
            results[name] = run_side(code, runs, tmp / f"store{i}", args.profile
                                     and name == "this tree")
            results[name]["wall"] = time.time() - t
        print(f"\n{args.runs} run folders, SQLite store, {os.cpu_count()} CPUs")
        print(f"{'':24s} {'cold s':>8s} {'runs/s':>8s} {'again s':>8s} {'artifacts MB':>13s}")
        for name, r in results.items():
            cold = r["cold"]["seconds"]
            print(f"{name:24s} {cold:8.1f} {args.runs / cold:8.1f} "
                  f"{r['again']['seconds']:8.1f} {r['artifact_bytes'] / 1e6:13.1f}")
        if len(results) == 2:
            (a, b) = results.values()
            print(f"speed-up (cold): {a['cold']['seconds'] / b['cold']['seconds']:.1f}x")


if __name__ == "__main__":
    main()
