"""``lt-bench prior``, ``lt-bench prior-table`` and ``lt-bench backdoor`` (hooked into
lt_bench.cli through ``add_method_commands``)."""

from __future__ import annotations

import json
from pathlib import Path


def cmd_prior(a):
    from lt_bench.methods.prior import prior_from_features

    meta = prior_from_features(Path(a.features_dir), Path(a.out),
                               Path(a.true_prior) if a.true_prior else None, split=a.split)
    keys = ("temperature", "zero_shot_top1", "spearman", "pearson", "kl_true_hat", "tv")
    print(json.dumps({k: meta[k] for k in keys if k in meta}))


def prior_table(priors: list[Path], out_dir: Path):
    """One row per prior file with a known true prior (toy backbones): how well q̂ tracks it."""
    import pandas as pd

    from lt_bench.io import atomic_path, write_text
    from lt_bench.methods.prior import prior_agreement, read_prior_meta

    rows = []
    for p in priors:
        df = pd.read_parquet(p).sort_values("label")
        meta = read_prior_meta(Path(p))
        row = {"dataset": meta.get("dataset"), "backbone": meta.get("backbone"),
               "num_classes": len(df), "temperature": meta.get("temperature"),
               "zero_shot_top1": meta.get("zero_shot_top1")}
        if "q_true" in df.columns:
            row.update(prior_agreement(df["q_hat"].to_numpy(), df["q_true"].to_numpy()))
        rows.append(row)
    table = pd.DataFrame(rows)
    out_dir.mkdir(parents=True, exist_ok=True)
    with_true = table.dropna(axis=1, how="all")
    with atomic_path(out_dir / "prior.csv") as tmp:
        with_true.to_csv(tmp, index=False)
    md = ("# Estimated vs true pre-training prior\n\n"
          "q̂: GLA's estimate from zero-shot logits on val (temperature T by confidence = "
          "accuracy). spearman/pearson: ρ(q̂, q_true); kl_true_hat: KL(q_true ‖ q̂); "
          "tv: total variation distance.\n\n"
          + with_true.to_markdown(index=False, floatfmt=".4g") + "\n")
    write_text(out_dir / "prior.md", md)
    return with_true


def cmd_prior_table(a):
    t = prior_table([Path(p) for p in a.priors], Path(a.out_dir))
    print(f"{len(t)} priors -> {a.out_dir}/prior.csv")


def cmd_backdoor(a):
    from lt_bench.methods.backdoor_ops import backdoor_run

    m = backdoor_run([Path(r) for r in a.members], Path(a.out), rule=a.rule)
    keys = ["top1", "many", "medium", "few", "best_member_top1", "gain_top1"]
    keys += [f"m{i}_top1" for i in range(1, m["n_members"] + 1)]
    print(json.dumps({k: m[k] for k in keys}))


def add_method_commands(sub) -> None:
    s = sub.add_parser("prior", help="estimate a backbone's pre-training label prior q̂ (GLA)")
    s.add_argument("--features-dir", required=True,
                   help="features folder of one (dataset, backbone): val.parquet, text.parquet")
    s.add_argument("--out", required=True, help="prior Parquet, e.g. results/prior/toy/x.parquet")
    s.add_argument("--true-prior", help="known prior (toy backbones: prior.parquet, column prior)")
    s.add_argument("--split", default="val", choices=["val"],
                   help="class-balanced labelled split the prior is fitted on")
    s.set_defaults(func=cmd_prior)

    s = sub.add_parser("prior-table", help="table of estimated vs true priors (toy world)")
    s.add_argument("--priors", nargs="+", required=True, help="prior Parquet files")
    s.add_argument("--out-dir", default="results/tables", help="writes prior.csv and prior.md")
    s.set_defaults(func=cmd_prior_table)

    s = sub.add_parser("backdoor", help="backdoor adjustment: combine runs of several "
                                        "backbones (no retraining)")
    s.add_argument("--members", nargs="+", required=True, metavar="RUN_DIR",
                   help="finished runs (the la runs of each backbone, same dataset and seed)")
    s.add_argument("--out", required=True, help="ensemble run folder, e.g. "
                                                "results/runs/toy/ensemble/backdoor/seed0")
    s.add_argument("--rule", default="sum", choices=["sum", "prob_mean"],
                   help="sum of raw logits (the authors' rule) or mean of probabilities")
    s.set_defaults(func=cmd_backdoor)
