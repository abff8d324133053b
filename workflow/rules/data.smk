# Data (DESIGN §3 stage 1): split lists for every dataset, and for real datasets an image
# check (and, when allowed, the Places365/iNat2018 download) before any job reads images.
# data_root is only read by those jobs, so `snakemake -n` builds the whole DAG without data.
# Input functions: common.smk (reads_data_root, image_dir, images_verified).


# Both local under a cluster executor: prepare_dataset fetches the pinned split lists (LIFT)
# or the CIFAR archive, which needs the network that compute nodes may lack, and for the
# toy world it is ~11 CPU-seconds of PNG writing (demo size).
localrules:
    prepare_dataset,
    verify_images,


rule prepare_dataset:
    output:
        train="resources/data/{dataset}/train.txt",
        val="resources/data/{dataset}/val.txt",
        test="resources/data/{dataset}/test.txt",
        classnames="resources/data/{dataset}/classnames.txt",
    params:
        dataset_params=lambda wc: json.dumps(dataset_params(wc.dataset), sort_keys=True),
    log:
        "logs/prepare_dataset/{dataset}.log",
    conda:
        "../envs/lt-bench.yaml"
    shell:
        "lt-bench prepare {wildcards.dataset} --out resources/data/{wildcards.dataset}"
        " --params '{params.dataset_params}' 2> {log}"


# Local: the (opt-in) download needs the network, which cluster nodes may lack. The
# report it writes holds the verified image root, which extract_features reads.
rule verify_images:
    input:
        splits=multiext("resources/data/{dataset}/", "train.txt", "val.txt", "test.txt"),
    output:
        "resources/data/{dataset}/images_verified.json",
    params:
        data_root=image_dir_arg,
        where=image_dir_note,
        download="--download" if config.get("download_images") else "",
        dataset_params=lambda wc: json.dumps(dataset_params(wc.dataset), sort_keys=True),
    wildcard_constraints:
        dataset="(?:" + "|".join(real_image_datasets()) + ")",
    log:
        "logs/verify_images/{dataset}.log",
    conda:
        "../envs/lt-bench.yaml"
    shell:
        "echo 'images of {wildcards.dataset}: {params.where}' > {log};"
        " lt-bench check-images {wildcards.dataset}"
        " --split-dir resources/data/{wildcards.dataset} {params.data_root}"
        " --params '{params.dataset_params}' {params.download} --out {output} 2>> {log}"
