# The toy CLIPs pre-train on the toy dataset's own world: `lt-bench pretrain` reads its
# regime and image size from resources/data/toy/toy_meta.json (written with classnames.txt
# by prepare_dataset). `world` is not passed on: it is here so that a change of either
# re-runs this rule (Snakemake's params trigger), and it is echoed into the log.
_TOY = config["datasets"].get("toy", {})


rule pretrain_toy_clip:
    input:
        classnames="resources/data/toy/classnames.txt",
    output:
        checkpoint="results/backbones/{backbone}/checkpoint.pt",
        prior="results/backbones/{backbone}/prior.parquet",
        summary="results/backbones/{backbone}/pretrain.json",
    params:
        pretrain=json.dumps(config["toy_pretrain"], sort_keys=True),
        seed=_TOY.get("seed", 0),
        world=f"regime={_TOY.get('regime', 'compositional')} image_size={_TOY.get('image_size', 32)}",
    wildcard_constraints:
        backbone=r"toyclip\d+",
    log:
        "logs/pretrain_toy_clip/{backbone}.log",
    benchmark:
        "results/benchmarks/pretrain_toy_clip/{backbone}.tsv"
    # One thread each: on 2 cores two toy CLIPs pre-train at once (each ~1 min at one
    # thread, benchmarks/toy_pretrain.py), the third beside the first extraction.
    threads: 1
    resources:
        gpu=0,
    conda:
        "../envs/lt-bench.yaml"
    # The log gets a progress line every 10 % of the steps (`tail -f` it) and ends with a
    # one-line summary: time, files written, zero-shot top-1 and the three rho's.
    shell:
        "echo \"host=$(hostname) slurm_job=${{SLURM_JOB_ID:-none}} gpus=${{CUDA_VISIBLE_DEVICES:-none}}\""
        " {params.world:q} > {log:q};"
        " lt-bench pretrain {wildcards.backbone:q} --dataset-dir resources/data/toy"
        " --out results/backbones/{wildcards.backbone:q} --params {params.pretrain:q}"
        " --seed {params.seed:q} --threads {threads:q} 2>> {log:q}"
