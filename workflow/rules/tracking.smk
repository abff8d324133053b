# MLflow tracking (DESIGN §3 stage 6): one local rule ingests every finished run of the
# suite into the experiment lt-bench/<suite> (one MLflow run per run folder, found again
# by its run_key tag). A single writer on the head node: SQLite breaks under parallel
# writers and on NFS, and `lt-bench ingest` also holds a file lock.
#
# Where to: $MLFLOW_TRACKING_URI (e.g. a team `mlflow server`), else the SQLite store
# results/mlflow/mlflow.db with artifacts in results/mlflow/artifacts/. Not declared with
# `envvars:`: Snakemake 9 makes every variable listed there mandatory (a WorkflowError
# when unset), and this one is optional. The job inherits the environment (local rule);
# only a hash of the URI goes into params, so that pointing at another store re-ingests
# without writing a password into .snakemake/ metadata or the log.

# rule all asks for results/mlflow/ingested.json (lt_bench.plan.Plan.final_targets)


localrules:
    ingest_mlflow,


rule ingest_mlflow:
    input:
        suite_runs(),
    output:
        "results/mlflow/ingested.json",
    params:
        suite=SUITE.name,
        store=tracking_store_id(),  # common.smk
    log:
        "logs/ingest_mlflow.log",
    conda:
        "../envs/lt-bench.yaml"
    shell:
        "lt-bench ingest --suite {params.suite} --metrics {input} --out {output} 2> {log}"
