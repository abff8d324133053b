# Parameter imbalance (GLA prior estimate q̂ per backbone) and the causal backdoor
# adjustment (an ensemble over the suite's backbones), DESIGN §1.


if toy_prior_backbones():
    FINAL_TARGETS.extend(["results/tables/prior.csv", "results/tables/prior.md"])


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
        true_prior=true_prior_arg,
    log:
        "logs/estimate_prior/{dataset}/{backbone}.log",
    threads: 1
    conda:
        "../envs/lt-bench.yaml"
    shell:
        "lt-bench prior --features-dir results/features/{wildcards.dataset}/{wildcards.backbone}"
        " --out {output} {params.true_prior} 2> {log}"


rule backdoor:
    input:
        members=backdoor_members,
    output:
        metrics="results/runs/{dataset}/ensemble/backdoor/seed{seed}/metrics.json",
        per_class="results/runs/{dataset}/ensemble/backdoor/seed{seed}/per_class.parquet",
        predictor="results/runs/{dataset}/ensemble/backdoor/seed{seed}/predictor.json",
        config="results/runs/{dataset}/ensemble/backdoor/seed{seed}/config.json",
    params:
        members=lambda wc, input: " ".join(os.path.dirname(f) for f in input.members),
        rule=lambda wc: method_hparams(config, "backdoor", wc.dataset)["rule"],
        out=lambda wc: run_dir(wc.dataset, "ensemble", "backdoor", wc.seed),
    log:
        "logs/backdoor/{dataset}/seed{seed}.log",
    threads: 1
    conda:
        "../envs/lt-bench.yaml"
    shell:
        "lt-bench backdoor --members {params.members} --out {params.out}"
        " --rule {params.rule} 2> {log}"


rule prior_table:
    input:
        priors=expand("results/prior/toy/{backbone}.parquet", backbone=toy_prior_backbones()),
    output:
        csv=report(
            "results/tables/prior.csv",
            caption="../report/prior_table.rst",
            category="Tables",
            labels={"table": "prior (csv)"},
        ),
        md="results/tables/prior.md",
    log:
        "logs/prior_table.log",
    conda:
        "../envs/lt-bench.yaml"
    shell:
        "lt-bench prior-table --priors {input.priors} --out-dir results/tables 2> {log}"
