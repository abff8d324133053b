"""Verbs of the run layer: ``prior``, ``train`` (every kind of run), ``logits``."""

from __future__ import annotations

import json
from pathlib import Path

from lt_bench.errors import InputValidationError


def cmd_prior(args):
    from lt_bench.prior import prior_from_features

    meta = prior_from_features(Path(args.features_dir), Path(args.out),
                               Path(args.true_prior) if args.true_prior else None,
                               split=args.split, solver=args.solver)
    keys = ("temperature", "zero_shot_top1", "spearman", "pearson", "kl_true_hat", "tv")
    print(json.dumps({k: meta[k] for k in keys if k in meta}))


def cmd_train(args):
    """Route on what the method consumes: features (fit), runs (combine)."""
    from lt_bench.argtypes import set_threads
    from lt_bench.methods import METHODS
    from lt_bench.runs.folder import check_run_outs

    if args.runs is not None:
        if args.method or args.out or args.members or args.base or args.params:
            raise InputValidationError("--runs lists every run (method, out, seed, params, "
                                       "base or members): drop --method/--out/--params/"
                                       "--base/--members")
        from lt_bench.runs.train import check_run_list

        kinds = {METHODS.get(r["method"]).consumes for r in check_run_list(args.runs)}
        check_run_outs([r["out"] for r in args.runs])  # before any run is computed
        if kinds == {"runs"}:  # a combine_runs job: every ensemble of one (dataset, seed)
            checked = [(r, *_check_combine(r["method"], r.get("members"), r["out"],
                                           r.get("params") or {}, r["seed"]))
                       for r in args.runs]  # every entry checked before any is computed
            for r, rule, hp in checked:
                _combine(r["method"], r["members"], r["out"], rule, hp)
            return
        if "runs" in kinds:
            raise InputValidationError("--runs mixes ensembles with runs on features; a job "
                                       "either combines finished runs or fits on features")
        args.method = "la"  # routing only: every run of the list is checked to consume features
    elif not args.method or not args.out:
        raise InputValidationError("give --method and --out (one run), or --runs (several)")
    else:
        check_run_outs([args.out])
    cls = METHODS.get(args.method)
    params = dict(args.params or {})
    if getattr(cls, "derived", False):  # a view or k-NN of one fine-tuned run
        if not args.members or len(args.members) != 1:
            raise InputValidationError(f"method {args.method!r} is made from one fine-tuned "
                                       "run: give it with --members RUN_DIR")
        from lt_bench.runs.finetune import finetuned_view_run

        m = finetuned_view_run(args.method, Path(args.members[0]), Path(args.out), params)
        print(json.dumps({"method": args.method,
                          **{k: m[k] for k in ("top1", "many", "medium", "few")}}))
        return
    if cls.consumes == "runs":
        # the ensemble's seed comes from its members, so --seed is not read here
        _combine(args.method, args.members, args.out,
                 *_check_combine(args.method, args.members, args.out, params))
        return
    if cls.consumes == "images":
        raise InputValidationError(f"method {args.method!r} fine-tunes from images: use "
                                   f"`lt-bench finetune --method {args.method} ...`")
    if not args.features_dir:
        raise InputValidationError(f"method {args.method!r} trains on cached features: give "
                                   "--features-dir results/features/{dataset}/{backbone}")
    from lt_bench.runs.train import train_runs

    set_threads(args.threads)
    group_counts = None
    if args.group_counts:
        import numpy as np

        group_counts = np.loadtxt(args.group_counts, dtype=np.int64, ndmin=1)
    runs = args.runs if args.runs is not None else [
        {"method": args.method, "out": args.out, "seed": args.seed, "params": params,
         "base": dict(args.base or [])}]
    done = train_runs(Path(args.features_dir), runs,
                      prior=Path(args.prior) if args.prior else None, tune=args.tune,
                      device=_device(args.device), group_counts=group_counts,
                      reuse_dir=Path(args.reuse_dir) if args.reuse_dir else None)
    for r, m in zip(runs, done, strict=True):
        print(json.dumps({"method": r["method"], "seed": r["seed"],
                          **{k: m[k] for k in ("top1", "many", "medium", "few")}}))


def _check_combine(method: str, members, out, params: dict, seed=None) -> tuple[str, dict]:
    """(rule, hyper-parameters) of one ensemble run; an error where it has no members or
    where its members give it another seed than ``seed`` (a --runs entry's)."""
    from lt_bench.methods import METHODS

    cls = METHODS.get(method)
    if not members:
        raise InputValidationError(f"method {method!r} combines finished runs: give them with "
                                   "--members RUN_DIR RUN_DIR ... (in --runs: \"members\")")
    hp = dict(cls(**params).hparams)
    rule = hp.pop("rule", "sum")
    if seed is not None:
        from lt_bench.runs.ensemble import check_members, ensemble_seed

        vary = getattr(cls, "vary", "backbone")
        dirs = [Path(m) for m in members]
        got = ensemble_seed(dirs, check_members(dirs, vary, hp.get("members")), vary,
                            hp.get("seed_offsets"))
        if int(got) != int(seed):
            raise InputValidationError(f"{out}: its members make an ensemble of seed {got}, "
                                       f"the run list says seed {seed}")
    return rule, hp


def _combine(method: str, members, out, rule: str, hp: dict) -> None:
    """One ensemble run from finished member runs (the seam's ``runs`` kind), with the
    rule and hyper-parameters :func:`_check_combine` resolved."""
    from lt_bench.methods import METHODS
    from lt_bench.runs.ensemble import ensemble_run

    # what the members differ in is the method's (the same-backbone control: seeds)
    metrics = ensemble_run(members, Path(out), rule=rule, method=method,
                           vary=getattr(METHODS.get(method), "vary", "backbone"), hparams=hp)
    keys = ["top1", "many", "medium", "few", "best_member_top1", "val_best_member_top1",
            "gain_top1", "val_gain_top1", "n_trainable_params", "inference_cost",
            "train_seconds"]
    keys += [f"m{i}_top1" for i in range(1, metrics["n_members"] + 1)]
    result = {k: metrics[k] for k in keys}
    if "weights" in metrics["info"]:
        result["weights"] = metrics["info"]["weights"]
    print(json.dumps({"method": method, **result}))


def _device(requested: str | None) -> str:
    """cpu unless asked; ``auto`` takes a free GPU where one is visible (the same picker and
    lock files as extraction), else the CPU."""
    if requested in (None, "cpu"):
        return "cpu"
    if requested != "auto":
        return requested
    from lt_bench.features.device import pick_device

    return str(pick_device())


def cmd_finetune(args):
    from lt_bench.argtypes import set_threads
    from lt_bench.backbones.declared import declare_backbone_arg
    from lt_bench.data import get_dataset
    from lt_bench.data.images import image_root_of
    from lt_bench.runs.finetune import finetune_run
    from lt_bench.runs.folder import check_run_outs

    check_run_outs([args.out])
    set_threads(args.threads)
    declare_backbone_arg(args)
    ds = get_dataset(args.dataset, **(args.dataset_params or {}))
    root = image_root_of(ds, Path(args.split_dir), args.data_root, args.image_root_from)
    group_counts = None
    if args.group_counts:
        import numpy as np

        group_counts = np.loadtxt(args.group_counts, dtype=np.int64, ndmin=1)
    m = finetune_run(args.method, Path(args.split_dir), root, args.backbone,
                     Path(args.features_dir), Path(args.out), args.seed, args.params or {},
                     checkpoint=Path(args.checkpoint) if args.checkpoint else None,
                     prior=Path(args.prior) if args.prior else None,
                     device=_device(args.device), group_counts=group_counts)
    print(json.dumps({k: m[k] for k in ("top1", "many", "medium", "few",
                                        "n_trainable_params")}))


def cmd_logits(args):
    from lt_bench.runs.folder import read_metrics, read_run_config, write_logits
    from lt_bench.runs.predictors import run_logits

    read_run_config(Path(args.run_dir))  # a run folder at all,
    read_metrics(Path(args.run_dir))  # and a finished one: only those have logits to give
    labels, logits = run_logits(Path(args.run_dir), args.split)
    write_logits(labels, logits, Path(args.out))


def add_run_commands(sub) -> None:
    from lt_bench.argtypes import json_list, json_object, name_path, seed
    from lt_bench.backbones.declared import add_backbone_spec_argument

    s = sub.add_parser("prior", help="estimate a backbone's pre-training label prior q̂ (GLA)")
    s.add_argument("--features-dir", required=True,
                   help="features folder of one (dataset, backbone): val.parquet, text.parquet")
    s.add_argument("--out", required=True, help="prior Parquet, e.g. results/prior/toy/x.parquet")
    s.add_argument("--true-prior", help="known prior (toy backbones: prior.parquet, column prior)")
    s.add_argument("--split", default="val", choices=["val"],
                   help="class-balanced labelled split the prior is fitted on")
    s.add_argument("--solver", default="argmin", choices=["argmin", "gla_sgd"],
                   help="argmin: the argmin of GLA's objective (default); gla_sgd: GLA's "
                   "shipped pp_solver, 1,000 Lagrangian SGD steps from uniform")
    s.set_defaults(func=cmd_prior)

    s = sub.add_parser("train", help="one run of a method: fit on features, or combine runs",
                       description="Fit a features-consuming method on one (dataset, backbone, "
                       "seed), or (--members) combine finished runs into an ensemble run.")
    s.add_argument("--method", help="the method of one run")
    s.add_argument("--out", help="run folder")
    s.add_argument("--params", type=json_object, help="hyper-parameters (JSON object)")
    s.add_argument("--runs", type=json_list, metavar="JSON",
                   help='several runs in one process, in order: on one features folder, '
                   '[{"method": "ce", "out": DIR, "seed": 0, "params": {}, '
                   '"base": {"la": DIR}}, ...] (the workflow\'s head jobs), or ensembles, '
                   '[{"method": "backdoor", "out": DIR, "seed": 0, "params": {}, '
                   '"members": [DIR, ...]}, ...] (its combine_runs jobs)')
    s.add_argument("--reuse-dir", metavar="DIR",
                   help="cache of finished fits by fit key: an unchanged run is copied back, "
                   "not refitted (the workflow: results/cache/fits)")
    s.add_argument("--features-dir", help="features folder (methods that consume features)")
    s.add_argument("--seed", type=seed, default=0)
    s.add_argument("--prior", help="prior parquet of the backbone (q_hat)")
    s.add_argument("--base", type=name_path, action="append", metavar="METHOD=RUN_DIR",
                   help="finished run this method builds on (repeatable)")
    s.add_argument("--members", nargs="+", metavar="RUN_DIR",
                   help="member runs (methods that consume runs, e.g. backdoor)")
    s.add_argument("--tune", action="store_true", default=None,
                   help="post-hoc knobs may be tuned on val")
    s.add_argument("--no-tune", dest="tune", action="store_false",
                   help="val overlaps train: knobs keep their defaults")
    s.add_argument("--group-counts", help="per-class counts defining the D-groups (CIFAR-LT)")
    s.add_argument("--device", default="cpu", help="cpu (default), auto, cuda, cuda:1")
    s.add_argument("--threads", type=int)
    s.set_defaults(func=cmd_train)

    s = sub.add_parser("finetune", help="one fine-tuning run from images (PEFT + cosine head)",
                       description="Fine-tune a backbone with a method that consumes images "
                       "(adaptformer_la, vpt_la, lora_la, ...); resumes from its last finished "
                       "epoch when the run folder holds a checkpoint.")
    s.add_argument("--method", required=True)
    s.add_argument("--dataset", required=True)
    s.add_argument("--dataset-params", type=json_object, help="dataset parameters (JSON)")
    s.add_argument("--split-dir", required=True, help="folder with train/val/test.txt")
    s.add_argument("--data-root", help="image root of real datasets")
    s.add_argument("--image-root-from", metavar="REPORT",
                   help="take the image root from a `verify-images --out` report instead")
    s.add_argument("--backbone", required=True)
    add_backbone_spec_argument(s)
    s.add_argument("--checkpoint", help="local checkpoint (required for toy backbones)")
    s.add_argument("--features-dir", required=True,
                   help="features folder whose text.parquet gives the head's text init")
    s.add_argument("--out", required=True, help="run folder")
    s.add_argument("--seed", type=seed, default=0)
    s.add_argument("--params", type=json_object, help="hyper-parameters (JSON object)")
    s.add_argument("--prior", help="prior parquet of the backbone (q_hat, P-groups)")
    s.add_argument("--group-counts", help="per-class counts defining the D-groups (CIFAR-LT)")
    s.add_argument("--device", default="auto", help="auto (a free GPU, else cpu), cpu, cuda:1")
    s.add_argument("--threads", type=int)
    s.set_defaults(func=cmd_finetune)

    s = sub.add_parser("logits", help="a finished run's logits on a split (no retraining)")
    s.add_argument("run_dir")
    s.add_argument("--split", default="test", choices=["train", "val", "test"])
    s.add_argument("--out", required=True, help="Parquet: label int32, logits list<float32,K>")
    s.set_defaults(func=cmd_logits)
