FINAL_TARGETS.extend(["results/tables/main.csv", "results/tables/main.md"])


localrules:
    aggregate,


rule aggregate:
    input:
        suite_runs(),
    output:
        csv=report(
            "results/tables/main.csv",
            caption="../report/main_table.rst",
            category="Tables",
            labels={"table": "main (csv)"},
        ),
        md="results/tables/main.md",
    log:
        "logs/aggregate.log",
    shell:
        "lt-bench aggregate --metrics {input} --out-dir results/tables 2> {log}"
