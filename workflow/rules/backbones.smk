rule pretrain_toy_clip:
    input:
        classnames="resources/data/toy/classnames.txt",
    output:
        checkpoint="results/backbones/{backbone}/checkpoint.pt",
        prior="results/backbones/{backbone}/prior.parquet",
        summary="results/backbones/{backbone}/pretrain.json",
    params:
        pretrain=json.dumps(config["toy_pretrain"], sort_keys=True),
        seed=config["datasets"].get("toy", {}).get("seed", 0),
    wildcard_constraints:
        backbone=r"toyclip\d+",
    log:
        "logs/pretrain_toy_clip/{backbone}.log",
    benchmark:
        "results/benchmarks/pretrain_toy_clip/{backbone}.tsv"
    threads: 2
    resources:
        gpu=0,
    conda:
        "../envs/lt-bench.yaml"
    shell:
        "echo \"host=$(hostname) slurm_job=${{SLURM_JOB_ID:-none}} gpus=${{CUDA_VISIBLE_DEVICES:-none}}\" > {log};"
        " lt-bench pretrain {wildcards.backbone} --dataset-dir resources/data/toy"
        " --out results/backbones/{wildcards.backbone} --params '{params.pretrain}'"
        " --seed {params.seed} --threads {threads} 2>> {log}"
