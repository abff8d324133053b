# Results report (docs/architecture.md §3 stage 7): tables and figures computed from the run files
# (never from MLflow), with captions for `snakemake --report results/report.html`.
# Snakemake 9's report shows an HTML result in the page (an iframe; CSV and LaTeX are
# download links only), so every table also comes as a self-contained .html page.

REPORT = config.get("report") or {}
FIGURE_METHODS = REPORT.get("figure_methods", ["zero_shot", "ce", "la", "backdoor"])

# rule all's targets: lt_bench.plan.Plan.final_targets and common.smk's run_markers (Snakefile)


localrules:
    runs_index,
    aggregate,
    significance,
    findings,
    figure_accuracy,
    figure_prior,
    figure_dxp,


# Every finished run of a dataset, one metrics.json path per line: the consumers of all runs
# (tables, significance, figures, MLflow) read this list instead of declaring ~500 inputs
# each, which keeps planning the paper suite fast (benchmarks/README.md). Written in the Snakemake
# process itself (no job start-up); it is rewritten whenever any run is newer.
rule runs_index:
    input:
        dataset_runs,
    output:
        "results/runs/{dataset}/index.txt",
    log:
        "logs/report/runs_index/{dataset}.log",
    run:
        write_runs_index(input, output[0], log[0])


RUN_INDEXES = expand("results/runs/{dataset}/index.txt", dataset=SUITE.datasets)


rule significance:
    input:
        RUN_INDEXES,
    output:
        "results/tables/significance.csv",
    params:
        n_boot=REPORT.get("bootstrap_replicates", 2000),
        variants=REPORT_VARIANTS,
    log:
        "logs/report/significance.log",
    threads: 1
    conda:
        "../envs/lt-bench.yaml"
    shell:
        "lt-bench {params.variants:q} significance --metrics $(cat {input:q}) --n-boot {params.n_boot:q}"
        " --out {output:q} > {log:q} 2>&1"


rule aggregate:
    input:
        runs=RUN_INDEXES,
        significance="results/tables/significance.csv",
    output:
        main_html=report_table("main", "main", "html", "main_table"),
        main=report_table("main", "main", "csv", "main_table"),
        main_md="results/tables/main.md",
        main_tex=report_table("main", "main", "tex", "main_table"),
        dxp_html=report_table("dxp", "D×P", "html", "dxp_table"),
        dxp=report_table("dxp", "D×P", "csv", "dxp_table"),
        dxp_md="results/tables/dxp.md",
        dxp_tex=report_table("dxp", "D×P", "tex", "dxp_table"),
        ablation_html=report_table("ablation", "M ablation", "html", "ablation_table"),
        ablation=report_table("ablation", "M ablation", "csv", "ablation_table"),
        ablation_md="results/tables/ablation.md",
        ablation_tex=report_table("ablation", "M ablation", "tex", "ablation_table"),
        significance_html=report_table("significance", "significance", "html", "significance_table"),
        significance_md="results/tables/significance.md",
        significance_tex="results/tables/significance.tex",
        published_html=report_table("published", "published numbers", "html", "published_table"),
        published="results/tables/published.csv",
        published_md="results/tables/published.md",
        notes="results/tables/notes.csv",
        runs=report_table("runs", "all runs", "csv", "runs_table"),
    params:
        methods=SUITE.methods,
        variants=REPORT_VARIANTS,
    log:
        "logs/report/aggregate.log",
    conda:
        "../envs/lt-bench.yaml"
    shell:
        "lt-bench {params.variants:q} tables --metrics $(cat {input.runs:q}) --method-order {params.methods:q}"
        " --significance {input.significance:q} --out-dir results/tables > {log:q} 2>&1"


rule findings:
    input:
        main="results/tables/main.csv",
        dxp="results/tables/dxp.csv",
        significance="results/tables/significance.csv",
    output:
        html=report(
            "results/tables/findings.html",
            caption="../report/findings.rst",
            category="Findings",
            labels={"section": "findings"},
        ),
        md="results/tables/findings.md",
    params:
        variants=REPORT_VARIANTS,
    log:
        "logs/report/findings.log",
    conda:
        "../envs/lt-bench.yaml"
    shell:
        # the toy regime from resources/data/toy/toy_meta.json (prepared before any run)
        "lt-bench {params.variants:q} findings --tables-dir results/tables --data-dir resources/data > {log:q} 2>&1"


rule figure_accuracy:
    input:
        "results/runs/{dataset}/index.txt",
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
        methods=FIGURE_METHODS,
        variants=REPORT_VARIANTS,
    log:
        "logs/report/figure_accuracy/{dataset}.log",
    conda:
        "../envs/lt-bench.yaml"
    shell:
        "lt-bench {params.variants:q} figures accuracy --metrics $(cat {input:q}) --methods {params.methods:q}"
        " --out-dir results/figures/{wildcards.dataset:q} > {log:q} 2>&1"


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
        "lt-bench figures prior --dataset {wildcards.dataset:q} {params.priors:q}"
        " --out results/figures/{wildcards.dataset:q}/prior_vs_true > {log:q} 2>&1"


rule figure_dxp:
    input:
        "results/runs/{dataset}/index.txt",
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
        summary=report(
            "results/figures/{dataset}/dxp_vs_la.png",
            caption="../report/dxp_vs_la.rst",
            category="Figures",
            subcategory="{dataset}",
            labels={"figure": "D×P minus LA", "dataset": "{dataset}", "method": "all"},
        ),
        summary_pdf="results/figures/{dataset}/dxp_vs_la.pdf",
    params:
        methods=SUITE.methods,
        variants=REPORT_VARIANTS,
    log:
        "logs/report/figure_dxp/{dataset}.log",
    conda:
        "../envs/lt-bench.yaml"
    shell:
        "lt-bench {params.variants:q} figures dxp --metrics $(cat {input:q}) --dataset {wildcards.dataset:q}"
        " --methods {params.methods:q} --out-dir results/figures/{wildcards.dataset:q}"
        " > {log:q} 2>&1"
