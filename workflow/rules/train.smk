# Runs (docs/architecture.md, "Stages"): one job per (dataset, backbone, method, seed) for
# methods that consume features (trained heads, zero-shot, post-hoc, k-NN); ensembles of
# runs are in analysis.smk. Every job finishes through the same run writer.


rule run_on_features:
    input:
        unpack(base_run_inputs),
        unpack(prior_input),
        features=lambda wc: PLAN.features(wc.dataset, wc.backbone),
    output:
        metrics="results/runs/{dataset}/{backbone}/{method}/seed{seed}/metrics.json",
        per_class="results/runs/{dataset}/{backbone}/{method}/seed{seed}/per_class.parquet",
        predictor="results/runs/{dataset}/{backbone}/{method}/seed{seed}/predictor.json",
        config="results/runs/{dataset}/{backbone}/{method}/seed{seed}/config.json",
    wildcard_constraints:
        backbone=r"(?!ensemble/)[A-Za-z0-9_.-]+",
        method=methods_regex("features"),
    params:
        hparams=hparams_json,
        base=base_run_args,
        prior=opt_arg("--prior", "prior"),
        tune=tune_arg,
        groups=group_counts_arg,
        out=lambda wc: run_dir(wc.dataset, wc.backbone, wc.method, wc.seed),
    log:
        "logs/run_on_features/{dataset}/{backbone}/{method}/seed{seed}.log",
    threads: 1
    conda:
        "../envs/lt-bench.yaml"
    shell:
        "lt-bench train --method {wildcards.method}"
        " --features-dir results/features/{wildcards.dataset}/{wildcards.backbone}"
        " --out {params.out:q} --seed {wildcards.seed} --params {params.hparams:q}"
        " {params.base} {params.prior} {params.tune} {params.groups} --threads {threads} 2> {log:q}"
