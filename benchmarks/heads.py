"""Head-training speed: the project's fit loop vs a bare PyTorch loop, the per-job start-up
tax, and CPU vs GPU. Prints ratios, measured side by side.

    .venv/bin/python benchmarks/heads.py                      # ImageNet-LT's shape, 1 epoch
    .venv/bin/python benchmarks/heads.py --scale 0.05 --repeats 3   # a quick look (2 cores)
    .venv/bin/python benchmarks/heads.py --only b             # just the start-up tax

(a) ``la`` and ``ce`` through :meth:`HeadMethod.fit` on synthetic ``FeatureSplit``s at
    ImageNet-LT's shape (N = 115,846 x ``--scale``, D = 768, K = 1000, val 20 per class x
    ``--scale``, batch 128) vs a bare loop with the same matmuls: the same cosine head,
    SGD + cosine schedule, the same loss, the same per-epoch val forward, but none of the
    project's bookkeeping (no numpy batch sampler, no loss-function indirection, no history).
    Both are timed end to end (numpy arrays in, head weights out), interleaved so machine
    load hits them alike, after one untimed warm-up of each (the first call of a process
    pays ~1-2 s of torch's lazy initialisation: that belongs to (b)). Target <= 1.1x.
(b) ``lt-bench fit --method la --prior ... --threads 1`` (what a workflow job runs) as a
    subprocess on a small features folder at the demo toy world's shape (written with
    ``lt_bench.features.store``'s writers, plus a prior file): its wall
    time minus the ``fit_seconds`` recorded in metrics.json ``info``. ``fit_seconds`` is
    measured around ``method.fit``, which imports torch itself, so the script also prints
    wall minus the epoch loop alone (``train_seconds``) and, from one extra run under
    ``python -X importtime``, what the heavy imports cost inside that job. Target <= 1 s.
(d) the workflow's head job: every features method of the demo (config.yaml, their
    hyper-parameters, bases before the runs built on them) fitted by ONE
    ``lt-bench fit --runs`` process, vs the same runs as one ``lt-bench fit --method``
    process each (the per-method jobs before head jobs), side by side on the same folder:
    the ratio of the two walls, and the job's wall minus the sum of its ``fit_seconds``
    per run. Then the same job again with its fit cache (nothing changed: every run is
    copied back) and with one method's hyper-parameter changed (only it is refitted).
(c) one ``la`` head at (a)'s shape on the CPU and on the GPU, when CUDA is visible
    (skipped with a message otherwise).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from lt_bench.features.store import (  # noqa: E402
    FeatureSplit,
    TextEmbeddings,
    features_table,
    write_table,
    write_text_embeddings,
)
from lt_bench.methods import FitContext, get_method  # noqa: E402

#: ImageNet-LT (LIFT's split lists): 115,846 train images, 1000 classes, 1280 .. 5 per
#: class, val 20 per class; D = 768 is ViT-B/16's pre-projection CLS feature (LIFT)
IMAGENET_LT = {"n": 115_846, "k": 1000, "d": 768, "max": 1280, "min": 5, "val_per_class": 20}
#: the demo's toy world (config.yaml datasets.toy) and the toy CLIPs' feature width
TOY = {"k": 100, "d": 64, "max": 500, "imbalance": 100, "val_per_class": 50,
       "test_per_class": 100}
HEAVY = ("torch", "open_clip", "timm", "mlflow", "pandas", "scipy", "pyarrow", "sklearn",
         "matplotlib", "snakemake")


def long_tail_counts(k: int, n_max: int, n_min: int, total: int | None = None) -> np.ndarray:
    """Exponentially decaying per-class counts from n_max to n_min (the LT benchmarks'
    profile), rescaled to ``total`` images (each class keeps >= 1)."""
    c = n_max * (n_min / n_max) ** (np.arange(k) / max(k - 1, 1))
    if total is not None:
        c = c * total / c.sum()
    return np.maximum(np.round(c), 1).astype(np.int64)


def synthetic_split(counts: np.ndarray, d: int, means: np.ndarray, rng: np.random.Generator,
                    name: str) -> FeatureSplit:
    """Features = class mean + noise, so the head has something to learn (the loss and the
    val accuracy move like on real features; speed does not depend on it)."""
    labels = np.repeat(np.arange(len(counts)), counts)
    rng.shuffle(labels)
    feats = (means[labels] + rng.normal(0, 1.0, (len(labels), d))).astype(np.float32)
    return FeatureSplit([f"{name}/{i}.jpg" for i in range(len(labels))], labels, feats,
                        {"dataset": "bench", "backbone": "synthetic", "split": name})


def imagenet_lt_context(scale: float, seed: int = 0, device: str = "cpu") -> FitContext:
    s = IMAGENET_LT
    rng = np.random.default_rng(seed)
    k, d = s["k"], s["d"]
    counts = long_tail_counts(k, s["max"], s["min"], total=round(s["n"] * scale))
    means = rng.normal(0, 0.3, (k, d))
    train = synthetic_split(counts, d, means, rng, "train")
    val = synthetic_split(np.full(k, max(1, round(s["val_per_class"] * scale))), d, means,
                          rng, "val")
    # text init as in the paper suite (normalised text embeddings, no projection)
    text = TextEmbeddings([f"class{i}" for i in range(k)],
                          (means + rng.normal(0, 0.1, means.shape)).astype(np.float32),
                          {"logit_scale": 100.0})
    return FitContext(train=train, val=val, text=text, train_counts=counts, seed=seed,
                      device=device)


# --- (a) the project's fit vs a bare loop ------------------------------------------------

def project_fit(ctx: FitContext, method: str, epochs: int) -> float:
    t0 = time.perf_counter()
    get_method(method, epochs=epochs).fit(ctx)
    _sync(ctx.device)
    return time.perf_counter() - t0


def bare_fit(ctx: FitContext, method: str, epochs: int) -> float:
    """What a researcher would write by hand: the same matmuls, nothing else."""
    import torch
    import torch.nn.functional as F

    hp = get_method(method).hparams  # the same recipe (lr, momentum, wd, batch, scale)
    t0 = time.perf_counter()
    dev = ctx.device
    torch.manual_seed(ctx.seed)
    w0 = ctx.text.embeddings / np.linalg.norm(ctx.text.embeddings, axis=1, keepdims=True)
    weight = torch.nn.Parameter(torch.as_tensor(w0, dtype=torch.float32, device=dev))
    x = torch.from_numpy(ctx.train.features).to(dev)
    y = torch.from_numpy(ctx.train.labels).to(dev)
    x_val = torch.from_numpy(ctx.val.features).to(dev)
    adjust = (torch.as_tensor(ctx.log_train_prior, dtype=torch.float32, device=dev)
              if method == "la" else None)
    opt = torch.optim.SGD([weight], lr=hp["lr"], momentum=hp["momentum"],
                          weight_decay=hp["weight_decay"])
    bs = hp["batch_size"]
    by_epoch = hp.get("lr_schedule", "cosine_step") == "cosine_epoch"  # as the project's
    steps = epochs if by_epoch else epochs * -(-len(y) // bs)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    for _ in range(epochs):
        total = torch.zeros((), device=dev)
        for idx in torch.randperm(len(y), device=dev).split(bs):
            z = hp["scale"] * F.normalize(x[idx], dim=-1) @ F.normalize(weight, dim=-1).T
            loss = F.cross_entropy(z if adjust is None else z + adjust, y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if not by_epoch:
                sched.step()
            total += loss.detach() * len(idx)
        if by_epoch:
            sched.step()
        with torch.no_grad():
            acc = (F.normalize(x_val, dim=-1) @ F.normalize(weight, dim=-1).T).argmax(1)
            float(total), acc.cpu().numpy()  # the same once-per-epoch sync as the project
    weight.detach().cpu().numpy()
    _sync(dev)
    return time.perf_counter() - t0


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def bench_fit_vs_bare(scale: float, epochs: int, repeats: int, device: str,
                      methods: list[str]) -> dict[str, dict[str, float]]:
    ctx = imagenet_lt_context(scale, device=device)
    n, d = ctx.train.features.shape
    print(f"(a) project fit vs bare loop: N={n} D={d} K={ctx.num_classes} val={len(ctx.val)} "
          f"batch 128, {epochs} epoch(s), {repeats} interleaved repeat(s), device {device}")
    warm = imagenet_lt_context(min(scale, 0.01), device=device)
    for m in methods:  # untimed warm-up: torch's first-call initialisation is (b)'s concern
        project_fit(warm, m, 1)
        bare_fit(warm, m, 1)
    out = {}
    for m in methods:
        proj, bare = [], []
        for r in range(repeats):  # ABBA order: a load drift hits both variants alike
            first, second = (project_fit, bare_fit) if r % 2 == 0 else (bare_fit, project_fit)
            t1, t2 = first(ctx, m, epochs), second(ctx, m, epochs)
            proj.append(t1 if first is project_fit else t2)
            bare.append(t2 if first is project_fit else t1)
        ratios = [p_ / b_ for p_, b_ in zip(proj, bare, strict=True)]
        p, b, ratio = statistics.median(proj), statistics.median(bare), statistics.median(ratios)
        out[m] = {"project_s": p, "bare_s": b, "ratio": ratio, "pair_ratios": ratios,
                  "ratio_min": min(proj) / min(bare)}
        print(f"    {m:3s}: project {p:7.2f} s  bare {b:7.2f} s  ratio {ratio:.3f} (median of "
              f"pairs {', '.join(f'{x:.3f}' for x in ratios)}; min/min "
              f"{min(proj) / min(bare):.3f}; target <= 1.1)  [{n * epochs / p:,.0f} samples/s]")
    return out


# --- (b) the per-job start-up tax --------------------------------------------------------

def write_toy_features(folder: Path, seed: int = 0) -> Path:
    """A features folder at the demo toy world's shape (train/val/test/text.parquet)."""
    t = TOY
    rng = np.random.default_rng(seed)
    k, d = t["k"], t["d"]
    means = rng.normal(0, 0.3, (k, d))
    counts = {"train": long_tail_counts(k, t["max"], t["max"] // t["imbalance"]),
              "val": np.full(k, t["val_per_class"]), "test": np.full(k, t["test_per_class"])}
    folder.mkdir(parents=True, exist_ok=True)
    for split, c in counts.items():
        s = synthetic_split(c, d, means, rng, split)
        meta = {**s.meta, "dataset": "bench_toy", "split_sha256": f"synthetic-{split}"}
        write_table(features_table(s.paths, s.labels, s.features, meta), folder / f"{split}.parquet")
    emb = means / np.linalg.norm(means, axis=1, keepdims=True)
    write_text_embeddings(folder / "text.parquet", [f"class{i}" for i in range(k)], emb,
                          {"dataset": "bench_toy", "backbone": "synthetic", "logit_scale": 100.0})
    # every workflow run of a CLIP backbone gets its prior q̂ (P-groups; common.smk
    # prior_input), so the benchmarked job reads one too
    from lt_bench.prior import write_prior

    q = counts["train"][::-1] / counts["train"].sum()
    write_prior(folder / "prior.parquet", q, {"temperature": 1.0})
    return folder


def lt_bench_cmd() -> list[str]:
    exe = Path(sys.executable).with_name("lt-bench")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "lt_bench.cli"]


def import_costs(stderr: str, names=HEAVY) -> dict[str, float]:
    """Cumulative seconds of each heavy package's first import in a ``-X importtime`` log
    (the shallowest line naming it: later lines are its own submodules)."""
    best: dict[str, tuple[int, float]] = {}
    for line in stderr.splitlines():
        m = re.match(r"import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)", line)
        if not m or m.group(4) not in names:
            continue
        depth, cum = len(m.group(3)), int(m.group(2)) / 1e6
        if m.group(4) not in best or depth < best[m.group(4)][0]:
            best[m.group(4)] = (depth, cum)
    return {k: v[1] for k, v in best.items()}


#: run as ``python -c`` in a fresh process: patch timers around the phases of
#: ``lt-bench fit`` (where each is looked up), then run the CLI. Nothing is imported
#: before the clock starts except what the CLI itself imports first.
_PHASES = r"""
import sys, time, json
T0 = time.perf_counter()
import lt_bench.cli as cli
T_CLI = time.perf_counter() - T0
import lt_bench.runs.train as tr, lt_bench.runs.folder as fo, lt_bench.metrics as me
import lt_bench.prior as pr
from lt_bench.methods import _heads
spent = {"import lt_bench.cli": T_CLI,
         "import run layer + registry (numpy, pyarrow, scipy.special)": time.perf_counter() - T0 - T_CLI}
def timed(mod, name, label):
    f = getattr(mod, name, None)
    if f is None:  # the code moved on: say so rather than time nothing silently
        spent[f"(not timed: {mod.__name__}.{name} is gone)"] = 0.0
        return
    def g(*a, **k):
        t = time.perf_counter()
        try:
            return f(*a, **k)
        finally:
            spent[label] = spent.get(label, 0.0) + time.perf_counter() - t
    setattr(mod, name, g)
timed(cli, "set_threads", "set_threads (imports torch)")
timed(tr, "load_features_dir", "read features (pyarrow)")
timed(pr, "read_prior", "read prior")
timed(tr, "may_tune", "may_tune (imports lt_bench.data)")
timed(tr, "sha256_file", "sha256 of the feature files")
timed(tr, "split_logits_of", "val/test logits")
timed(_heads.HeadMethod, "fit", "method.fit")
timed(fo, "git_commit", "git rev-parse subprocess")
timed(me, "evaluate", "metrics.evaluate")
timed(tr, "write_run", "write_run (incl. pandas import, evaluate, git)")
rc = cli.main(sys.argv[1:])
spent["total in process"] = time.perf_counter() - T0
print("PHASES " + json.dumps(spent), file=sys.stderr)
sys.exit(rc)
"""


def bench_startup_tax(repeats: int, method: str = "la") -> dict[str, float]:
    tmp = Path(tempfile.mkdtemp(prefix="lt_bench_heads_"))
    try:
        feats = write_toy_features(tmp / "features")
        base = [*lt_bench_cmd(), "fit", "--method", method, "--features-dir", str(feats),
                "--seed", "0", "--threads", "1", "--prior", str(feats / "prior.parquet")]
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
        rows = []
        for i in range(repeats):
            out = tmp / f"run{i}"
            t0 = time.perf_counter()
            r = subprocess.run([*base, "--out", str(out)], capture_output=True, text=True,
                               env=env)
            wall = time.perf_counter() - t0
            if r.returncode != 0:
                raise SystemExit(f"lt-bench fit failed (rc {r.returncode}):\n{r.stderr}")
            info = json.loads((out / "metrics.json").read_text())["info"]
            rows.append((wall, info["fit_seconds"], info["train_seconds"]))
        wall, fit, loop = (statistics.median(c) for c in zip(*rows, strict=True))
        # one more run under -X importtime: what the imports cost inside the same job
        r = subprocess.run([sys.executable, "-X", "importtime", "-m", "lt_bench.cli",
                            *base[len(lt_bench_cmd()):], "--out", str(tmp / "imp")],
                           capture_output=True, text=True, env=env)
        costs = import_costs(r.stderr)
        r = subprocess.run([sys.executable, "-c", _PHASES, *base[len(lt_bench_cmd()):],
                            "--out", str(tmp / "phases")], capture_output=True, text=True,
                           env=env)
        found = [ln for ln in r.stderr.splitlines() if ln.startswith("PHASES ")]
        phases = json.loads(found[-1][len("PHASES "):]) if found else {}
        if r.returncode != 0 or not found:
            print(f"    (the phase-timing run failed, rc {r.returncode}: {r.stderr[-2000:]})")
        py0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", "pass"], env=env)
        bare_python = time.perf_counter() - py0
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    k, d = TOY["k"], TOY["d"]
    print(f"(b) `lt-bench fit --method {method}` on a toy-shaped folder (K={k}, D={d}, "
          f"10 epochs), median of {repeats}:")
    print(f"    wall {wall:.2f} s, fit_seconds {fit:.2f} s, epoch loop {loop:.2f} s")
    print(f"    wall - fit_seconds   = {wall - fit:.2f} s   (target <= 1 s)")
    print(f"    wall - epoch loop    = {wall - loop:.2f} s   (fit_seconds includes "
          f"{fit - loop:.2f} s of torch import + first-call warm-up + setup)")
    print(f"    bare `python -c pass` = {bare_python:.2f} s")
    print("    imports inside that job (-X importtime, cumulative): "
          + ", ".join(f"{k} {v:.2f} s" for k, v in sorted(costs.items(), key=lambda x: -x[1])))
    print("    phases of one more run (seconds, in-process; nested phases overlap):")
    for name, sec in sorted(phases.items(), key=lambda x: -x[1]):
        print(f"      {sec:6.2f}  {name}")
    return {"wall_s": wall, "fit_s": fit, "loop_s": loop, "wall_minus_fit_s": wall - fit,
            "wall_minus_loop_s": wall - loop, "python_s": bare_python,
            **{f"import_{k}_s": v for k, v in costs.items()},
            **{f"phase {k}": v for k, v in phases.items()}}


# --- (d) one process per (dataset, backbone, seed) vs one per method ---------------------

def bench_head_job() -> dict[str, float]:
    import yaml

    from lt_bench.plan import Plan

    plan = Plan(yaml.safe_load((REPO / "config.yaml").read_text()))
    tmp = Path(tempfile.mkdtemp(prefix="lt_bench_headjob_"))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    try:
        feats = write_toy_features(tmp / "features")
        common = ["--features-dir", str(feats), "--threads", "1",
                  "--prior", str(feats / "prior.parquet")]

        def spec(root: Path, changed: dict | None = None) -> list[dict]:
            out = []
            for m in plan.head_methods():
                hp = {**plan.hparams(m, "toy"), **((changed or {}).get(m, {}))}
                out.append({"method": m, "out": str(root / m), "seed": 0, "params": hp,
                            "base": {r: str(root / r) for r in plan.requires(m)}})
            return out

        def job(root: Path, *extra: str, changed: dict | None = None) -> float:
            t0 = time.perf_counter()
            r = subprocess.run([*lt_bench_cmd(), "fit", "--runs",
                                json.dumps(spec(root, changed)), *common, *extra],
                               capture_output=True, text=True, env=env)
            if r.returncode != 0:
                raise SystemExit(f"head job failed (rc {r.returncode}):\n{r.stderr[-3000:]}")
            return time.perf_counter() - t0

        separate = 0.0
        for run in spec(tmp / "separate"):
            t0 = time.perf_counter()
            r = subprocess.run([*lt_bench_cmd(), "fit", "--method", run["method"],
                                "--out", run["out"], "--params", json.dumps(run["params"]),
                                *[f"--base={k}={v}" for k, v in run["base"].items()], *common],
                               capture_output=True, text=True, env=env)
            if r.returncode != 0:
                raise SystemExit(f"{run['method']} failed:\n{r.stderr[-3000:]}")
            separate += time.perf_counter() - t0
        one = job(tmp / "job")
        fits = [json.loads((tmp / "job" / m / "metrics.json").read_text())["info"]["fit_seconds"]
                for m in plan.head_methods()]
        cache = ["--reuse-dir", str(tmp / "cache")]
        job(tmp / "cached", *cache)
        unchanged = job(tmp / "cached", *cache)
        one_changed = job(tmp / "cached", *cache, changed={"la": {"tau": 0.5}})
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    n = len(fits)
    print(f"(d) the demo's {n} features methods on a toy-shaped folder (K={TOY['k']}, "
          f"D={TOY['d']}), 1 thread:")
    print(f"    one process per method: {separate:.2f} s;  one head job: {one:.2f} s;  "
          f"ratio {separate / one:.2f}x")
    print(f"    head job wall - sum of fit_seconds = {one - sum(fits):.2f} s "
          f"({(one - sum(fits)) / n:.2f} s per run; target <= 1 s)")
    print(f"    rerun, nothing changed (fit cache): {unchanged:.2f} s;  la.tau changed "
          f"(la, gla refitted): {one_changed:.2f} s")
    return {"separate_s": separate, "job_s": one, "ratio": separate / one,
            "job_minus_fit_s": one - sum(fits), "per_run_overhead_s": (one - sum(fits)) / n,
            "cached_rerun_s": unchanged, "one_changed_s": one_changed, "n_runs": n}


# --- (c) CPU vs GPU -----------------------------------------------------------------------

def bench_cpu_vs_gpu(scale: float, epochs: int, method: str = "la") -> dict[str, float] | None:
    import torch

    if not torch.cuda.is_available():
        print("(c) CPU vs GPU: skipped, no CUDA device visible "
              f"(torch {torch.__version__}, CUDA build {torch.version.cuda})")
        return None
    ctx_cpu = imagenet_lt_context(scale, device="cpu")
    ctx_gpu = imagenet_lt_context(scale, device="cuda")
    project_fit(imagenet_lt_context(0.01, device="cuda"), method, 1)  # CUDA context, kernels
    cpu = project_fit(ctx_cpu, method, epochs)
    gpu = min(project_fit(ctx_gpu, method, epochs) for _ in range(3))
    gpu_bare = min(bare_fit(ctx_gpu, method, epochs) for _ in range(3))
    n = len(ctx_cpu.train)
    print(f"(c) one {method} head, N={n}, {epochs} epoch(s): CPU ({torch.get_num_threads()} "
          f"thread(s)) {cpu:.2f} s, GPU ({torch.cuda.get_device_name()}) {gpu:.2f} s: "
          f"{cpu / gpu:.1f}x; GPU bare loop {gpu_bare:.2f} s (project/bare {gpu / gpu_bare:.2f})")
    return {"cpu_s": cpu, "gpu_s": gpu, "speedup": cpu / gpu, "gpu_bare_s": gpu_bare}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scale", type=float, default=1.0,
                    help="fraction of ImageNet-LT's 115,846 train images in (a)/(c) (default 1)")
    ap.add_argument("--epochs", type=int, default=1, help="epochs per timed fit in (a)/(c)")
    ap.add_argument("--repeats", type=int, default=3, help="interleaved repeats in (a), runs in (b)")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    ap.add_argument("--device", default="cpu", help="device of (a): cpu (default), cuda")
    ap.add_argument("--methods", default="la,ce", help="head methods of (a)")
    ap.add_argument("--only", default="abcd", help="which parts to run, e.g. 'ab' or 'd'")
    ap.add_argument("--json", help="also write the numbers to this JSON file")
    a = ap.parse_args(argv)
    if not 0 < a.scale <= 1:
        ap.error(f"--scale {a.scale}: expected a fraction in (0, 1]")
    if a.epochs < 1 or a.repeats < 1:
        ap.error("--epochs and --repeats must be >= 1")
    import torch

    torch.set_num_threads(a.threads)
    print(f"machine: {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}, torch "
          f"{torch.__version__}, {a.threads} thread(s)")
    res: dict = {"args": vars(a), "load_avg": os.getloadavg()[0]}
    if "a" in a.only:
        res["a"] = bench_fit_vs_bare(a.scale, a.epochs, a.repeats, a.device,
                                     a.methods.split(","))
    if "b" in a.only:
        res["b"] = bench_startup_tax(a.repeats)
    if "d" in a.only:
        res["d"] = bench_head_job()
    if "c" in a.only:
        res["c"] = bench_cpu_vs_gpu(a.scale, a.epochs)
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=2))
    return res


if __name__ == "__main__":
    main()
