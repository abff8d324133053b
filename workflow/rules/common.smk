# Thin adapters from wildcards to lt_bench/plan.py, which makes every decision (unit-tested).
import json
import os
import sys
import shlex
from pathlib import Path

from snakemake.utils import validate

from lt_bench.config import ConfigError
from lt_bench.plan import Plan, run_dir
from lt_bench.smoke import EXPERIMENT_SUFFIX as SMOKE_SUFFIX
from lt_bench.smoke import per_class as smoke_limits


# Jobs call the `lt-bench` CLI installed next to this Python; put it first on PATH so
# `.venv/bin/snakemake` works without activating the venv (also inside SLURM jobs).
shell.prefix(f"set -euo pipefail; export PATH={shlex.quote(os.path.dirname(sys.executable))}:$PATH; ")

_WORKDIR = globals().get("SMOKE_DIR") or workflow.basedir  # the Snakefile's smoke block
if os.path.realpath(os.getcwd()) != os.path.realpath(_WORKDIR):
    raise WorkflowError(
        f"run lt-bench's workflow from its project folder: cd {workflow.basedir} (the "
        f"working directory is {os.getcwd()}; results, resources and logs would land there)"
    )
try:
    validate(config, "../schemas/config.schema.yaml")
except WorkflowError as e:  # one line naming the key, not the schema's dump
    err = e.__cause__ or e.__context__  # snakemake.utils.validate raises inside its except
    if not hasattr(err, "absolute_path"):
        raise
    where = ".".join(map(str, err.absolute_path)) or "(top level)"
    raise WorkflowError(f"config.yaml {where}: {err.message}") from None
PLAN = Plan(config)
try:
    SUITE = PLAN.suite
except ConfigError as e:
    # a name only the registries know (unknown method, dataset, backbone, suite): one line
    # and exit 2 like every user error; raising would make Snakemake add traceback lines
    print(f"config error: {e}", file=sys.stderr)
    sys.exit(2)


wildcard_constraints:
    dataset=r"[a-z0-9_]+",
    backbone=r"[A-Za-z0-9_.-]+",
    method=r"[a-z0-9_]+",
    seed=r"\d+",


# Shell safety: every value reaches a job's shell through ONE quoting mechanism, Snakemake's
# `{x:q}` format spec (shlex.quote of each element; a list becomes its quoted elements
# joined by spaces, an empty list nothing). So every `{...}` in a rule's `shell:` ends in
# `:q`, and params that are optional flags are argv LISTS (`["--flag", value]` or `[]`),
# never pre-joined strings; tests/test_shell_safety.py checks every printed command parses
# into the intended argv. Names that also become paths (suite, dataset, backbone, method)
# are restricted to a safe pattern by the schema (workflow/schemas/config.schema.yaml).


def opt_arg(flag, key):
    """`--flag <input.key>` (an argv list) where the input function gave that key, else []."""
    return lambda wc, input: [flag, str(input[key])] if key in input.keys() and input[key] else []



def checkpoint_input(wc):
    """Toy CLIPs are pre-trained by the pipeline; a backbone's local file (declared in the
    config) is an input, so a changed file re-extracts; others come from open_clip/timm."""
    if PLAN.is_toy_backbone(wc.backbone):
        return f"results/backbones/{wc.backbone}/checkpoint.pt"
    return PLAN.weights_file(wc.backbone) or []


def dataset_sources(wc):
    """The files a dataset's prepare reads from the user (oltr_lists): an edit re-prepares."""
    ds = PLAN.dataset(wc.dataset)
    return [str(p) for p in ds.source_files()] if hasattr(ds, "source_files") else []


def backbone_spec_arg(wc):
    """A backbone declared in the config reaches its job as --backbone-spec JSON."""
    spec = PLAN.backbone_declaration(wc.backbone)
    return ["--backbone-spec", json.dumps(spec, sort_keys=True)] if spec else []


#: ``--variants JSON`` (an argv list, [] without variants) declaring the suite's variants
#: to a report job (display names, bases, ensembles' predictors: lt_bench/plan.py); only
#: the suite's, so a variant another suite runs (the paper's TTE twins) reruns no report
REPORT_VARIANTS = PLAN.variants_arg(PLAN.suite.methods, display=True)


def hparams_json(wc):
    return json.dumps(PLAN.hparams(wc.method, wc.dataset), sort_keys=True)


def prior_input(wc):
    """Every run of a backbone with a text tower gets its estimated prior q̂ (P-groups)."""
    return {"prior": f"results/prior/{wc.dataset}/{wc.backbone}.parquet"} if PLAN.has_text(wc.backbone) else {}


def true_prior_input(wc):
    known = wc.backbone in PLAN.toy_prior_backbones(wc.dataset)
    return {"true_prior": f"results/backbones/{wc.backbone}/prior.parquet"} if known else {}


def tune_arg(wc):
    return "--tune" if PLAN.may_tune(wc.dataset) else "--no-tune"


def group_counts_arg(wc):
    path = PLAN.group_counts_file(wc.dataset)
    return ["--group-counts", str(path)] if path else []


def ensemble_members(wc):
    return [f"{d}/metrics.json" for d in PLAN.ensemble_members(wc.dataset, wc.backbone, wc.method, wc.seed)]


def head_job_args(wc, input):
    """The options every head job passes (argv): prior, tune, D-group counts, device, reuse."""
    prior = ["--prior", str(input.prior)] if "prior" in input.keys() else []
    return [*prior, tune_arg(wc), *group_counts_arg(wc), "--device", "auto",
            "--reuse-dir", "results/cache/fits"]


def write_runs_index(runs, out, log):
    """results/runs/{dataset}/index.txt: one metrics.json per line (rule runs_index)."""
    from lt_bench.runs.folder import write_runs_index as write_index

    write_index(list(runs), out)
    Path(log).write_text(f"{len(runs)} runs -> {out}\n")


def methods_regex(kind, exclude=()):
    return "|".join(m for m in PLAN.methods_consuming(kind) if m not in exclude) or "none"



def report_table(name, title, fmt, caption):
    """A results table as a `snakemake --report` item (HTML renders in the page)."""
    return report(
        f"results/tables/{name}.{fmt}",
        caption=f"../report/{caption}.rst",
        category="Tables",
        labels={"table": title, "format": {"html": "table", "csv": "csv", "tex": "LaTeX"}[fmt]},
    )


def dataset_runs(wc):
    return PLAN.dataset_runs(wc.dataset)


def run_markers():
    """Every run's finished marker (metrics.json), ensemble members included: inputs of
    rule all. Snakemake rebuilds a missing file only for a job that runs anyway, and an
    up-to-date ensemble or runs index does not: a deleted run folder went unnoticed
    ("Nothing to be done"). Named by the target rule, a missing marker reruns its job and
    then every consumer after it (the ensemble, the index, the tables)."""
    members = [f"{d}/metrics.json" for r in PLAN.ensemble_runs()
               for d in PLAN.ensemble_members(*r)]
    return list(dict.fromkeys(PLAN.suite_runs() + members))





def image_dir_arg(wc):
    d = PLAN.image_dir(wc.dataset)
    return ["--data-root", str(d)] if d else []


def image_dir_note(wc):
    d = PLAN.image_dir(wc.dataset)
    return f"data_root + data_dirs.{wc.dataset} = {d}" if d else "config key data_root is not set (--config data_root=/datasets)"


def images_verified(wc):
    """ancient(): re-checking (e.g. after data_root moved) must not re-extract features."""
    return ancient(f"resources/data/{wc.dataset}/images_verified.json") if PLAN.reads_data_root(wc.dataset) else []


def prior_files(wc):
    """The toy backbones' prior files (q_hat, q_true): their true prior is known."""
    return {b: f"results/prior/{wc.dataset}/{b}.parquet" for b in PLAN.toy_prior_backbones(wc.dataset)}


def prior_args(wc, input):
    return [a for b in prior_files(wc) for a in ("--prior", f"{b}={input[b]}")]
