rule train_head:
    input:
        unpack(base_run_inputs),
        features=lambda wc: features(wc.dataset, wc.backbone),
    output:
        metrics="results/runs/{dataset}/{backbone}/{method}/seed{seed}/metrics.json",
        per_class="results/runs/{dataset}/{backbone}/{method}/seed{seed}/per_class.parquet",
        predictor="results/runs/{dataset}/{backbone}/{method}/seed{seed}/predictor.json",
        config="results/runs/{dataset}/{backbone}/{method}/seed{seed}/config.json",
    params:
        hparams=hparams_json,
        base=base_run_args,
        out=lambda wc: run_dir(wc.dataset, wc.backbone, wc.method, wc.seed),
    log:
        "logs/train_head/{dataset}/{backbone}/{method}/seed{seed}.log",
    threads: 1
    shell:
        "lt-bench train --method {wildcards.method}"
        " --features-dir results/features/{wildcards.dataset}/{wildcards.backbone}"
        " --out {params.out} --seed {wildcards.seed} --hparams '{params.hparams}'"
        " {params.base} --threads {threads} 2> {log}"
