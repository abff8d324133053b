import json
import os
import sys
import shlex

from snakemake.utils import validate

from lt_bench.config import method_hparams, resolve_suite
from lt_bench.methods import METHODS


# Jobs call the `lt-bench` CLI installed next to this Python; put it first on PATH so
# `.venv/bin/snakemake` works without activating the venv (also inside SLURM jobs).
shell.prefix(f"set -euo pipefail; export PATH={shlex.quote(os.path.dirname(sys.executable))}:$PATH; ")

validate(config, "../schemas/config.schema.yaml")
SUITE = resolve_suite(config)


wildcard_constraints:
    dataset=r"[a-z0-9_]+",
    backbone=r"[A-Za-z0-9_.-]+",
    method=r"[a-z0-9_]+",
    seed=r"\d+",


def dataset_params(dataset):
    return (config.get("datasets") or {}).get(dataset) or {}


def is_toy_backbone(backbone):
    return backbone.startswith("toyclip")


def checkpoint_input(wildcards):
    """Toy CLIPs are pre-trained by the pipeline; real backbones come from open_clip/timm."""
    if is_toy_backbone(wildcards.backbone):
        return f"results/backbones/{wildcards.backbone}/checkpoint.pt"
    return []


def features(dataset, backbone):
    return expand(
        "results/features/{dataset}/{backbone}/{split}.parquet",
        dataset=dataset,
        backbone=backbone,
        split=["train", "val", "test", "text"],
    )


def run_dir(dataset, backbone, method, seed):
    return f"results/runs/{dataset}/{backbone}/{method}/seed{seed}"


def base_run_inputs(wildcards):
    """metrics.json of the runs a post-hoc method builds on (same dataset/backbone/seed)."""
    cls = METHODS.get(wildcards.method)
    return {
        req: f"{run_dir(wildcards.dataset, wildcards.backbone, req, wildcards.seed)}/metrics.json"
        for req in cls.requires
    }


def base_run_args(wildcards, input):
    return " ".join(
        f"--base {req}={os.path.dirname(input[req])}"
        for req in METHODS.get(wildcards.method).requires
    )


def hparams_json(wildcards):
    return json.dumps(
        method_hparams(config, wildcards.method, wildcards.dataset), sort_keys=True
    )


def is_ensemble_method(method):
    """Methods that combine runs of several backbones (backdoor) are not per-backbone runs."""
    return getattr(METHODS.get(method), "kind", None) == "ensemble"


def has_text_tower(backbone):
    from lt_bench.backbones.base import resolve_spec

    return resolve_spec(backbone).has_text


def prior_path(dataset, backbone):
    return f"results/prior/{dataset}/{backbone}.parquet"


def prior_input(wildcards):
    """Every run of a backbone with a text tower gets its estimated prior q̂ (P-groups)."""
    if has_text_tower(wildcards.backbone):
        return {"prior": prior_path(wildcards.dataset, wildcards.backbone)}
    return {}


def prior_arg(wildcards, input):
    return f"--prior {input.prior}" if "prior" in input.keys() else ""


def tune_arg(wildcards):
    """--no-tune where the dataset's val split overlaps train (iNat2018's default policy)."""
    from lt_bench.data import get_dataset

    ds = get_dataset(wildcards.dataset, **dataset_params(wildcards.dataset))
    return "--no-tune" if ds.val_overlaps_train else "--tune"


def toy_prior_backbones():
    """Toy backbones of the suite on the toy dataset: their true prior is known."""
    if "toy" not in SUITE.datasets:
        return []
    return [b for b in SUITE.backbones if is_toy_backbone(b) and has_text_tower(b)]


def true_prior_input(wildcards):
    if wildcards.dataset == "toy" and is_toy_backbone(wildcards.backbone):
        return {"true_prior": f"results/backbones/{wildcards.backbone}/prior.parquet"}
    return {}


def true_prior_arg(wildcards, input):
    return f"--true-prior {input.true_prior}" if "true_prior" in input.keys() else ""


def backdoor_members(wildcards):
    """The la runs of every backbone of the suite, same dataset and seed."""
    return [
        f"{run_dir(wildcards.dataset, b, 'la', wildcards.seed)}/metrics.json"
        for b in SUITE.backbones
    ]


def ensemble_runs():
    """The backdoor runs: one per dataset and seed, when the suite has >= 2 backbones."""
    if len(SUITE.backbones) < 2:
        return []
    return [
        f"{run_dir(d, 'ensemble', m, s)}/metrics.json"
        for d in SUITE.datasets
        for m in SUITE.methods
        if is_ensemble_method(m)
        for s in SUITE.seeds
    ]


def suite_runs():
    return [
        f"{run_dir(d, b, m, s)}/metrics.json"
        for d in SUITE.datasets
        for b in SUITE.backbones
        for m in SUITE.methods
        if not is_ensemble_method(m)
        for s in SUITE.seeds
    ] + ensemble_runs()


# Each stage file appends its final outputs here; `rule all` asks for all of them.
FINAL_TARGETS = []


def all_targets():
    return FINAL_TARGETS


# --- real data (data.smk, features.smk) ------------------------------------------------


def reads_data_root(dataset):
    """Real datasets whose images live under data_root (toy and CIFAR write their own)."""
    from lt_bench.data import DATASETS
    from lt_bench.data.real import LiftSplitDataset

    cls = DATASETS.get(dataset)
    return issubclass(cls, LiftSplitDataset) or getattr(cls, "needs_data_root", False)


def image_dir(dataset):
    """<data_root>/<data_dirs[dataset]> (an absolute data_dirs entry wins); None if unset."""
    if not config.get("data_root"):
        return None
    sub = (config.get("data_dirs") or {}).get(dataset, dataset)
    return os.path.join(os.path.expanduser(config["data_root"]), sub)


def image_dir_arg(wildcards):
    d = image_dir(wildcards.dataset)
    return f"--data-root {shlex.quote(d)}" if d else ""


def image_dir_note(wildcards):
    d = image_dir(wildcards.dataset)
    if d:
        return f"data_root + data_dirs.{wildcards.dataset} = {d}"
    return "config key data_root is not set (--config data_root=/datasets)"


def real_image_datasets():
    from lt_bench.data import DATASETS

    return [d for d in DATASETS.names() if reads_data_root(d)]


def images_verified(wildcards):
    """The image check of a real dataset. ancient(): re-checking (e.g. after data_root
    moved) must not re-extract features of unchanged images."""
    if reads_data_root(wildcards.dataset):
        return ancient(f"resources/data/{wildcards.dataset}/images_verified.json")
    return []


# --- tracking and report (tracking.smk, report.smk) -------------------------------------


def tracking_store_id():
    """Hash of the MLflow store the ingestion writes to ($MLFLOW_TRACKING_URI, else the
    project's SQLite file): a params entry, so that another store re-ingests, without a
    password ever reaching .snakemake/ metadata. Not `envvars:`, which Snakemake 9 makes
    mandatory (WorkflowError when unset); this variable is optional."""
    from lt_bench.io import stable_hash

    uri = os.environ.get("MLFLOW_TRACKING_URI") or "sqlite:///" + os.path.abspath(
        "results/mlflow/mlflow.db"
    )
    return stable_hash(uri)


def dataset_runs(wildcards):
    """metrics.json of the suite's runs on one dataset (ensemble runs included)."""
    return [f for f in suite_runs() if f.startswith(f"results/runs/{wildcards.dataset}/")]


def producible(path):
    """A file that exists or that some rule of the workflow makes (e.g. the prior stage)."""
    return os.path.exists(path) or any(r.is_producer(path) for r in workflow.rules)


def toy_backbones_of(dataset):
    """Backbones whose true pre-training prior is known: the toy CLIPs, on the toy world."""
    if dataset != "toy":
        return []
    return [b for b in SUITE.backbones if is_toy_backbone(b)]


def prior_files(wildcards):
    """The toy backbones' prior files (q_hat, q_true) that the workflow has or makes."""
    paths = {
        b: f"results/prior/{wildcards.dataset}/{b}.parquet"
        for b in toy_backbones_of(wildcards.dataset)
    }
    return {b: p for b, p in paths.items() if producible(p)}


def prior_args(wildcards, input):
    return " ".join(f"--prior {b}={input[b]}" for b in prior_files(wildcards))


def figure_targets():
    """results/figures/{dataset}/...: accuracy figures, D×P heat-maps, prior check (toy)."""
    out = []
    for d in SUITE.datasets:
        stems = ["acc_vs_count", "acc_vs_qhat"] + [f"dxp_{m}" for m in SUITE.methods]
        if toy_backbones_of(d):
            stems.append("prior_vs_true")
        out += [f"results/figures/{d}/{s}.{ext}" for s in stems for ext in ("png", "pdf")]
    return out
