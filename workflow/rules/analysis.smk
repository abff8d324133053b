# Parameter imbalance (GLA prior estimate q̂ per backbone) and the runs that consume runs:
# the causal backdoor adjustment, an ensemble over the suite's backbones (docs/architecture.md §1 →
# docs/architecture.md).


localrules:
    prior_table,


rule estimate_prior:
    input:
        unpack(true_prior_input),
        val="results/features/{dataset}/{backbone}/val.parquet",
        text="results/features/{dataset}/{backbone}/text.parquet",
    output:
        "results/prior/{dataset}/{backbone}.parquet",
    params:
        true_prior=opt_arg("--true-prior", "true_prior"),
        solver=(config.get("prior") or {}).get("solver", "argmin"),
    log:
        "logs/estimate_prior/{dataset}/{backbone}.log",
    threads: 1
    conda:
        "../envs/lt-bench.yaml"
    shell:
        "lt-bench prior --features-dir results/features/{wildcards.dataset:q}/{wildcards.backbone:q}"
        " --out {output:q} {params.true_prior:q} --solver {params.solver:q} 2> {log:q}"


# combine_runs: ONE job per (dataset, seed) makes every ensemble of feature runs (the
# backdoor and its controls: ~1 s of work each, after ~1 s of start-up). A changed
# hyper-parameter of one of them reruns the job, which recomputes them all (seconds).
COMBINED_METHODS = PLAN.combined_methods()

if COMBINED_METHODS:

    rule combine_runs:
        input:
            members=lambda wc: PLAN.combine_inputs(wc.dataset, wc.seed),
        output:
            PLAN.combine_outputs(),
        wildcard_constraints:
            seed="|".join(str(s) for s in SUITE.seeds),
        params:
            runs=lambda wc: json.dumps(PLAN.combine_runs(wc.dataset, wc.seed)),
        log:
            "logs/combine_runs/{dataset}/seed{seed}.log",
        threads: 1
        conda:
            "../envs/lt-bench.yaml"
        shell:
            "lt-bench train --runs {params.runs:q} 2> {log:q}"


# ensemble_of_runs: one job per ensemble run, for the others (ensembles of fine-tuned
# runs, which wait for fine-tuning on its own seeds; a single ensemble outside the suite)
rule ensemble_of_runs:
    input:
        members=ensemble_members,
    output:
        metrics="results/runs/{dataset}/{backbone}/{method}/seed{seed}/metrics.json",
    wildcard_constraints:
        method=methods_regex("runs", exclude=COMBINED_METHODS),
    params:
        members=lambda wc, input: [os.path.dirname(f) for f in input.members],
        hparams=hparams_json,
        out=lambda wc: run_dir(wc.dataset, wc.backbone, wc.method, wc.seed),
    log:
        "logs/ensemble_of_runs/{dataset}/{backbone}/{method}/seed{seed}.log",
    threads: 1
    conda:
        "../envs/lt-bench.yaml"
    shell:
        "lt-bench train --method {wildcards.method:q} --members {params.members:q}"
        " --out {params.out:q} --params {params.hparams:q} 2> {log:q}"


rule prior_table:
    input:
        priors=expand("results/prior/toy/{backbone}.parquet", backbone=PLAN.toy_prior_backbones()),
    output:
        csv=report(
            "results/tables/prior.csv",
            caption="../report/prior_table.rst",
            category="Tables",
            labels={"table": "prior", "format": "csv"},
        ),
        md="results/tables/prior.md",
        tex="results/tables/prior.tex",
        html=report(
            "results/tables/prior.html",
            caption="../report/prior_table.rst",
            category="Tables",
            labels={"table": "prior", "format": "table"},
        ),
    log:
        "logs/prior_table.log",
    conda:
        "../envs/lt-bench.yaml"
    shell:
        "lt-bench prior-table --priors {input.priors:q} --out-dir results/tables 2> {log:q}"
