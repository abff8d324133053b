# Results report (DESIGN §3 stage 7): tables and figures computed from the run files
# (never from MLflow), with captions for `snakemake --report results/report.html`.
# Every rule here is cheap and runs on the head node.

REPORT = config.get("report") or {}
FIGURE_METHODS = REPORT.get("figure_methods", ["zero_shot", "ce", "la", "backdoor"])
TABLES = ["main", "dxp", "ablation"]


FINAL_TARGETS.extend(
    [f"results/tables/{t}.{ext}" for t in TABLES for ext in ("csv", "md", "tex")]
    + ["results/tables/runs.csv"]
    + figure_targets()
)


localrules:
    aggregate,
    figure_accuracy,
    figure_prior,
    figure_dxp,


rule aggregate:
    input:
        suite_runs(),
    output:
        main=report(
            "results/tables/main.csv",
            caption="../report/main_table.rst",
            category="Tables",
            labels={"table": "main", "format": "csv"},
        ),
        main_md="results/tables/main.md",
        main_tex=report(
            "results/tables/main.tex",
            caption="../report/main_table.rst",
            category="Tables",
            labels={"table": "main", "format": "LaTeX"},
        ),
        dxp=report(
            "results/tables/dxp.csv",
            caption="../report/dxp_table.rst",
            category="Tables",
            labels={"table": "D×P", "format": "csv"},
        ),
        dxp_md="results/tables/dxp.md",
        dxp_tex=report(
            "results/tables/dxp.tex",
            caption="../report/dxp_table.rst",
            category="Tables",
            labels={"table": "D×P", "format": "LaTeX"},
        ),
        ablation=report(
            "results/tables/ablation.csv",
            caption="../report/ablation_table.rst",
            category="Tables",
            labels={"table": "M ablation", "format": "csv"},
        ),
        ablation_md="results/tables/ablation.md",
        ablation_tex=report(
            "results/tables/ablation.tex",
            caption="../report/ablation_table.rst",
            category="Tables",
            labels={"table": "M ablation", "format": "LaTeX"},
        ),
        runs=report(
            "results/tables/runs.csv",
            caption="../report/runs_table.rst",
            category="Tables",
            labels={"table": "all runs", "format": "csv"},
        ),
    params:
        methods=" ".join(SUITE.methods),
    log:
        "logs/report/aggregate.log",
    conda:
        "../envs/lt-bench.yaml"
    shell:
        "lt-bench tables --metrics {input} --method-order {params.methods}"
        " --out-dir results/tables 2> {log}"


rule figure_accuracy:
    input:
        dataset_runs,
    output:
        by_count=report(
            "results/figures/{dataset}/acc_vs_count.png",
            caption="../report/acc_vs_count.rst",
            category="Figures",
            subcategory="{dataset}",
            labels={"figure": "accuracy vs train count", "dataset": "{dataset}"},
        ),
        by_count_pdf="results/figures/{dataset}/acc_vs_count.pdf",
        by_qhat=report(
            "results/figures/{dataset}/acc_vs_qhat.png",
            caption="../report/acc_vs_qhat.rst",
            category="Figures",
            subcategory="{dataset}",
            labels={"figure": "accuracy vs q̂", "dataset": "{dataset}"},
        ),
        by_qhat_pdf="results/figures/{dataset}/acc_vs_qhat.pdf",
    params:
        methods=" ".join(FIGURE_METHODS),
    log:
        "logs/report/figure_accuracy/{dataset}.log",
    conda:
        "../envs/lt-bench.yaml"
    shell:
        "lt-bench figures accuracy --metrics {input} --methods {params.methods}"
        " --out-dir results/figures/{wildcards.dataset} > {log} 2>&1"


rule figure_prior:
    input:
        unpack(prior_files),
    output:
        png=report(
            "results/figures/{dataset}/prior_vs_true.png",
            caption="../report/prior_vs_true.rst",
            category="Figures",
            subcategory="{dataset}",
            labels={"figure": "q̂ vs true prior", "dataset": "{dataset}"},
        ),
        pdf="results/figures/{dataset}/prior_vs_true.pdf",
    params:
        priors=prior_args,
    log:
        "logs/report/figure_prior/{dataset}.log",
    conda:
        "../envs/lt-bench.yaml"
    shell:
        "lt-bench figures prior --dataset {wildcards.dataset} {params.priors}"
        " --out results/figures/{wildcards.dataset}/prior_vs_true > {log} 2>&1"


rule figure_dxp:
    input:
        dataset_runs,
    output:
        [
            report(
                f"results/figures/{{dataset}}/dxp_{m}.png",
                caption="../report/dxp_heatmap.rst",
                category="Figures",
                subcategory="{dataset}",
                labels={"figure": "D×P heat-map", "dataset": "{dataset}", "method": m},
            )
            for m in SUITE.methods
        ],
        expand("results/figures/{{dataset}}/dxp_{method}.pdf", method=SUITE.methods),
    params:
        methods=" ".join(SUITE.methods),
    log:
        "logs/report/figure_dxp/{dataset}.log",
    conda:
        "../envs/lt-bench.yaml"
    shell:
        "lt-bench figures dxp --metrics {input} --dataset {wildcards.dataset}"
        " --methods {params.methods} --out-dir results/figures/{wildcards.dataset}"
        " > {log} 2>&1"
