"""The workflow's decisions, as a small library the Snakefile only adapts (docs/architecture.md,
"Planning"): which runs a suite has, what each run reads, which datasets read ``data_root``,
what is a toy backbone, may a dataset's knobs be tuned, and the final targets.

Decided from the **configured** dataset parameters (``config["datasets"][name]``), not the
defaults, in one place. Imports no torch: ``snakemake -n`` stays fast.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cache, cached_property
from typing import Any

from lt_bench.config import method_hparams, resolve_suite

RUNS = "results/runs"
#: run folder pattern, the same as lt_bench.runs.folder.run_dir
RUN_DIR = RUNS + "/{dataset}/{backbone}/{method}/seed{seed}"


def run_dir(dataset: str, backbone: str, method: str, seed: int | str) -> str:
    return RUN_DIR.format(dataset=dataset, backbone=backbone, method=method, seed=seed)


def metrics_file(dataset: str, backbone: str, method: str, seed: int | str) -> str:
    return run_dir(dataset, backbone, method, seed) + "/metrics.json"


@cache
def _method(name: str):
    from lt_bench.methods import METHODS

    return METHODS.get(name)


@cache
def _backbone(name: str):
    from lt_bench.backbones.base import resolve_spec

    return resolve_spec(name)


@dataclass
class Plan:
    config: dict[str, Any]

    @cached_property
    def suite(self):
        return resolve_suite(self.config)

    # --- datasets ------------------------------------------------------------------------

    def dataset_params(self, dataset: str) -> dict[str, Any]:
        return dict((self.config.get("datasets") or {}).get(dataset) or {})

    def dataset(self, name: str):
        from lt_bench.data import get_dataset

        return get_dataset(name, **self.dataset_params(name))

    def reads_data_root(self, dataset: str) -> bool:
        """Real datasets whose images live under data_root (toy and CIFAR write their own)."""
        from lt_bench.data import DATASETS

        return bool(getattr(DATASETS.get(dataset), "needs_data_root", False))

    def may_tune(self, dataset: str) -> bool:
        """Knobs are tuned on val unless the *configured* val split overlaps train."""
        return not self.dataset(dataset).val_overlaps_train

    def image_dir(self, dataset: str) -> str | None:
        """<data_root>/<data_dirs[dataset]> (an absolute data_dirs entry wins); None if unset."""
        root = self.config.get("data_root")
        if not root:
            return None
        sub = (self.config.get("data_dirs") or {}).get(dataset, dataset)
        return os.path.join(os.path.expanduser(root), sub)

    def real_image_datasets(self) -> list[str]:
        from lt_bench.data import DATASETS

        return [d for d in DATASETS.names() if self.reads_data_root(d)]

    # --- backbones -----------------------------------------------------------------------

    @staticmethod
    def is_toy_backbone(backbone: str) -> bool:
        return _backbone(backbone).library == "toy"

    @staticmethod
    def has_text(backbone: str) -> bool:
        return _backbone(backbone).has_text

    def toy_prior_backbones(self, dataset: str = "toy") -> list[str]:
        """Backbones whose true pre-training prior is known: the toy CLIPs, on the toy world."""
        if dataset != "toy" or "toy" not in self.suite.datasets:
            return []
        return [b for b in self.suite.backbones if self.is_toy_backbone(b) and self.has_text(b)]

    # --- methods and runs -----------------------------------------------------------------

    @staticmethod
    def consumes(method: str) -> str:
        return _method(method).consumes

    @staticmethod
    def requires(method: str) -> tuple[str, ...]:
        return tuple(_method(method).requires)

    def hparams(self, method: str, dataset: str) -> dict[str, Any]:
        return method_hparams(self.config, method, dataset)

    def per_backbone_runs(self, consumes: str | None = None) -> list[tuple[str, str, str, int]]:
        """(dataset, backbone, method, seed) of every run of one backbone (not ensembles)."""
        s = self.suite
        return [(d, b, m, seed) for d in s.datasets for b in s.backbones for m in s.methods
                if self.consumes(m) != "runs" and (consumes is None or self.consumes(m) == consumes)
                for seed in s.seeds]

    def ensemble_runs(self) -> list[tuple[str, str, str, int]]:
        """(dataset, "ensemble", method, seed) of the ensembles over the suite's backbones
        (none with fewer than two backbones)."""
        s = self.suite
        if len(s.backbones) < 2:
            return []
        return [(d, "ensemble", m, seed) for d in s.datasets for m in s.methods
                if self.consumes(m) == "runs" for seed in s.seeds]

    def ensemble_members(self, dataset: str, method: str, seed: int | str) -> list[str]:
        """Member run folders: the ``members`` method's run of every backbone."""
        member_method = self.hparams(method, dataset).get("members", "la")
        return [run_dir(dataset, b, member_method, seed) for b in self.suite.backbones]

    def group_counts_file(self, dataset: str) -> str | None:
        """``group_counts.txt`` where the dataset's D-groups are not its train counts'."""
        from lt_bench.data import DATASETS

        if getattr(DATASETS.get(dataset), "writes_group_counts", False):
            return f"resources/data/{dataset}/group_counts.txt"
        return None

    def base_runs(self, dataset: str, backbone: str, method: str,
                  seed: int | str) -> dict[str, str]:
        return {r: run_dir(dataset, backbone, r, seed) for r in self.requires(method)}

    def suite_runs(self) -> list[str]:
        """metrics.json of every run of the suite."""
        return [metrics_file(*r) for r in self.per_backbone_runs() + self.ensemble_runs()]

    def dataset_runs(self, dataset: str) -> list[str]:
        return [f for f in self.suite_runs() if f.startswith(f"{RUNS}/{dataset}/")]

    # --- outputs -------------------------------------------------------------------------

    def figure_targets(self) -> list[str]:
        """results/figures/{dataset}/...: accuracy figures, D×P heat-maps, prior check (toy)."""
        out = []
        for d in self.suite.datasets:
            stems = ["acc_vs_count", "acc_vs_qhat", "dxp_vs_la"] + [
                f"dxp_{m}" for m in self.suite.methods]
            if self.toy_prior_backbones(d):
                stems.append("prior_vs_true")
            out += [f"results/figures/{d}/{s}.{ext}" for s in stems for ext in ("png", "pdf")]
        return out

    def final_targets(self, extra: list[str] | None = None) -> list[str]:
        """Everything `snakemake` (rule all) makes: the tables, figures, the prior check
        and the MLflow ingestion (which depends on every run)."""
        out = [f"results/tables/{t}.{ext}" for t in ("main", "dxp", "ablation")
               for ext in ("csv", "md", "tex", "html")] + ["results/tables/runs.csv"]
        out += [f"results/tables/{t}.html" for t in ("significance", "published", "findings")]
        if self.toy_prior_backbones():
            out += [f"results/tables/prior.{ext}" for ext in ("csv", "md", "tex", "html")]
        out += self.figure_targets()
        out.append("results/mlflow/ingested.json")
        return out + list(extra or [])
