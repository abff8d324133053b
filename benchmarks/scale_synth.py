"""The synthesis under benchmarks/scale.py: what the paper suite's GPU jobs leave behind, at
its real shapes and run counts × F, written through the project's own writers, and its
ensemble jobs run as the workflow runs them (``lt-bench combine --runs``, measured)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
from scale_measure import REPO, lt, measure, tree_bytes

D = 768
#: (K, train, val, test, head/tail ratio of the train counts): LIFT's split lists
SHAPES = {
    "imagenet_lt": (1000, 115_846, 20_000, 50_000, 256.0),
    "places_lt": (365, 62_500, 7_300, 36_500, 996.0),
    "inat2018": (8142, 437_513, 24_426, 24_426, 500.0),
}
LOGIT_SCALE = 30.0
#: LIFT's five-crop TTE: crops per val/test image (lt_bench/backbones/transforms.py)
CROPS = 5


# --- synthesis ---------------------------------------------------------------------------

def train_counts(k: int, n: int, ratio: float) -> np.ndarray:
    """Exponentially decaying counts (head/tail = ratio), every class ≥ 1, summing to n."""
    w = ratio ** (-np.arange(k) / max(k - 1, 1))
    c = np.maximum(1, np.floor(w / w.sum() * n)).astype(np.int64)
    c[0] += n - c.sum() if n > c.sum() else 0
    return c


class World:
    """One dataset's synthetic class geometry and splits at fraction F."""

    def __init__(self, dataset: str, fraction: float, seed: int = 0):
        k, n_tr, n_va, n_te, ratio = SHAPES[dataset]
        self.dataset, self.k = dataset, k
        rng = np.random.default_rng([seed, k])
        self.means = rng.standard_normal((k, D)).astype(np.float32) / np.sqrt(D)
        self.counts = train_counts(k, max(k, round(n_tr * fraction)), ratio)
        self.labels = {
            "train": np.repeat(np.arange(k), self.counts).astype(np.int64),
            # val is class-balanced, as LIFT's val lists are (20 / 20 / 3 a class): the prior
            # estimate (`lt-bench prior`) needs every class in it
            "val": rng.permutation(np.arange(max(k // 10, round(n_va * fraction))) % k),
            "test": rng.integers(0, k, max(k // 10, round(n_te * fraction))),
        }
        self.classnames = [f"class_{i:05d}" for i in range(k)]


def write_features(world: World, backbone: str, out: Path, seed: int,
                   tte: bool = True) -> dict[str, np.ndarray]:
    """The features folder of one (dataset, backbone): {split}.parquet (val/test with their
    five crops unless ``tte`` is false) and text.parquet; the centre features by split."""
    from lt_bench.features.store import (
        features_table,
        read_features,
        write_table,
        write_text_embeddings,
    )
    from lt_bench.io import sha256_file

    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([seed, world.k, 7])
    base = {"backbone": backbone, "dataset": world.dataset, "pretrained": "synthetic",
            "feature": "encode_image", "transform": "synthetic"}
    feats = {}
    for split, y in world.labels.items():
        x = np.empty((len(y), D), np.float16)
        # the suite's extraction: `extract: {tte: both}` (config.yaml): val/test also carry
        # the five crops (lt_bench/features/extract.py), read by the `*_tte` twins
        crops = np.empty((len(y), CROPS, D), np.float16) if tte and split != "train" else None
        for i in range(0, len(y), 32768):  # chunks: iNat's train is 437.5k x 768
            yy = y[i:i + 32768]
            x[i:i + len(yy)] = (1.2 * world.means[yy] * np.sqrt(D)
                                + rng.standard_normal((len(yy), D), np.float32)) / np.sqrt(D)
            if crops is not None:
                crops[i:i + len(yy)] = x[i:i + len(yy), None, :] + 0.3 * rng.standard_normal(
                    (len(yy), CROPS, D), np.float32) / np.sqrt(D)
        split_file = out / f"{split}.split.txt"  # stands in for the split list's hash
        split_file.write_text(f"{world.dataset} {split} {len(y)}\n")
        meta = {**base, "split": split, "split_sha256": sha256_file(split_file),
                **({"tte": "synthetic", "default_view": "centre"} if crops is not None else {})}
        split_file.unlink()
        paths = [f"{split}/{i}.jpg" for i in range(len(y))]
        write_table(features_table(paths, y, x, meta, crops=crops), out / f"{split}.parquet")
        del x, crops
        feats[split] = read_features(out / f"{split}.parquet").features  # what runs see
    emb = world.means / np.linalg.norm(world.means, axis=1, keepdims=True)
    write_text_embeddings(out / "text.parquet", world.classnames, emb,
                          {**base, "split": "text", "logit_scale": 100.0},
                          init_embeddings=emb)
    return feats


def write_prior_file(world: World, backbone: str, out: Path, seed: int) -> np.ndarray:
    from lt_bench.prior import write_prior

    rng = np.random.default_rng([seed, world.k, 11])
    q = world.counts / world.counts.sum() * np.exp(0.3 * rng.standard_normal(world.k))
    q /= q.sum()
    q5 = q * np.exp(0.05 * rng.standard_normal(world.k))  # the five-crop view's estimate
    q5 /= q5.sum()
    out.parent.mkdir(parents=True, exist_ok=True)
    # both views' q̂, as `lt-bench prior` writes it from `extract: {tte: both}` features
    write_prior(out, q, {"temperature": 1.0, "split": "val", "dataset": world.dataset,
                         "backbone": backbone, "num_classes": world.k, "view": "centre",
                         "views": {"fivecrop": {"temperature": 1.0}},
                         "method": "synthetic (benchmarks/scale.py)"},
                views={"fivecrop": q5})
    return q


def _unit(x):
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


#: a synthetic k-NN run's real neighbour search above this many multiply-adds (N_eval ×
#: N_train × D) is replaced by the linear stand-in's logits (F = 1: 74 TMAC over the 9 k-NN
#: runs, ~77 min on one core, a head job's cost, not the tail's: nothing in the tail
#: rebuilds a run's logits now that significance reads its stored predictions)
KNN_EXACT_MAC = 2e11


#: rank of a synthetic head's weight noise (``HeadLogits``)
NOISE_RANK = 32
#: the methods whose synthetic head carries a logit adjustment (−½ log π)
ADJUSTED = ("la", "bs", "la_posthoc", "gla", "gla_train", "lade", "tau_norm")


class HeadLogits:
    """The synthetic heads' logits on one features folder, cheaply: a head's weights are
    ``W = M + c·A·B`` (the class means M plus rank-``NOISE_RANK`` noise, A: K × r, B: r × D),
    so ``f̂ Wᵀ = f̂ Mᵀ + c·(f̂ Bᵀ) Aᵀ`` with ``f̂ Mᵀ`` computed once per split here; a run
    costs N × K × r instead of a full N × D × K product (iNat2018: 9.6 s → < 1 s a run,
    profiled at F = 1). The saved predictor is that W: the seam's rebuild equals these
    logits up to rounding."""

    def __init__(self, world: World, feats: dict[str, np.ndarray]):
        self.world = world
        self.unit = {s: _unit(feats[s].astype(np.float32)) for s in ("val", "test")}
        self.means = {s: self.unit[s] @ world.means.T for s in ("val", "test")}

    def head(self, rng, noise: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(W, A, B) of one run: entries of c·A·B have the variance of noise² / D."""
        k = self.world.k
        a = rng.standard_normal((k, NOISE_RANK), np.float32)
        b = rng.standard_normal((NOISE_RANK, D), np.float32) * np.float32(
            noise / np.sqrt(D * NOISE_RANK))
        return self.world.means + a @ b, a, b

    def logits(self, split: str, w, a, b, bias) -> np.ndarray:
        z = (self.unit[split] @ b.T) @ a.T
        z += self.means[split]
        z *= (LOGIT_SCALE / np.maximum(np.linalg.norm(w, axis=1), 1e-12)).astype(np.float32)
        if bias is not None:
            z += bias
        return z


def feature_run(world, backbone, method, seed, feats, fdir: str, out: Path, q, prior: str,
                train_sha: str, shas: dict, exact: bool = False, params: dict | None = None,
                cache: HeadLogits | None = None):
    """One head-job run: the method's predictor (linear, or k-NN), its logits, write_run.
    ``exact``: the logits are the seam's (``split_features_logits`` of the saved predictor on
    the run's view, float64, every k-NN search real), so ``lt-bench logits`` of every
    synthetic run equals its metrics' (a before/after of significance on these files
    compares like with like); otherwise ``HeadLogits``' float32 products on the centre view
    (a five-crop twin's too: equal to the seam's up to rounding and the crops) and k-NN as
    ``KNN_EXACT_MAC`` says."""
    from lt_bench.features.eval_views import split_view
    from lt_bench.features.store import read_features
    from lt_bench.methods._predictor import (
        LinearPredictor,
        LinearTerm,
        split_features_logits,
    )
    from lt_bench.runs.folder import write_run

    params = params or {}
    view = "fivecrop" if params.get("view") == "fivecrop" else "centre"
    base_method = method.removesuffix("_tte")
    cache = cache or HeadLogits(world, feats)
    rng = np.random.default_rng(abs(hash((world.dataset, backbone, method, seed))) % 2**32)
    out.mkdir(parents=True, exist_ok=True)
    history = []
    noise = 0.6 + 0.1 * (hash(method) % 5)
    w, a, b = cache.head(rng, noise)
    bias = None
    if base_method in ADJUSTED:
        bias = (-np.log(world.counts / world.counts.sum())).astype(np.float32) * 0.5
    logits = {s: cache.logits(s, w, a, b, bias) for s in ("val", "test")}

    def seam_split(s):
        return split_view(read_features(f"{fdir}/{s}.parquet"), view, fdir)

    if base_method == "knn":
        from lt_bench.methods.knn import KNNPredictor

        pred = KNNPredictor(10, 0.07, f"{fdir}/train.parquet", train_sha, world.k)
        crops = 1 if view == "centre" else CROPS
        macs = sum(len(feats[s]) for s in ("val", "test")) * crops * len(
            world.labels["train"]) * D
        if exact or macs <= KNN_EXACT_MAC:
            logits = {s: split_features_logits(pred, seam_split(s)) for s in ("val", "test")}
    else:
        pred = LinearPredictor([LinearTerm(w, scale=LOGIT_SCALE)], bias)
        if exact:
            logits = {s: split_features_logits(pred, seam_split(s)) for s in ("val", "test")}
        if base_method not in ("zero_shot", "tau_norm", "la_posthoc", "gla"):
            history = [{"epoch": e, "train_loss": 2.0 / (e + 1), "val_top1": 0.5, "lr": 0.01}
                       for e in range(10)]
    pred.save(out)
    config = {"method": method, "consumes": "features", "hparams": params, "seed": seed,
              "dataset": world.dataset, "backbone": backbone, "features_dir": fdir,
              "view": view,
              **shas, "num_classes": world.k,
              "prior": prior, "tune": True, "device": "cpu", "base_runs": {},
              "fit_key": "synthetic"}
    write_run(out, {s: (world.labels[s], logits[s]) for s in ("val", "test")},
              train_counts=world.counts, config=config, info={"fit_seconds": 1.0},
              history=history, pretrain_prior=q,
              extra_metrics={"n_trainable_params": world.k * D, "inference_cost": 1.0})


def finetuned_run(world, backbone, method, seed, out: Path, q, prior: str, split_sha: dict):
    """A fine-tuned run as ``lt-bench finetune`` leaves it (``write_finetuned_run``): the
    pre-head features of both test-time views (float16), the trained parameters
    (AdaptFormer's adapters + the K × D head, float32) and the seam's logits evaluated."""
    from lt_bench.runs.finetune import write_finetuned_run

    rng = np.random.default_rng(abs(hash((world.dataset, backbone, method, seed))) % 2**32)
    labels, views = {}, {}
    for s in ("val", "test"):
        y = labels[s] = world.labels[s]
        centre = 1.5 * world.means[y] + rng.standard_normal((len(y), D), np.float32) / np.sqrt(D)
        views[s] = {"centre": centre, "tte": _unit(centre + 0.3 * rng.standard_normal(
            centre.shape, np.float32) / np.sqrt(D))}
    head = world.means + 0.5 * rng.standard_normal(world.means.shape, np.float32) / np.sqrt(D)
    trainable = {"adapters": np.zeros(12 * 2 * (D * 64 + 64), np.float32), "head.weight": head}
    config = {"method": method, "consumes": "images", "hparams": {}, "seed": seed,
              "dataset": world.dataset, "backbone": backbone, "features_dir": None,
              "split_sha256": split_sha, "num_classes": world.k, "prior": prior,
              "device": "cuda", "precision": "fp16", "view": "centre"}
    write_finetuned_run(out, labels=labels, features=views, trainable=trainable,
                        scale=LOGIT_SCALE, view="centre", train_counts=world.counts,
                        config=config, info={"train_seconds": 3600.0, "loss": "la"},
                        history=[{"epoch": e, "train_loss": 1.0 / (e + 1)} for e in range(10)],
                        pretrain_prior=q, extra_metrics={"n_trainable_params": 1_200_000,
                                                         "inference_cost": 1.0})


def ensemble_jobs(plan, d: str, seeds) -> list[tuple[str, list[dict]]]:
    """(job, ``--runs`` list) of the workflow's ensemble jobs of dataset ``d``: combine_runs
    per seed (every ensemble of feature runs), then ensemble_of_runs (the fine-tuned
    backdoor and the views of each fine-tuning; one run per job in the workflow, one
    process per dataset here: each run frees its logits before the next)."""
    combined = set(plan.combined_methods())
    jobs = [(f"combine_runs seed{seed}", plan.combine_runs(d, seed)) for seed in seeds]
    rest = [r for (dd, bb, m, seed) in plan.ensemble_runs() if dd == d and m not in combined
            for r in plan.combine_run(dd, bb, m, seed)]
    return jobs + ([("ensemble_of_runs (all)", rest)] if rest else [])


def run_ensemble_jobs(plan, root: Path, d: str, jobs, code: Path, parallel: int = 1) -> list[dict]:
    """Each ensemble job as the workflow runs it (``lt-bench combine --runs``, a process of
    its own, lt_bench imported from ``code``, one thread: the rules' ``threads: 1``): wall,
    peak RSS, bytes written (its runs' folders). ``parallel`` jobs at a time, as
    ``snakemake --cores N`` runs these independent jobs side by side."""
    from concurrent.futures import ThreadPoolExecutor

    (root / "logs").mkdir(exist_ok=True)
    env = {**os.environ, "PYTHONPATH": str(code), "OMP_NUM_THREADS": "1"}

    def one(i_job):
        i, (job, runs) = i_job
        cmd = lt(*plan.run_list_variants(runs), "combine", "--runs", json.dumps(runs))
        log = root / "logs" / f"{job.split()[0]}_{d}_{i}.log"
        wall, rss, _ = measure(cmd, root, log, env)
        nbytes = sum(tree_bytes(root / r["out"]) for r in runs)
        print(f"  {job:22s} {d:12s} {len(runs):3d} runs {wall:8.1f} s {rss:8.0f} MiB "
              f"{nbytes / 2**20:9.1f} MiB", flush=True)
        return {"stage": job, "dataset": d, "runs": len(runs), "wall": wall, "rss": rss,
                "bytes": nbytes}

    with ThreadPoolExecutor(max(1, parallel)) as pool:
        return list(pool.map(one, enumerate(jobs)))


def synthesize(root: Path, fraction: float, datasets: list[str], exact: bool = False,
               code: Path = REPO, combine_only: bool = False,
               parallel: int = 1) -> tuple[dict[str, float], list]:
    """Every file of the paper suite's GPU stages under root/results; seconds per part and
    the ensemble jobs' rows. ``combine_only``: only the member runs of seed 0's combine_runs
    job and that job (its memory at the dataset's shape; ``--combine-job``)."""
    from lt_bench.features.store import read_meta
    from lt_bench.io import sha256_file

    plan = paper_plan()
    os.chdir(root)
    t = {"features": 0.0, "feature runs": 0.0, "fine-tuned runs": 0.0, "ensembles": 0.0}
    s = plan.suite
    ens_rows: list[dict] = []
    for d in datasets:
        world = World(d, fraction)
        for bi, b in enumerate(s.backbones):
            t0 = time.time()
            fdir = f"results/features/{d}/{b}"
            feats = write_features(world, b, Path(fdir), bi)
            prior = f"results/prior/{d}/{b}.parquet"
            q = write_prior_file(world, b, Path(prior), bi)
            train_sha = sha256_file(Path(fdir) / "train.parquet")
            shas = {"feature_sha256": {sp: sha256_file(Path(fdir) / f"{sp}.parquet")
                                       for sp in ("train", "val", "test")},
                    "split_sha256": {sp: read_meta(Path(fdir) / f"{sp}.parquet")["split_sha256"]
                                     for sp in ("train", "val", "test")}}
            t["features"] += time.time() - t0
            t0 = time.time()
            jobs = [plan.head_runs(d, b, seed) for seed in s.seeds] + [plan.head_runs(d, b)]
            wanted = set(plan.combine_inputs(d, s.seeds[0])) if combine_only else None
            cache = HeadLogits(world, feats)
            for job in jobs:
                for r in job:
                    if wanted is not None and f"{r['out']}/metrics.json" not in wanted:
                        continue
                    feature_run(world, b, r["method"], r["seed"], feats, fdir, Path(r["out"]),
                                q, prior, train_sha, shas, exact, r["params"], cache)
            del cache
            t["feature runs"] += time.time() - t0
            t0 = time.time()
            for (dd, bb, m, seed) in plan.per_backbone_runs(consumes="images"):
                if (dd, bb) == (d, b) and not combine_only:
                    finetuned_run(world, b, m, seed, Path(plan_run_dir(dd, bb, m, seed)), q,
                                  prior, shas["split_sha256"])
            t["fine-tuned runs"] += time.time() - t0
            del feats
        t0 = time.time()
        jobs = ensemble_jobs(plan, d, s.seeds)
        ens_rows += run_ensemble_jobs(plan, root, d, jobs[:1] if combine_only else jobs, code,
                                      parallel)
        t["ensembles"] += time.time() - t0
    return t, ens_rows


def paper_plan():
    """lt_bench.plan.Plan of config.yaml's ``paper`` suite (what `--config suite=paper` plans)."""
    import yaml

    from lt_bench.plan import Plan

    cfg = yaml.safe_load((REPO / "config.yaml").read_text())
    cfg["suite"] = "paper"
    return Plan(cfg)


def plan_run_dir(d, b, m, seed) -> str:
    from lt_bench.plan import run_dir

    return run_dir(d, b, m, seed)
