rule extract_features:
    input:
        splits=multiext("resources/data/{dataset}/", "train.txt", "val.txt", "test.txt"),
        classnames="resources/data/{dataset}/classnames.txt",
        checkpoint=checkpoint_input,
    output:
        train="results/features/{dataset}/{backbone}/train.parquet",
        val="results/features/{dataset}/{backbone}/val.parquet",
        test="results/features/{dataset}/{backbone}/test.parquet",
        text="results/features/{dataset}/{backbone}/text.parquet",
    params:
        dataset_params=lambda wc: json.dumps(dataset_params(wc.dataset), sort_keys=True),
        data_root=lambda wc: f"--data-root {config['data_root']}" if config["data_root"] else "",
        checkpoint=lambda wc, input: f"--checkpoint {input.checkpoint}" if input.checkpoint else "",
        batch_size=config["extract"]["batch_size"],
        num_workers=config["extract"]["num_workers"],
        shard_size=config["extract"]["shard_size"],
    log:
        "logs/extract_features/{dataset}/{backbone}.log",
    benchmark:
        "benchmarks/runs/extract_features/{dataset}/{backbone}.tsv"
    threads: 2
    resources:
        gpu=1,
    shell:
        "lt-bench extract --dataset {wildcards.dataset} --dataset-params '{params.dataset_params}'"
        " --split-dir resources/data/{wildcards.dataset} {params.data_root}"
        " --backbone {wildcards.backbone} {params.checkpoint}"
        " --out-dir results/features/{wildcards.dataset}/{wildcards.backbone}"
        " --batch-size {params.batch_size} --num-workers {params.num_workers}"
        " --shard-size {params.shard_size} --threads {threads} 2> {log}"
