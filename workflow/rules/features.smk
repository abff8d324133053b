# Features (docs/architecture.md §3 stage 3): image features of every split + class text embeddings.
# One GPU per job: `--resources gpu=N` caps concurrent jobs, and each job claims a free
# device itself (lock files, lt_bench/features/device.py; SLURM's CUDA_VISIBLE_DEVICES is
# honoured). Resumable: an interrupted job keeps its finished shards.
# The protocol options (`extract:` feature / test_transform / tte / train_views / decode,
# and `prompts:`) reach the command as flags only when they differ from the defaults
# (lt_bench/features/options.py).

from lt_bench.features.options import cli_flags as _extract_flags

# the suite's extraction settings: the top-level `extract:` with the suite's own over it
# (suites.<name>.extract: the paper suites' tte both; lt_bench/plan.py extract_options)
_EXTRACT = PLAN.extract_options()
_TRAIN_VIEWS = int(_EXTRACT.get("train_views", 0) or 0)


rule extract_features:
    input:
        splits=multiext("resources/data/{dataset}/", "train.txt", "val.txt", "test.txt"),
        classnames="resources/data/{dataset}/classnames.txt",
        images=images_verified,
        checkpoint=checkpoint_input,
    output:
        train="results/features/{dataset}/{backbone}/train.parquet",
        val="results/features/{dataset}/{backbone}/val.parquet",
        test="results/features/{dataset}/{backbone}/test.parquet",
        text="results/features/{dataset}/{backbone}/text.parquet",
        **(
            {"train_views": "results/features/{dataset}/{backbone}/train_views.parquet"}
            if _TRAIN_VIEWS
            else {}
        ),
    params:
        dataset_params=lambda wc: json.dumps(PLAN.dataset_params(wc.dataset), sort_keys=True),
        # the verified image root is read from the check's report at run time, so moving
        # data_root re-runs the (cheap) check but not the extraction
        image_root=opt_arg("--image-root-from", "images"),
        checkpoint=opt_arg("--checkpoint", "checkpoint"),
        backbone_spec=backbone_spec_arg,
        batch_size=_EXTRACT["batch_size"],
        num_workers=_EXTRACT["num_workers"],
        shard_size=_EXTRACT["shard_size"],
        protocol=_extract_flags(_EXTRACT, config.get("prompts")),
    log:
        "logs/extract_features/{dataset}/{backbone}.log",
    benchmark:
        "results/benchmarks/extract_features/{dataset}/{backbone}.tsv"
    # a toy CLIP's extraction is ~30 s of one core: 1 thread lets it run beside the last
    # toy pre-training on a 2-core box (the demo's budget, benchmarks/README.md); real ones: 2
    threads: lambda wc: 1 if PLAN.is_toy_backbone(wc.backbone) else 2
    resources:
        gpu=1,
    conda:
        "../envs/lt-bench.yaml"
    shell:
        "echo \"host=$(hostname) slurm_job=${{SLURM_JOB_ID:-none}} gpus=${{CUDA_VISIBLE_DEVICES:-none}}\" > {log:q};"
        " lt-bench extract --dataset {wildcards.dataset:q} --dataset-params {params.dataset_params:q}"
        " --split-dir resources/data/{wildcards.dataset:q} {params.image_root:q}"
        " --backbone {wildcards.backbone:q} {params.backbone_spec:q} {params.checkpoint:q}"
        " --out-dir results/features/{wildcards.dataset:q}/{wildcards.backbone:q}"
        " --batch-size {params.batch_size:q} --num-workers {params.num_workers:q}"
        " --shard-size {params.shard_size:q} {params.protocol:q} --threads {threads:q} 2>> {log:q}"
