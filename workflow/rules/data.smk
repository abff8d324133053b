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
    shell:
        "lt-bench prepare {wildcards.dataset} --out resources/data/{wildcards.dataset}"
        " --params '{params.dataset_params}' 2> {log}"
