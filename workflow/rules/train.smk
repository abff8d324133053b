rule train_head:
    input:
        unpack(base_run_inputs),
        unpack(prior_input),
        features=lambda wc: features(wc.dataset, wc.backbone),
    output:
        metrics="results/runs/{dataset}/{backbone}/{method}/seed{seed}/metrics.json",
        per_class="results/runs/{dataset}/{backbone}/{method}/seed{seed}/per_class.parquet",
        predictor="results/runs/{dataset}/{backbone}/{method}/seed{seed}/predictor.json",
        config="results/runs/{dataset}/{backbone}/{method}/seed{seed}/config.json",
    wildcard_constraints:
        backbone=r"(?!ensemble/)[A-Za-z0-9_.-]+",  # ensemble runs: rule backdoor
    params:
        hparams=hparams_json,
        base=base_run_args,
        prior=prior_arg,
        tune=tune_arg,
        out=lambda wc: run_dir(wc.dataset, wc.backbone, wc.method, wc.seed),
    log:
        "logs/train_head/{dataset}/{backbone}/{method}/seed{seed}.log",
    threads: 1
    conda:
        "../envs/lt-bench.yaml"
    shell:
        "lt-bench train --method {wildcards.method}"
        " --features-dir results/features/{wildcards.dataset}/{wildcards.backbone}"
        " --out {params.out} --seed {wildcards.seed} --hparams '{params.hparams}'"
        " {params.base} {params.prior} {params.tune} --threads {threads} 2> {log}"
