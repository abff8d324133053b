# MLflow tracking (stage 6): one local rule ingests every finished run of the suite into
# the experiment lt-bench/<suite> (one MLflow run per run folder, found again by its run_key
# tag), a run per setting (mean ± sd over its seeds) and one summary run holding the
# report's figures once (hence the figures are inputs: a redrawn figure re-logs them).
# A single writer on the head node: SQLite breaks under parallel writers and on NFS, and
# `lt-bench ingest` also holds a file lock on a SQLite store.
# What the UI then shows, and how to move the store: docs/mlflow.md.
#
# Where to: $MLFLOW_TRACKING_URI (e.g. a team `mlflow server`), else the SQLite store
# results/mlflow/mlflow.db with artifacts in results/mlflow/artifacts/. Not declared with
# `envvars:`: Snakemake 9 makes every variable listed there mandatory (a WorkflowError
# when unset), and this one is optional. The job inherits the environment (local rule);
# only a hash of the URI goes into params, so that pointing at another store re-ingests
# without writing a password into .snakemake/ metadata or the log.


localrules:
    ingest_mlflow,


rule ingest_mlflow:
    input:
        runs=RUN_INDEXES,  # report.smk: every run of each dataset
        figures=PLAN.figure_targets(),
    output:
        "results/mlflow/ingested.json",
    params:
        # a smoke run has its own experiment, lt-bench/<suite>-smoke (lt_bench/smoke.py)
        suite=SUITE.name + (SMOKE_SUFFIX if config.get("smoke") else ""),
        store=PLAN.tracking_store_id(),  # lt_bench/plan.py: another store re-ingests
        variants=REPORT_VARIANTS,
    log:
        "logs/ingest_mlflow.log",
    conda:
        "../envs/lt-bench.yaml"
    shell:
        # $(cat index.txt): each line a relative metrics.json path built from schema-checked
        # names (safe pattern), so word splitting cannot cut or inject
        "lt-bench {params.variants:q} ingest --suite {params.suite:q} --metrics $(cat {input.runs:q})"
        " --figures-root results/figures --out {output:q} 2> {log:q}"
