"""The workflow's decisions, as a small library the Snakefile only adapts (docs/architecture.md,
"Planning"): which runs a suite has, what each run reads, which datasets read ``data_root``,
what is a toy backbone, may a dataset's knobs be tuned, and the final targets.

Decided from the **configured** dataset parameters (``config["datasets"][name]``), not the
defaults, in one place. Imports no torch: ``snakemake -n`` stays fast.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from lt_bench.config import (
    ConfigError,
    fivecrop_reader,
    method_class,
    method_hparams,
    method_names,
    resolve_suite,
    suite_extract,
)
from lt_bench.runs import layout

RUNS = layout.RUNS_ROOT
#: train images of the real datasets (docs/architecture.md §6), for time limits
TRAIN_IMAGES = {"imagenet_lt": 115_846, "places_lt": 62_500, "inat2018": 437_513}
#: a conservative fine-tuning rate for a time limit: ViT-B/16 + AdaptFormer, AMP, one GPU
FINETUNE_IMAGES_PER_S = 300
#: run folder pattern (lt_bench.runs.layout owns the layout)
RUN_DIR = f"{RUNS}/{layout.RUN_DIR}"


def run_dir(dataset: str, backbone: str, method: str, seed: int | str) -> str:
    return layout.run_dir(dataset, backbone, method, seed).as_posix()


def metrics_file(dataset: str, backbone: str, method: str, seed: int | str) -> str:
    return layout.metrics_path(run_dir(dataset, backbone, method, seed)).as_posix()


@dataclass
class Plan:
    config: dict[str, Any]
    _classes: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @cached_property
    def suite(self):
        suite = resolve_suite(self.config)
        self._check_views(suite)
        return suite

    # --- extraction ------------------------------------------------------------------------

    def extract_options(self) -> dict[str, Any]:
        """The ``extract:`` settings of this suite's extraction jobs (config.suite_extract)."""
        return suite_extract(self.config, self.suite.name)

    def _check_views(self, suite) -> None:
        """A run that reads the five-crop view (``view: fivecrop``: a ``_tte`` twin, or an
        ensemble's such members) needs features that have it: one line at plan time naming
        the method and the fix, not a failed head job after the extraction."""
        if suite_extract(self.config, suite.name).get("tte", "none") != "none":
            return
        for m in suite.methods:
            if hit := fivecrop_reader(self.config, m, suite.datasets):
                raise ConfigError(
                    f"suites.{suite.name}.methods: {hit[0]!r} reads the five-crop view (view: "
                    f"fivecrop) on {hit[1]}, which extract.tte: none does not store; set "
                    f"suites.{suite.name}.extract: {{tte: both}} (centre and five crops)")

    # --- datasets ------------------------------------------------------------------------

    def dataset_params(self, dataset: str) -> dict[str, Any]:
        return dict((self.config.get("datasets") or {}).get(dataset) or {})

    def dataset(self, name: str):
        from lt_bench.data import get_dataset

        return get_dataset(name, **self.dataset_params(name))

    def reads_data_root(self, dataset: str) -> bool:
        """Real datasets whose images live under data_root (toy and CIFAR write their own)."""
        from lt_bench.data import dataset_class

        return bool(getattr(dataset_class(dataset, self.dataset_params(dataset)),
                            "needs_data_root", False))

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

        declared = [d for d, p in (self.config.get("datasets") or {}).items()
                    if isinstance(p, dict) and "type" in p]
        return [d for d in DATASETS.names() + declared if self.reads_data_root(d)]

    # --- backbones -----------------------------------------------------------------------

    def backbone_spec(self, backbone: str):
        """A registered backbone, or one declared in the config's ``backbones:``."""
        from lt_bench.backbones.base import resolve_spec

        return resolve_spec(backbone, self.config.get("backbones"))

    def backbone_declaration(self, backbone: str) -> dict[str, Any] | None:
        """The config's declaration of ``backbone`` (jobs get it as --backbone-spec)."""
        return (self.config.get("backbones") or {}).get(backbone)

    def weights_file(self, backbone: str) -> str | None:
        """A backbone's local weights file (declared in the config), else None."""
        from lt_bench.backbones.base import looks_like_file

        spec = self.backbone_spec(backbone)
        return spec.pretrained if spec.library != "toy" and looks_like_file(spec.pretrained) \
            else None

    def is_toy_backbone(self, backbone: str) -> bool:
        return self.backbone_spec(backbone).library == "toy"

    def has_text(self, backbone: str) -> bool:
        return self.backbone_spec(backbone).has_text

    def toy_prior_backbones(self, dataset: str = "toy") -> list[str]:
        """Backbones whose true pre-training prior is known: the toy CLIPs, on the toy world."""
        if dataset != "toy" or "toy" not in self.suite.datasets:
            return []
        return [b for b in self.suite.backbones if self.is_toy_backbone(b) and self.has_text(b)]

    # --- methods and runs -----------------------------------------------------------------

    def method(self, name: str):
        """The class of method ``name`` under this config: a registered method, or a
        variant of one (lt_bench/methods/_variants.py)."""
        if name not in self._classes:
            self._classes[name] = method_class(self.config, name)
        return self._classes[name]

    def consumes(self, method: str) -> str:
        return self.method(method).consumes

    def requires(self, method: str) -> tuple[str, ...]:
        return tuple(self.method(method).requires)

    def variants_arg(self, methods=None, display: bool = False) -> list[str]:
        """``["--variants", JSON]`` declaring the config's variants among ``methods`` (all
        where None) to a job's ``lt-bench`` (it resolves them as the plan does); [] where
        there is none, so a config without variants gives the same commands as before.
        Jobs that make runs get no ``display`` (a new display name reruns no fitting; the
        report jobs, ``display=True``, get it)."""
        from lt_bench.methods import config_variants

        variants = config_variants(self.config)
        wanted = variants if methods is None else {m: variants[m] for m in dict.fromkeys(methods)
                                                  if m in variants}
        specs = {n: {k: v for k, v in e.items() if display or k != "display"}
                 for n, e in wanted.items()}
        # config order, not sorted: a generated display lists the keys as the user wrote them
        return ["--variants", json.dumps(specs, ensure_ascii=False)] if specs else []

    def run_list_variants(self, runs: list[dict[str, Any]]) -> list[str]:
        """:meth:`variants_arg` for a ``--runs`` list: its methods and their member methods."""
        names = [r["method"] for r in runs]
        names += [self.runs_method(r["method"], d).member_method for r in runs
                  if self.consumes(r["method"]) == "runs"
                  for d in self.suite.datasets]
        return self.variants_arg(names)

    def hparams(self, method: str, dataset: str) -> dict[str, Any]:
        return method_hparams(self.config, method, dataset)

    def runs_method(self, method: str, dataset: str):
        """The runs-consuming ``method`` with its hyper-parameters on ``dataset``: what
        declares its members (``lt_bench.methods._base.RunsMethod``)."""
        return self.method(method)(**self.hparams(method, dataset))

    def seeds_for(self, method: str) -> list[int]:
        """The suite's seeds; runs from images use ``finetune_seeds`` where the suite sets it
        (fine-tuning is the expensive track: the demo fine-tunes seed 0 only), and so do
        runs whose members are runs from images."""
        s = self.suite
        if self.consumes(method) == "images" or self.member_consumes(method) == "images":
            return list(s.finetune_seeds or s.seeds)
        return list(s.seeds)

    def member_consumes(self, method: str) -> str | None:
        """What the member runs of a runs-consuming method consume (None for other
        methods), from its member method on the suite's datasets (the first that differs
        from features wins: its runs wait for those members)."""
        if self.consumes(method) != "runs":
            return None
        kinds = [self.consumes(self.runs_method(method, d).member_method)
                 for d in self.suite.datasets]
        return next((k for k in kinds if k != "features"), kinds[0] if kinds else None)

    def per_backbone_runs(self, consumes: str | None = None) -> list[tuple[str, str, str, int]]:
        """(dataset, backbone, method, seed) of every run of one backbone (no ensembles)."""
        s = self.suite
        return [(d, b, m, seed) for d in s.datasets for b in s.backbones for m in s.methods
                if self.consumes(m) != "runs" and (consumes is None or self.consumes(m) == consumes)
                for seed in self.seeds_for(m)]

    def ensemble_runs(self) -> list[tuple[str, str, str, int]]:
        """Runs of the suite's runs-consuming methods: each method says the backbone labels
        of its runs (``RunsMethod.backbones``: "ensemble" over backbones, each backbone
        over seeds)."""
        s = self.suite
        return [(d, b, m, seed) for d in s.datasets for m in s.methods
                if self.consumes(m) == "runs"
                for b in self.runs_method(m, d).backbones(s.backbones)
                for seed in self.seeds_for(m)]

    def member_keys(self, dataset: str, backbone: str, method: str,
                    seed: int | str) -> list[tuple[str, str, str, int]]:
        """(dataset, backbone, method, seed) of one runs-consuming run's members, in order,
        as its method declares them (``RunsMethod.member_keys``)."""
        return self.runs_method(method, dataset).member_keys(dataset, backbone, int(seed),
                                                              self.suite.backbones)

    def ensemble_members(self, dataset: str, backbone: str, method: str,
                         seed: int | str) -> list[str]:
        """Member run folders of one runs-consuming run, in order. They are ordinary runs;
        those the suite does not have (extra seeds) are inputs of that run only."""
        return [run_dir(*k) for k in self.member_keys(dataset, backbone, method, seed)]

    @cached_property
    def _member_runs(self) -> list[tuple[str, str, str, int]]:
        """Every member run of the suite's runs-consuming runs, each once, in plan order."""
        return list(dict.fromkeys(k for r in self.ensemble_runs() for k in self.member_keys(*r)))

    def group_counts_file(self, dataset: str) -> str | None:
        """``group_counts.txt`` where the dataset's D-groups are not its train counts'."""
        from lt_bench.data import dataset_class

        if getattr(dataset_class(dataset, self.dataset_params(dataset)), "writes_group_counts",
                   False):
            return f"resources/data/{dataset}/group_counts.txt"
        return None

    def methods_consuming(self, kind: str) -> list[str]:
        """Registered methods and the config's variants that consume ``kind`` (rule wildcard
        constraints: member runs of a method outside the suite's list, e.g. ce for
        backdoor_ce, are still made)."""
        return [m for m in method_names(self.config) if self.consumes(m) == kind]

    def base_runs(self, dataset: str, backbone: str, method: str,
                  seed: int | str) -> dict[str, str]:
        return {r: run_dir(dataset, backbone, r, seed) for r in self.requires(method)}

    # --- head jobs: every features run of one (dataset, backbone, seed) in one process ----

    def _with_bases(self, methods) -> list[str]:
        """``methods`` in order, each after the base runs it builds on (``requires``)."""
        order: list[str] = []

        def visit(m: str) -> None:
            if m not in order:
                for r in self.requires(m):
                    visit(r)
                order.append(m)

        for m in methods:
            visit(m)
        return order

    def _features_members(self, at_suite_seeds: bool) -> list[tuple[str, int]]:
        """(method, seed) of the member runs on features, at the suite's seeds or not."""
        seeds = set(self.suite.seeds)
        return list(dict.fromkeys(
            (m, sd) for _, _, m, sd in self._member_runs
            if self.consumes(m) == "features" and (sd in seeds) == at_suite_seeds))

    def head_methods(self) -> list[str]:
        """Features-consuming methods fitted at the suite's seeds, a base before the runs
        built on it: the suite's own, their ``requires``, and every member method of a
        runs-consuming run at a suite seed (ce for backdoor_ce, la for the backdoor)."""
        want = [m for m in self.suite.methods if self.consumes(m) == "features"]
        return self._with_bases(want + [m for m, _ in self._features_members(True)])

    def member_seed_runs(self) -> list[tuple[str, int]]:
        """(method, seed) of the member runs on features at seeds outside the suite's (the
        same-backbone control's s + 1000, s + 2000) and of their bases: fitted per
        (dataset, backbone) in one process."""
        extra = self._features_members(False)
        runs = [(b, sd) for m, sd in extra for b in self._with_bases([m])]
        return sorted(dict.fromkeys(runs), key=lambda r: (r[1], r[0]))

    def head_runs(self, dataset: str, backbone: str, seed: int | str | None = None
                  ) -> list[dict[str, Any]]:
        """The ``lt-bench fit --runs`` list of one head job: at ``seed`` every head
        method, or (seed None) the member runs of ``member_seed_runs``."""
        pairs = ([(m, int(seed)) for m in self.head_methods()] if seed is not None
                 else self.member_seed_runs())
        return [{"method": m, "seed": sd, "out": run_dir(dataset, backbone, m, sd),
                 "params": self.hparams(m, dataset),
                 "base": self.base_runs(dataset, backbone, m, sd)} for m, sd in pairs]

    # --- combine jobs: the runs-consuming runs ---------------------------------------------

    def combined_methods(self) -> list[str]:
        """Runs-consuming methods whose members are runs on features: one job per
        (dataset, seed) makes every run of them (rule combine_runs; each is ~1 s of work
        after ~1 s of start-up). The others (members fine-tuned) get one job per run
        (rule ensemble_of_runs): they wait for fine-tuning, on its own seeds."""
        return [m for m in self.suite.methods if self.member_consumes(m) == "features"
                and any(self.runs_method(m, d).backbones(self.suite.backbones)
                        for d in self.suite.datasets)]

    def combine_outputs(self) -> list[str]:
        """metrics.json patterns (wildcards dataset, seed) of one combine_runs job."""
        d = self.suite.datasets[0]  # the backbone labels are the method's, not the dataset's
        return [metrics_file("{dataset}", b, m, "{seed}") for m in self.combined_methods()
                for b in self.runs_method(m, d).backbones(self.suite.backbones)]

    def _combine_entry(self, dataset: str, backbone: str, method: str,
                       seed: int | str) -> dict[str, Any]:
        return {"method": method, "seed": int(seed), "out": run_dir(dataset, backbone, method, seed),
                "params": self.hparams(method, dataset),
                "members": self.ensemble_members(dataset, backbone, method, seed)}

    def combine_runs(self, dataset: str, seed: int | str) -> list[dict[str, Any]]:
        """The ``lt-bench combine --runs`` list of one combine_runs job."""
        return [self._combine_entry(dataset, b, m, seed) for m in self.combined_methods()
                for b in self.runs_method(m, dataset).backbones(self.suite.backbones)]

    def combine_run(self, dataset: str, backbone: str, method: str,
                    seed: int | str) -> list[dict[str, Any]]:
        """The ``lt-bench combine --runs`` list of one ensemble_of_runs job: one run."""
        return [self._combine_entry(dataset, backbone, method, seed)]

    def combine_inputs(self, dataset: str, seed: int | str) -> list[str]:
        """Every member run's metrics.json of one combine_runs job (each once)."""
        return list(dict.fromkeys(f"{d}/metrics.json" for r in self.combine_runs(dataset, seed)
                                  for d in r["members"]))

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

    @staticmethod
    def features(dataset: str, backbone: str) -> list[str]:
        return [f"results/features/{dataset}/{backbone}/{s}.parquet"
                for s in ("train", "val", "test", "text")]

    @staticmethod
    def tracking_store_id() -> str:
        """Hash of the MLflow store ingestion writes to ($MLFLOW_TRACKING_URI, else the
        project's SQLite file): a rule param, so another store re-ingests, without a
        password reaching .snakemake/ metadata (not `envvars:`, which Snakemake 9 makes
        mandatory)."""
        from lt_bench.io import stable_hash

        uri = os.environ.get("MLFLOW_TRACKING_URI") or "sqlite:///" + os.path.abspath(
            "results/mlflow/mlflow.db")
        return stable_hash(uri)

    def finetune_minutes(self, dataset: str, method: str, attempt: int = 1) -> int:
        """A fine-tuning job's time limit: train images × epochs at a conservative rate,
        plus evaluation, doubled on each retry (ImageNet-LT ≈ 75 min, iNat2018 ≈ 500)."""
        n = TRAIN_IMAGES.get(dataset, 50_000)
        epochs = int(self.hparams(method, dataset).get("epochs", 10))
        return int((n * epochs / FINETUNE_IMAGES_PER_S / 60 + 10) * attempt)
