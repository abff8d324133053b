import json
import os

from snakemake.utils import validate

from lt_bench.config import method_hparams, resolve_suite
from lt_bench.methods import METHODS


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
        req: run_dir(wildcards.dataset, wildcards.backbone, req, wildcards.seed)
        + "/metrics.json"
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


def suite_runs():
    return [
        run_dir(d, b, m, s) + "/metrics.json"
        for d in SUITE.datasets
        for b in SUITE.backbones
        for m in SUITE.methods
        for s in SUITE.seeds
    ]


# Each stage file appends its final outputs here; `rule all` asks for all of them.
FINAL_TARGETS = []


def all_targets():
    return FINAL_TARGETS
