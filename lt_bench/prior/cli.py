"""The ``prior`` verb: estimate a backbone's pre-training label prior q̂ from its features."""

from __future__ import annotations

import json
from pathlib import Path


def cmd_prior(args):
    from lt_bench.prior.zero_shot import prior_from_features

    meta = prior_from_features(Path(args.features_dir), Path(args.out),
                               Path(args.true_prior) if args.true_prior else None,
                               split=args.split, solver=args.solver)
    keys = ("temperature", "zero_shot_top1", "spearman", "pearson", "kl_true_hat", "tv")
    print(json.dumps({k: meta[k] for k in keys if k in meta}))


def add_prior_commands(sub) -> None:
    from lt_bench.prior.estimate import SOLVERS

    s = sub.add_parser("prior", help="estimate a backbone's pre-training label prior q̂ (GLA)")
    s.add_argument("--features-dir", required=True,
                   help="features folder of one (dataset, backbone): val.parquet, text.parquet")
    s.add_argument("--out", required=True, help="prior Parquet, e.g. results/prior/toy/x.parquet")
    s.add_argument("--true-prior", help="known prior: a toy CLIP's prior.parquet (its q_true)")
    s.add_argument("--split", default="val", choices=["val"],
                   help="class-balanced labelled split the prior is fitted on")
    s.add_argument("--solver", default="argmin", choices=list(SOLVERS),
                   help="argmin: the argmin of GLA's objective (default); gla_sgd: GLA's "
                   "shipped pp_solver, 1,000 Lagrangian SGD steps from uniform")
    s.set_defaults(func=cmd_prior)
