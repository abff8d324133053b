# Runs from images (docs/architecture.md §4): one fine-tuning job per (dataset, backbone,
# method, seed) for methods that consume images (AdaptFormer-LA, VPT-LA, LoRA-LA, ...).
# One GPU per job (`--resources gpu=4` runs four at once; the job claims a free device),
# CPUs for the image loader; a killed job resumes from its last finished epoch.


rule finetune:
    input:
        unpack(prior_input),
        splits=multiext("resources/data/{dataset}/", "train.txt", "val.txt", "test.txt"),
        classnames="resources/data/{dataset}/classnames.txt",
        images=images_verified,
        checkpoint=checkpoint_input,
        text="results/features/{dataset}/{backbone}/text.parquet",
    output:
        metrics="results/runs/{dataset}/{backbone}/{method}/seed{seed}/metrics.json",
    wildcard_constraints:
        backbone=r"(?!ensemble/)[A-Za-z0-9_.-]+",
        method=methods_regex("images"),
    params:
        hparams=hparams_json,
        variants=lambda wc: PLAN.variants_arg([wc.method]),
        dataset_params=lambda wc: json.dumps(PLAN.dataset_params(wc.dataset), sort_keys=True),
        image_root=opt_arg("--image-root-from", "images"),
        checkpoint=opt_arg("--checkpoint", "checkpoint"),
        backbone_spec=backbone_spec_arg,
        groups=group_counts_arg,
        prior=opt_arg("--prior", "prior"),
        out=lambda wc: run_dir(wc.dataset, wc.backbone, wc.method, wc.seed),
    log:
        "logs/finetune/{dataset}/{backbone}/{method}/seed{seed}.log",
    benchmark:
        "results/benchmarks/finetune/{dataset}/{backbone}/{method}/seed{seed}.tsv"
    # a toy fine-tuning is as fast on 1 thread as on 2 (41.4 vs 38.9 s measured, benchmarks/README.md:
    # it loads images in the main process on CPU), so 1 lets it run beside the head jobs on
    # a 2-core box; real ones: 2 for the image loader
    threads: lambda wc: 1 if PLAN.is_toy_backbone(wc.backbone) else 2
    resources:
        gpu=1,
        runtime=lambda wc, attempt: PLAN.finetune_minutes(wc.dataset, wc.method, attempt),
    conda:
        "../envs/lt-bench.yaml"
    shell:
        "lt-bench {params.variants:q} finetune --method {wildcards.method:q} --dataset {wildcards.dataset:q}"
        " --dataset-params {params.dataset_params:q} --split-dir resources/data/{wildcards.dataset:q}"
        " {params.image_root:q} --backbone {wildcards.backbone:q} {params.backbone_spec:q} {params.checkpoint:q}"
        " --features-dir results/features/{wildcards.dataset:q}/{wildcards.backbone:q}"
        " --out {params.out:q} --seed {wildcards.seed:q} --params {params.hparams:q}"
        " {params.prior:q} {params.groups:q} --threads {threads:q} 2> {log:q}"
