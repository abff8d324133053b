# Runs (docs/architecture.md, "Stages") of the methods that consume features (trained heads,
# zero-shot, post-hoc, k-NN): `lt-bench fit`; the runs that consume runs are in
# analysis.smk. Every run finishes through the same run writer.
#
# fit_heads: ONE job per (dataset, backbone, seed) fits every such method of the suite in
# one process (start-up and feature loading paid once, features on the GPU once), and the
# member runs on features that runs-consuming methods declare at the suite's seeds. A
# changed hyper-parameter reruns the job, which refits only the runs whose fit key changed
# and copies the others back from results/cache/fits (lt_bench/runs/reuse.py).
# fit_member_seeds: the declared member runs at seeds outside the suite's (the
# same-backbone control's s+1000, s+2000), one job per (dataset, backbone). A single run
# outside the suite: `lt-bench fit --method`.

# metrics.json only, written last: a run without it is unfinished (the other files of a
# run folder are not declared, which keeps the DAG's output index small: planning time)
HEAD_RUN = "results/runs/{{dataset}}/{{backbone}}/{method}/seed{seed}/metrics.json"
HEAD_METHODS = PLAN.head_methods()
MEMBER_SEED_RUNS = PLAN.member_seed_runs()


if HEAD_METHODS:

    rule fit_heads:
        input:
            unpack(prior_input),
            features=lambda wc: PLAN.features(wc.dataset, wc.backbone),
        output:
            expand(HEAD_RUN, method=HEAD_METHODS, seed="{seed}"),
        wildcard_constraints:
            backbone=r"(?!ensemble/)[A-Za-z0-9_.-]+",
            seed="|".join(str(s) for s in SUITE.seeds),
        params:
            runs=lambda wc: json.dumps(PLAN.head_runs(wc.dataset, wc.backbone, wc.seed)),
            args=head_job_args,
            variants=PLAN.variants_arg(HEAD_METHODS),
        log:
            "logs/fit_heads/{dataset}/{backbone}/seed{seed}.log",
        benchmark:
            "results/benchmarks/fit_heads/{dataset}/{backbone}/seed{seed}.tsv"
        threads: 1
        resources:
            gpu=1,
        conda:
            "../envs/lt-bench.yaml"
        shell:
            "echo \"host=$(hostname) slurm_job=${{SLURM_JOB_ID:-none}} gpus=${{CUDA_VISIBLE_DEVICES:-none}}\" > {log:q};"
            " lt-bench {params.variants:q} fit --runs {params.runs:q}"
            " --features-dir results/features/{wildcards.dataset:q}/{wildcards.backbone:q}"
            " {params.args:q} --threads {threads:q} 2>> {log:q}"



# Member runs have a method on features, so fit_heads exists whenever this does.
if MEMBER_SEED_RUNS:

    use rule fit_heads as fit_member_seeds with:
        output:
            [HEAD_RUN.format(method=m, seed=sd) for m, sd in MEMBER_SEED_RUNS],
        wildcard_constraints:
            backbone=r"(?!ensemble/)[A-Za-z0-9_.-]+",
        params:
            runs=lambda wc: json.dumps(PLAN.head_runs(wc.dataset, wc.backbone)),
            args=head_job_args,
            variants=PLAN.variants_arg(m for m, _ in MEMBER_SEED_RUNS),
        log:
            "logs/fit_member_seeds/{dataset}/{backbone}.log",
        benchmark:
            "results/benchmarks/fit_member_seeds/{dataset}/{backbone}.tsv"
