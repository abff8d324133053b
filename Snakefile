# lt-bench: long-tailed recognition with CLIP-style foundation models.
# Thin entry point: config + validation + one rule file per stage.
from snakemake.utils import min_version

min_version("9.0")


configfile: "config.yaml"


# A smoke run of any suite (`--config smoke=true`, lt_bench/smoke.py): the same DAG on a few
# images of every class, one epoch, in its own working directory (smoke_dir).
from lt_bench.smoke import wants_smoke

config["smoke"] = wants_smoke(config)  # `smoke=true` arrives as a string
if config["smoke"]:
    import os

    import sys

    from lt_bench.errors import UserError
    from lt_bench.smoke import DEFAULT_DIR, check_smoke_dir, smoke_config

    config.update(smoke_config(config))
    # the weights lock is the project's, not the smoke folder's
    os.environ.setdefault("LT_BENCH_WEIGHTS_LOCK", os.path.abspath("resources/weights.lock"))
    try:
        SMOKE_DIR = check_smoke_dir(config.get("smoke_dir") or DEFAULT_DIR).resolve()
    except UserError as e:  # one line and exit 2, as for every config error (common.smk)
        print(f"config error: {e}", file=sys.stderr)
        sys.exit(2)

    workdir: SMOKE_DIR


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/backbones.smk"
include: "workflow/rules/features.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/finetune.smk"
include: "workflow/rules/analysis.smk"
include: "workflow/rules/report.smk"
include: "workflow/rules/tracking.smk"


rule all:
    input:
        PLAN.final_targets(run_markers()),  # common.smk: a deleted run is rerun
    default_target: True
