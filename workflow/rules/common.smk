# Thin adapters from Snakemake wildcards to the planning library (lt_bench/plan.py), which
# makes every decision (runs, inputs, data_root, tuning, final targets) and is unit-tested.
import json
import os
import sys
import shlex

from snakemake.utils import validate

from lt_bench.plan import Plan, run_dir


# Jobs call the `lt-bench` CLI installed next to this Python; put it first on PATH so
# `.venv/bin/snakemake` works without activating the venv (also inside SLURM jobs).
shell.prefix(f"set -euo pipefail; export PATH={shlex.quote(os.path.dirname(sys.executable))}:$PATH; ")

validate(config, "../schemas/config.schema.yaml")
PLAN = Plan(config)
SUITE = PLAN.suite


wildcard_constraints:
    dataset=r"[a-z0-9_]+",
    backbone=r"[A-Za-z0-9_.-]+",
    method=r"[a-z0-9_]+",
    seed=r"\d+",


def q(s):
    return shlex.quote(str(s))


def dataset_params(dataset):
    return PLAN.dataset_params(dataset)


def checkpoint_input(wc):
    """Toy CLIPs are pre-trained by the pipeline; real backbones come from open_clip/timm."""
    if PLAN.is_toy_backbone(wc.backbone):
        return f"results/backbones/{wc.backbone}/checkpoint.pt"
    return []


def features(dataset, backbone):
    return [f"results/features/{dataset}/{backbone}/{s}.parquet" for s in ("train", "val", "test", "text")]


def base_run_inputs(wc):
    bases = PLAN.base_runs(wc.dataset, wc.backbone, wc.method, wc.seed)
    return {name: f"{d}/metrics.json" for name, d in bases.items()}


def base_run_args(wc):
    bases = PLAN.base_runs(wc.dataset, wc.backbone, wc.method, wc.seed)
    return " ".join(f"--base {name}={q(d)}" for name, d in bases.items())


def hparams_json(wc):
    return json.dumps(PLAN.hparams(wc.method, wc.dataset), sort_keys=True)


def prior_input(wc):
    """Every run of a backbone with a text tower gets its estimated prior q̂ (P-groups)."""
    if PLAN.has_text(wc.backbone):
        return {"prior": f"results/prior/{wc.dataset}/{wc.backbone}.parquet"}
    return {}


def true_prior_input(wc):
    if wc.backbone in PLAN.toy_prior_backbones(wc.dataset):
        return {"true_prior": f"results/backbones/{wc.backbone}/prior.parquet"}
    return {}


def opt_arg(flag, key):
    """`--flag <input.key>` where the input function gave that key, else nothing."""
    return lambda wc, input: f"{flag} {q(input[key])}" if key in input.keys() else ""


def tune_arg(wc):
    return "--tune" if PLAN.may_tune(wc.dataset) else "--no-tune"


def ensemble_members(wc):
    dirs = PLAN.ensemble_members(wc.dataset, wc.backbone, wc.method, wc.seed)
    return [f"{d}/metrics.json" for d in dirs]


def methods_regex(kind):
    return "|".join(PLAN.methods_consuming(kind)) or "none"


def suite_runs():
    return PLAN.suite_runs()


def dataset_runs(wc):
    return PLAN.dataset_runs(wc.dataset)


def all_targets():
    return PLAN.final_targets()


def figure_targets():
    return PLAN.figure_targets()


# --- real data (data.smk, features.smk) --------------------------------------------------


def real_image_datasets():
    return PLAN.real_image_datasets()


def image_dir_arg(wc):
    d = PLAN.image_dir(wc.dataset)
    return f"--data-root {q(d)}" if d else ""


def image_dir_note(wc):
    d = PLAN.image_dir(wc.dataset)
    if d:
        return f"data_root + data_dirs.{wc.dataset} = {d}"
    return "config key data_root is not set (--config data_root=/datasets)"


def images_verified(wc):
    """The image check of a real dataset. ancient(): re-checking (e.g. after data_root
    moved) must not re-extract features of unchanged images."""
    if PLAN.reads_data_root(wc.dataset):
        return ancient(f"resources/data/{wc.dataset}/images_verified.json")
    return []


# --- priors, tracking and report (analysis.smk, tracking.smk, report.smk) ----------------


def prior_files(wc):
    """The toy backbones' prior files (q_hat, q_true): their true prior is known."""
    return {b: f"results/prior/{wc.dataset}/{b}.parquet" for b in PLAN.toy_prior_backbones(wc.dataset)}


def prior_args(wc, input):
    return " ".join(f"--prior {b}={q(input[b])}" for b in prior_files(wc))


def tracking_store_id():
    """Hash of the MLflow store the ingestion writes to: a params entry, so another store
    re-ingests, without a password reaching .snakemake/ metadata (not `envvars:`, which
    Snakemake 9 makes mandatory)."""
    from lt_bench.io import stable_hash

    uri = os.environ.get("MLFLOW_TRACKING_URI") or "sqlite:///" + os.path.abspath("results/mlflow/mlflow.db")
    return stable_hash(uri)
