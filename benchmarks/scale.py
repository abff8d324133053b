"""Scale rehearsal of the paper suite's head-node tail (every CPU-side stage after the GPU jobs).

Synthesizes, at the paper suite's real shapes and run counts, what the GPU jobs leave behind
(features, priors, every run folder the plan lists: head runs, the same-backbone control's
extra-seed members, fine-tuned runs with their views, ensembles), written through the
project's own writers (``features_table``/``write_table``, ``write_text_embeddings``,
``write_prior``, predictors' ``save``, ``write_run``, ``write_finetuned_run``; ensembles
and the views of a fine-tuning by ``lt-bench combine --runs``, one process per job as the
workflow runs them, each measured), so every file is exactly the contract. Then runs the head-node
stages as the workflow's rules do (report.smk, analysis.smk, tracking.smk: the same
``lt-bench`` verbs), each as a subprocess, and prints per stage (and dataset): wall time,
peak RSS (``os.wait4``'s rusage of that very child) and bytes written; plus the disk
footprint per run kind and for the whole suite.

``--fraction F`` shrinks every split's N (never K, D or the run counts). With two or more
fractions (``--fraction 0.02 0.05``) each figure is fitted as ``a + b·F`` and extrapolated
to F = 1 (linear in N; a stage whose cost grows like N² is under-estimated by that line,
which is why the per-fraction figures are printed too). Disk: N-sized files (features, a
fine-tuning's stored features, every run's predictions) scale by their real rows / rows
written, K-sized ones (predictors, per-class tables) do not.

``--prior-job DATASET``: one estimate_prior job (``lt-bench prior``, both val views).
``--head-job DATASET`` measures instead the memory of one head job (``lt-bench fit
--runs`` with every head method of the plan at seed 0, features read once) at that
dataset's shape × F, ``--epochs`` epochs per trained head (``--max-steps S``: each epoch
cut to S batches, benchmarks/scale_bounded_fit.py). ``--combine-job DATASET``: one
combine_runs job (seed 0's ensembles of feature runs) at that shape × F, only its members
synthesized; ``--code DIR`` runs the measured jobs on another tree's ``lt_bench`` (a
before/after on the same files). The synthesis is benchmarks/scale_synth.py, the
measurement of one process benchmarks/scale_measure.py.

Synthetic signal: a class mean per class, features = mean + noise; a head's weights =
the class means + noise (methods and seeds differ in the noise), so accuracy, the D×P cells
and significance carry realistic numbers. Logits for ``write_run`` are computed in float32
here (the predictors rebuild them in float64; equal up to rounding; ``--exact`` uses the
seam's own), and a k-NN run's search is replaced by the linear stand-in above
``KNN_EXACT_MAC`` (its predictor is saved as the real one; the tail never rebuilds it).

    nice -n 10 python benchmarks/scale.py --fraction 0.02 0.05 --root /tmp/scale
    nice -n 10 python benchmarks/scale.py --head-job inat2018 --fraction 0.05 0.1 --epochs 1
    nice -n 10 python benchmarks/scale.py --combine-job inat2018 --fraction 1
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from scale_measure import lt, measure  # noqa: E402  (benchmarks/: the script's folder)
from scale_synth import (  # noqa: E402
    SHAPES,
    D,
    World,
    paper_plan,
    synthesize,
    write_features,
    write_prior_file,
)

# --- the head-node stages ----------------------------------------------------------------

def head_node_stages(plan, datasets: list[str]) -> list[tuple[str, str, list[str]]]:
    """(stage, dataset or "all", command) in the workflow's order; the commands are the
    rules' shell lines (workflow/rules/report.smk, analysis.smk, tracking.smk)."""
    s = plan.suite
    methods = list(s.methods)
    fig_methods = ["zero_shot", "ce", "la", "backdoor"]  # report.smk FIGURE_METHODS
    stages = []

    def runs_of(d):
        return [f for f in Path(f"results/runs/{d}/index.txt").read_text().split()]

    all_runs = lambda: [f for d in datasets for f in runs_of(d)]  # noqa: E731
    stages.append(("significance", "all", lambda: lt(
        "significance", "--metrics", *all_runs(), "--n-boot", "2000",
        "--out", "results/tables/significance.csv")))
    stages.append(("tables", "all", lambda: lt(
        "tables", "--metrics", *all_runs(), "--method-order", *methods,
        "--significance", "results/tables/significance.csv", "--out-dir", "results/tables")))
    stages.append(("findings", "all", lambda: lt(
        "findings", "--tables-dir", "results/tables", "--data-dir", "resources/data")))
    for d in datasets:
        stages.append(("figures accuracy", d, lambda d=d: lt(
            "figures", "accuracy", "--metrics", *runs_of(d), "--methods", *fig_methods,
            "--out-dir", f"results/figures/{d}")))
        stages.append(("figures dxp", d, lambda d=d: lt(
            "figures", "dxp", "--metrics", *runs_of(d), "--dataset", d, "--methods", *methods,
            "--out-dir", f"results/figures/{d}")))
    # prior_table / figure_prior are planned for the toy world only (Plan.toy_prior_backbones);
    # measured here on the paper's 9 priors anyway, as an extra
    stages.append(("prior table (extra)", "all", lambda: lt(
        "prior-table", "--priors", *sorted(str(p) for p in Path("results/prior").glob("*/*.parquet")),
        "--out-dir", "results/tables_prior_extra")))
    stages.append(("mlflow ingest", "all", lambda: lt(
        "ingest", "--suite", "paper", "--metrics", *all_runs(), "--figures-root",
        "results/figures", "--out", "results/mlflow/ingested.json")))
    return stages


def run_stages(root: Path, datasets: list[str], only: list[str] | None = None,
               code: Path = REPO) -> list[dict]:
    plan = paper_plan()
    os.chdir(root)
    (root / "logs").mkdir(exist_ok=True)
    (root / "resources/data").mkdir(parents=True, exist_ok=True)
    rows = []
    for d in datasets:  # rule runs_index: written in the Snakemake process itself
        t0 = time.time()
        runs = plan.dataset_runs(d)
        missing = [f for f in runs if not Path(f).is_file()]
        if missing:
            raise SystemExit(f"{len(missing)} planned runs missing, e.g. {missing[:3]}")
        Path(f"results/runs/{d}/index.txt").write_text("".join(f"{f}\n" for f in runs))
        rows.append({"stage": "runs index", "dataset": d, "runs": len(runs),
                     "wall": time.time() - t0, "rss": 0.0, "bytes": len("".join(runs))})
    env = {**os.environ, "PYTHONPATH": str(code), "MLFLOW_TRACKING_URI": "",
           "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    env.pop("MLFLOW_TRACKING_URI")
    for stage, d, cmd in head_node_stages(plan, datasets):
        if only and stage not in only:
            continue
        wall, rss, nbytes = measure(cmd(), root, root / "logs" / f"{stage.replace(' ', '_')}_{d}.log",
                                    env)
        rows.append({"stage": stage, "dataset": d, "wall": wall, "rss": rss, "bytes": nbytes})
        print(f"  {stage:22s} {d:12s} {wall:8.1f} s {rss:8.0f} MiB {nbytes / 2**20:9.1f} MiB",
              flush=True)
    return rows


def run_kind(run: Path) -> str:
    spec = json.loads((run / "predictor.json").read_text())
    kind = spec.get("kind")
    if kind == "finetuned":
        return "fine-tuned view" if spec.get("source") else "fine-tuned"
    return {"linear": "head (linear)", "knn": "head (k-NN)", "stored": "fine-tuned (logits)",
            "ensemble": "ensemble"}.get(kind, kind)


#: a run's files with one row per image of a split (scaled to the real N in the disk table)
N_SIZED = ("logits_", "features_", "predictions_")


def disk_footprint(root: Path, fraction: float) -> dict[str, dict]:
    """Bytes by part (measured at F, and at F = 1: N-sized files × 1/F)."""
    out: dict[str, dict] = {}

    def add(key, path: Path, scales: bool):
        e = out.setdefault(key, {"files": 0, "bytes": 0, "full": 0.0, "runs": set()})
        size = path.stat().st_size
        e["files"] += 1
        e["bytes"] += size
        e["full"] += size * full_rows(path) if scales else size

    def full_rows(path: Path) -> float:
        """rows at the real shape / rows here (not 1/F: every class keeps >= 1 train image,
        val/test >= K/10 rows at small F)."""
        import pyarrow.parquet as pq

        split = path.stem
        for prefix in N_SIZED:
            split = split.removeprefix(prefix)
        dataset = next(p for p in path.parts if p in SHAPES)
        k, n_tr, n_va, n_te, _ = SHAPES[dataset]
        full = {"train": n_tr, "val": n_va, "test": n_te}[split]
        return full / max(pq.read_metadata(path).num_rows, 1)

    res = root / "results"
    for f in (res / "features").rglob("*.parquet"):
        add(f"features ({f.parts[-3]})", f, f.name != "text.parquet")
    for f in (res / "prior").rglob("*.parquet"):
        add("priors", f, False)
    for m in (res / "runs").glob("*/*/*/seed*/metrics.json"):
        run = m.parent
        key = f"runs: {run_kind(run)} ({run.parts[-4]})"
        out.setdefault(key, {"files": 0, "bytes": 0, "full": 0.0, "runs": set()})["runs"].add(run)
        for f in run.iterdir():
            add(key, f, f.name.startswith(N_SIZED))
    if (res / "mlflow").exists():
        for f in (res / "mlflow").rglob("*"):
            if f.is_file():
                add("mlflow", f, False)
    for e in out.values():
        e["runs"] = len(e["runs"])
    return out


# --- the head job at one dataset's shape -------------------------------------------------

def one_features_folder(root: Path, dataset: str, fraction: float, prior: bool):
    """The paper plan, its first backbone and the synthetic features folder (and prior
    file) of that backbone on ``dataset`` × F under ``root``: (plan, backbone, world,
    folder, seconds)."""
    plan = paper_plan()
    os.chdir(root)
    b = plan.suite.backbones[0]
    world = World(dataset, fraction)
    fdir = Path(f"results/features/{dataset}/{b}")
    t0 = time.time()
    write_features(world, b, fdir, 0)
    if prior:
        write_prior_file(world, b, Path(f"results/prior/{dataset}/{b}.parquet"), 0)
    return plan, b, world, fdir, time.time() - t0


def head_job(root: Path, dataset: str, fraction: float, epochs: int,
             methods: list[str] | None, max_steps: int | None = None,
             code: Path = REPO) -> dict:
    plan, b, world, fdir, synth = one_features_folder(root, dataset, fraction, prior=True)
    runs = plan.head_runs(dataset, b, 0)
    if methods:
        keep = set(methods)
        runs = [r for r in runs if r["method"] in keep]
    for r in runs:  # the plan's params are the method's (or variant's) whole hparams
        if "epochs" in r["params"]:
            r["params"] = {**r["params"], "epochs": epochs}
    env = {**os.environ, "PYTHONPATH": str(code)}
    args = [*plan.run_list_variants(runs), "fit", "--features-dir", str(fdir), "--prior", f"results/prior/{dataset}/{b}.parquet",
            "--runs", json.dumps(runs), "--threads", "1"]
    cmd = (lt(*args) if max_steps is None else  # benchmarks/scale_bounded_fit.py
           [sys.executable, str(REPO / "benchmarks/scale_bounded_fit.py"), str(max_steps), *args])
    (root / "logs").mkdir(exist_ok=True)
    wall, rss, nbytes = measure(cmd, root, root / "logs" / "head_job.log", env)
    n_train = len(world.labels["train"])
    return {"fraction": fraction, "n_train": n_train, "k": world.k, "methods": len(runs),
            "wall": wall, "rss": rss, "synth": synth,
            "features_f32_mib": n_train * D * 4 / 2**20}


def prior_job(root: Path, dataset: str, fraction: float, code: Path = REPO) -> dict:
    """One estimate_prior job (`lt-bench prior`, the rule's command) on one backbone's
    synthetic features at the dataset's shape × F, both val views (extract tte both)."""
    _, b, world, fdir, synth = one_features_folder(root, dataset, fraction, prior=False)
    env = {**os.environ, "PYTHONPATH": str(code), "OMP_NUM_THREADS": "1"}
    (root / "logs").mkdir(exist_ok=True)
    wall, rss, _ = measure(lt("prior", "--features-dir", str(fdir), "--out",
                              f"results/prior/{dataset}/{b}.parquet"),
                           root, root / "logs" / "prior_job.log", env)
    return {"fraction": fraction, "n_val": len(world.labels["val"]), "k": world.k,
            "wall": wall, "rss": rss, "synth": synth}


# --- output ------------------------------------------------------------------------------

def fit_line(fs: list[float], ys: list[float]) -> tuple[float, float]:
    """a + b·F through the points (least squares); a single point: no extrapolation
    (the figure as measured: a stage's fixed part would be multiplied by 1/F)."""
    if len(fs) == 1:
        return ys[0], 0.0
    b, a = np.polyfit(np.asarray(fs), np.asarray(ys), 1)
    return float(a), float(b)


def mib(x: float) -> str:
    return f"{x / 2**20:,.1f}"


def _rss_per_fraction(a, label: str, measure) -> None:
    """``measure(root, F)`` (a row with ``rss`` and ``fraction``) in a fresh scratch folder
    per ``--fraction``, then the peak RSS extrapolated to F = 1 by a + b·F."""
    rows = []
    for f in a.fraction:
        root = Path(a.root) / f"{label}_{f:g}"
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir(parents=True)
        rows.append(measure(root, f))
        if not a.keep:
            shutil.rmtree(root, ignore_errors=True)
    ca, cb = fit_line([r["fraction"] for r in rows], [r["rss"] for r in rows])
    print(f"  peak RSS at F = 1 (linear fit a + b·F over the fractions): "
          f"{ca + cb:,.0f} MiB  (a = {ca:,.0f} MiB fixed, b = {cb:,.0f} MiB per unit F)")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--fraction", type=float, nargs="+", default=[0.02],
                    help="N of every split × F (K, D, run counts unchanged); two or more: "
                         "each figure fitted as a + b·F and extrapolated to F = 1")
    ap.add_argument("--root", default="/tmp/lt_bench_scale",
                    help="scratch folder; one subfolder per fraction (deleted first)")
    ap.add_argument("--datasets", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    ap.add_argument("--keep", action="store_true", help="keep the synthetic results folders")
    ap.add_argument("--exact", action="store_true",
                    help="write every head run's metrics from the seam's own logits (float64, "
                         "real k-NN searches), so that a stage rebuilding logits (an older "
                         "significance) gives what the stored predictions give: for a "
                         "byte-for-byte before/after at a small F (slow at F = 1)")
    ap.add_argument("--reuse", action="store_true",
                    help="reuse the synthetic folders a --keep run left (skip synthesis; the "
                         "stages' outputs are deleted first): before/after on the same files")
    ap.add_argument("--stages", nargs="+", help="only these stages (e.g. significance): a "
                    "before/after of one stage with --reuse")
    ap.add_argument("--head-job", choices=list(SHAPES),
                    help="measure one head job's memory at this dataset's shape instead")
    ap.add_argument("--combine-job", choices=list(SHAPES),
                    help="measure instead one combine_runs job (seed 0's ensembles of feature "
                         "runs, `lt-bench combine --runs`) at this dataset's shape: only its "
                         "member runs are synthesized")
    ap.add_argument("--prior-job", choices=list(SHAPES),
                    help="measure instead one estimate_prior job (`lt-bench prior` on one "
                         "backbone's features, both val views) at this dataset's shape")
    ap.add_argument("--code", default=str(REPO),
                    help="the tree whose lt_bench the measured jobs import (e.g. a `git "
                         "archive` of a baseline commit): a before/after on the same files")
    ap.add_argument("--jobs", type=int, default=1,
                    help="ensemble jobs run side by side (as `snakemake --cores N` would; each "
                         "one thread), e.g. 2 on a 2-core machine")
    ap.add_argument("--epochs", type=int, default=1, help="--head-job: epochs per trained head")
    ap.add_argument("--methods", nargs="+", help="--head-job: only these head methods")
    ap.add_argument("--max-steps", type=int,
                    help="--head-job: each trained head's epoch cut to its first S batches "
                         "(benchmarks/scale_bounded_fit.py): the memory of the full-shape job "
                         "in minutes (a step holds one batch, whatever the number of steps)")
    a = ap.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    load = os.getloadavg()[0]
    print(f"benchmarks/scale.py  {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}  "
          f"cpus {os.cpu_count()}  load {load:.1f}  fractions {a.fraction}")
    if a.head_job:
        def one_head_job(root: Path, f: float) -> dict:
            r = head_job(root, a.head_job, f, a.epochs, a.methods, a.max_steps,
                         Path(a.code).resolve())
            print(f"  F={f:g}: N_train {r['n_train']:,} K {r['k']:,} {r['methods']} methods, "
                  f"{a.epochs} epoch(s)"
                  + (f" of {a.max_steps} steps" if a.max_steps else "")
                  + f": wall {r['wall']:.0f} s, peak RSS {r['rss']:,.0f} MiB "
                  f"(train features float32: {r['features_f32_mib']:,.0f} MiB; synthesis "
                  f"{r['synth']:.0f} s)", flush=True)
            return r

        return _rss_per_fraction(a, f"head_{a.head_job}", one_head_job)
    code = Path(a.code).resolve()
    if a.prior_job:
        def one_prior_job(root: Path, f: float) -> dict:
            r = prior_job(root, a.prior_job, f, code)
            print(f"  F={f:g}: val {r['n_val']:,} x K {r['k']:,}, both views (code {code}): "
                  f"wall {r['wall']:.0f} s, peak RSS {r['rss']:,.0f} MiB (synthesis "
                  f"{r['synth']:.0f} s)", flush=True)
            return r

        return _rss_per_fraction(a, f"prior_{a.prior_job}", one_prior_job)
    if a.combine_job:
        def one_combine_job(root: Path, f: float) -> dict:
            t0 = time.time()
            _, [r] = synthesize(root, f, [a.combine_job], code=code, combine_only=True)
            print(f"  F={f:g}: {r['runs']} ensembles (code {code}): wall {r['wall']:.0f} s, "
                  f"peak RSS {r['rss']:,.0f} MiB (all, synthesis included: "
                  f"{time.time() - t0:.0f} s)", flush=True)
            return {**r, "fraction": f}

        return _rss_per_fraction(a, f"combine_{a.combine_job}", one_combine_job)
    per_f, ens = [], []
    for f in a.fraction:
        root = Path(a.root) / f"paper_{f:g}"
        if a.reuse and (root / "results/runs").is_dir():
            print(f"F = {f:g}: reusing {root}", flush=True)
            for p in ("results/tables", "results/figures", "results/mlflow",
                      "results/tables_prior_extra"):
                shutil.rmtree(root / p, ignore_errors=True)
        else:
            shutil.rmtree(root, ignore_errors=True)
            root.mkdir(parents=True)
            print(f"F = {f:g}: synthesizing under {root} ...", flush=True)
            t0 = time.time()
            synth, ens_rows = synthesize(root, f, a.datasets, a.exact, code, parallel=a.jobs)
            ens += [{**r, "fraction": f} for r in ens_rows]
            print(f"  synthesis {time.time() - t0:.0f} s: "
                  + ", ".join(f"{k} {v:.0f} s" for k, v in synth.items()), flush=True)
        t1 = time.time()
        rows = run_stages(root, a.datasets, a.stages, code)
        tail = time.time() - t1
        disk = disk_footprint(root, f)
        per_f.append((f, rows, tail, disk))
        print(f"  head-node tail at F = {f:g}: {tail:.0f} s wall", flush=True)
        if not (a.keep or a.reuse):
            shutil.rmtree(root, ignore_errors=True)
    fs = [p[0] for p in per_f]
    print()
    print("Per stage: wall s and peak RSS MiB at each F; 'F=1' = linear fit a + b·F at F = 1"
          + (" (ONE fraction: not extrapolated, the F=1 columns repeat the measurement; "
             "give two fractions to extrapolate)" if len(fs) == 1 else ""))
    head = "| stage | dataset | " + " | ".join(f"wall F={f:g}" for f in fs) + " | wall F=1 | " \
        + " | ".join(f"RSS F={f:g}" for f in fs) + " | RSS F=1 | written F=1 MiB |"
    print(head)
    print("|" + " --- |" * (head.count("|") - 1))
    tot_wall, peak = 0.0, 0.0
    for i, r0 in enumerate(per_f[0][1]):
        walls = [p[1][i]["wall"] for p in per_f]
        rsss = [p[1][i]["rss"] for p in per_f]
        byts = [p[1][i]["bytes"] for p in per_f]
        wa, wb = fit_line(fs, walls)
        if len(fs) == 1:
            rss1 = rsss[0]
        else:
            ra, rb = fit_line(fs, rsss)
            rss1 = ra + rb
        ba, bb = fit_line(fs, byts)
        tot_wall += wa + wb
        peak = max(peak, rss1)
        print(f"| {r0['stage']} | {r0['dataset']} | " + " | ".join(f"{w:.1f}" for w in walls)
              + f" | **{wa + wb:.0f}** | " + " | ".join(f"{x:,.0f}" for x in rsss)
              + f" | **{rss1:,.0f}** | {(ba + bb) / 2**20:,.1f} |")
    print("| **head-node tail** | all | " + " | ".join(f"{p[2]:.0f}" for p in per_f)
          + f" | **{tot_wall:.0f}** | | **{peak:,.0f}** (largest stage) | |")
    print()
    print("Disk (results/, no images): measured at each F, and at F = 1 (N-sized files scaled "
          "by their rows at the real shape / rows here)")
    print("| part | runs | files | " + " | ".join(f"MiB F={f:g}" for f in fs) + " | MiB F=1 |")
    print("| --- | --- | --- | " + " --- |" * len(fs) + " --- |")
    keys = sorted(per_f[-1][3])
    total = [0.0] * len(fs)
    total_full = 0.0
    for k in keys:
        e = per_f[-1][3][k]
        vals = [p[3].get(k, {"bytes": 0})["bytes"] for p in per_f]
        total = [t + v for t, v in zip(total, vals, strict=True)]
        total_full += e["full"]
        print(f"| {k} | {e['runs'] or ''} | {e['files']} | " + " | ".join(mib(v) for v in vals)
              + f" | {mib(e['full'])} |")
    print("| **total** | | | " + " | ".join(mib(v) for v in total)
          + f" | **{mib(total_full)}** |")
    if ens:
        print()
        print("Ensemble jobs (before the tail; `lt-bench combine --runs`, one process each)")
        print("| F | job | dataset | runs | wall s | peak RSS MiB | written MiB |")
        print("| --- | --- | --- | --- | --- | --- | --- |")
        for r in ens:
            print(f"| {r['fraction']:g} | {r['stage']} | {r['dataset']} | {r['runs']} | "
                  f"{r['wall']:.1f} | {r['rss']:,.0f} | {r['bytes'] / 2**20:,.1f} |")


if __name__ == "__main__":
    main()
