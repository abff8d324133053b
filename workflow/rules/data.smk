# Data (docs/architecture.md §3 stage 1): split lists for every dataset, and for real datasets an image
# check (and, when allowed, the Places365/iNat2018 download) before any job reads images.
# data_root is only read by those jobs, so `snakemake -n` builds the whole DAG without data.
# Input functions: common.smk (image_dir_arg, image_dir_note, images_verified), over
# lt_bench/plan.py's Plan.reads_data_root and Plan.image_dir.


# Both local under a cluster executor: prepare_dataset fetches the pinned split lists (LIFT)
# or the CIFAR archive, which needs the network that compute nodes may lack, and for the
# toy world it is ~11 CPU-seconds of PNG writing (demo size).
localrules:
    prepare_dataset,
    verify_images,


rule prepare_dataset:
    input:
        dataset_sources,
    output:
        train="resources/data/{dataset}/train.txt",
        val="resources/data/{dataset}/val.txt",
        test="resources/data/{dataset}/test.txt",
        classnames="resources/data/{dataset}/classnames.txt",
    params:
        # a parameter value may hold anything a path may (an apostrophe): quoted by :q
        dataset_params=lambda wc: json.dumps(PLAN.dataset_params(wc.dataset), sort_keys=True),
        split_dir=lambda wc: f"resources/data/{wc.dataset}",
        # a smoke run keeps a few images of every class (lt_bench/smoke.py)
        smoke=lambda wc: ["--smoke-limits", json.dumps(smoke_limits(config))]
        if config.get("smoke") else [],
    log:
        "logs/prepare_dataset/{dataset}.log",
    conda:
        "../envs/lt-bench.yaml"
    shell:
        "lt-bench prepare {wildcards.dataset:q} --out {params.split_dir:q}"
        " --params {params.dataset_params:q} {params.smoke:q} 2> {log:q}"


# Local: the (opt-in) download needs the network, which cluster nodes may lack. The
# report it writes holds the verified image root, which extract_features reads.
rule verify_images:
    input:
        splits=multiext("resources/data/{dataset}/", "train.txt", "val.txt", "test.txt"),
    output:
        "resources/data/{dataset}/images_verified.json",
    params:
        data_root=image_dir_arg,
        where=lambda wc: f"images of {wc.dataset}: {image_dir_note(wc)}",
        download=["--download"] if config.get("download_images") else [],
        dataset_params=lambda wc: json.dumps(PLAN.dataset_params(wc.dataset), sort_keys=True),
        split_dir=lambda wc: f"resources/data/{wc.dataset}",
    wildcard_constraints:
        dataset="(?:" + "|".join(PLAN.real_image_datasets()) + ")",
    log:
        "logs/verify_images/{dataset}.log",
    conda:
        "../envs/lt-bench.yaml"
    shell:
        "echo {params.where:q} > {log:q};"
        " lt-bench verify-images {wildcards.dataset:q}"
        " --split-dir {params.split_dir:q} {params.data_root:q}"
        " --params {params.dataset_params:q} {params.download:q} --out {output:q} >> {log:q} 2>&1"
