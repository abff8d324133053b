# The toy CLIPs pre-train on the toy dataset's own world (its image size and regime), so
# those two dataset parameters travel with the pre-training parameters; a change to
# either re-runs this rule (Snakemake's params trigger).
_TOY = config["datasets"].get("toy", {})


rule pretrain_toy_clip:
    input:
        classnames="resources/data/toy/classnames.txt",
    output:
        checkpoint="results/backbones/{backbone}/checkpoint.pt",
        prior="results/backbones/{backbone}/prior.parquet",
        summary="results/backbones/{backbone}/pretrain.json",
    params:
        pretrain=json.dumps({**config["toy_pretrain"],
                             "image_size": _TOY.get("image_size", 32),
                             "regime": _TOY.get("regime", "compositional")}, sort_keys=True),
        seed=_TOY.get("seed", 0),
    wildcard_constraints:
        backbone=r"toyclip\d+",
    log:
        "logs/pretrain_toy_clip/{backbone}.log",
    benchmark:
        "results/benchmarks/pretrain_toy_clip/{backbone}.tsv"
    # One thread each: on 2 cores two toy CLIPs train at once, and the third shares the
    # machine with the first one's feature extraction (measured faster in total than
    # three 2-thread runs one after another; see benchmarks/toy_pretrain.py).
    threads: 1
    resources:
        gpu=0,
    conda:
        "../envs/lt-bench.yaml"
    # The log gets a progress line every 10 % of the steps (`tail -f` it) and ends with a
    # one-line summary: time, files written, zero-shot top-1 and the three rho's.
    shell:
        "echo \"host=$(hostname) slurm_job=${{SLURM_JOB_ID:-none}} gpus=${{CUDA_VISIBLE_DEVICES:-none}}\" > {log};"
        " lt-bench pretrain {wildcards.backbone} --dataset-dir resources/data/toy"
        " --out results/backbones/{wildcards.backbone} --params '{params.pretrain}'"
        " --seed {params.seed} --threads {threads} >> {log} 2>&1"
