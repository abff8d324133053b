"""Verbs of the run layer: one per kind of run, routed on what the method consumes here and
nowhere else (:data:`VERBS`): ``fit`` (features), ``combine`` (runs), ``finetune``
(images); and ``logits``."""

from __future__ import annotations

import json
from pathlib import Path

from lt_bench.errors import InputValidationError

#: the verb that makes a run of a method, by what the method consumes: the one router
VERBS = {"features": "fit", "runs": "combine", "images": "finetune"}
#: what each verb needs besides --method and --out (for the message naming the right verb)
_VERB_INPUTS = {"fit": "--features-dir results/features/{dataset}/{backbone}",
                "combine": "--members RUN_DIR RUN_DIR ...",
                "finetune": "--dataset ... --split-dir ... --backbone ..."}


def _require_verb(verb: str, methods: list[str]) -> None:
    """Each method consumes what ``verb`` makes runs from; else an error naming its verb."""
    from lt_bench.methods import METHODS

    for name in methods:
        consumes = METHODS.get(name).consumes
        if VERBS[consumes] != verb:
            right = VERBS[consumes]
            raise InputValidationError(
                f"method {name!r} consumes {consumes}, which `lt-bench {verb}` does not "
                f"make runs from: `lt-bench {right} --method {name} {_VERB_INPUTS[right]}`")


def _run_list(args, verb: str, one: dict) -> list[dict]:
    """The runs of one ``verb`` call: the ``--runs`` list (checked), or the one run the
    options give (``one``); every method checked to be the verb's, every out folder free."""
    from lt_bench.runs.folder import check_run_outs
    from lt_bench.runs.train import check_run_list

    own = [k for k in one if k not in ("method", "out", "seed")]  # params, base or members
    if args.runs is not None:
        if args.method or args.out or any(one[k] for k in own):
            raise InputValidationError(
                f"--runs lists every run (method, out, seed, {', '.join(own)}): drop "
                + "/".join(f"--{k}" for k in ("method", "out", *own)))
        runs = check_run_list(args.runs, optional=tuple(own))
    elif not args.method or not args.out:
        raise InputValidationError("give --method and --out (one run), or --runs (several)")
    else:
        runs = [one]
    _require_verb(verb, [r["method"] for r in runs])
    check_run_outs([r["out"] for r in runs])  # before any run is computed
    return runs


def cmd_fit(args):
    """Runs of methods that consume features, fitted on one features folder read once."""
    from lt_bench.argtypes import set_threads
    from lt_bench.runs.train import train_runs

    runs = _run_list(args, "fit", {"method": args.method, "out": args.out, "seed": args.seed,
                                   "params": dict(args.params or {}),
                                   "base": dict(args.base or [])})
    if not args.features_dir:
        raise InputValidationError("`lt-bench fit` trains on cached features: give "
                                   "--features-dir results/features/{dataset}/{backbone}")
    set_threads(args.threads)
    group_counts = None
    if args.group_counts:
        import numpy as np

        group_counts = np.loadtxt(args.group_counts, dtype=np.int64, ndmin=1)
    done = train_runs(Path(args.features_dir), runs,
                      prior=Path(args.prior) if args.prior else None, tune=args.tune,
                      device=_device(args.device), group_counts=group_counts,
                      reuse_dir=Path(args.reuse_dir) if args.reuse_dir else None)
    for r, m in zip(runs, done, strict=True):
        print(json.dumps({"method": r["method"], "seed": r["seed"],
                          **{k: m[k] for k in ("top1", "many", "medium", "few")}}))


def cmd_combine(args):
    """Runs of methods that consume runs (ensembles, views of a fine-tuning), each from its
    member runs; every entry is checked before any is computed."""
    runs = _run_list(args, "combine", {"method": args.method, "out": args.out, "seed": None,
                                       "params": dict(args.params or {}),
                                       "members": args.members})
    checked = [(r, _check_combine(r)) for r in runs]
    for r, method in checked:
        print(json.dumps({"method": r["method"], **_combine(r, method)}))


def _check_combine(run: dict):
    """The method of one runs-consuming run, its members checked (lt_bench.runs.ensemble
    .check_members: the ones the method declares); an error where they give it another
    seed than the run list's."""
    from lt_bench.methods import METHODS
    from lt_bench.runs.ensemble import check_members

    method, members = run["method"], run.get("members")
    if not members:
        raise InputValidationError(f"method {method!r} combines finished runs: give them with "
                                   "--members RUN_DIR RUN_DIR ... (in --runs: \"members\")")
    obj = METHODS.get(method)(**(run.get("params") or {}))
    _, seed = check_members([Path(m) for m in members], obj)
    if run.get("seed") is not None and int(seed) != int(run["seed"]):
        raise InputValidationError(f"{run['out']}: its members make an ensemble of seed "
                                   f"{seed}, the run list says seed {run['seed']}")
    return obj


def _combine(run: dict, method) -> dict:
    """One run of ``method`` from its finished member runs: a view of one fine-tuning
    (``derived``: lt_bench.runs.finetune) or an ensemble (lt_bench.runs.ensemble); the
    summary it prints."""
    members, out, params = [Path(m) for m in run["members"]], Path(run["out"]), method.hparams
    if method.derived:
        from lt_bench.runs.finetune import finetuned_view_run

        m = finetuned_view_run(method.name, members[0], out, params)
        return {k: m[k] for k in ("top1", "many", "medium", "few")}
    from lt_bench.runs.ensemble import ensemble_run

    metrics = ensemble_run(members, out, method=method.name, hparams=params)
    keys = ["top1", "many", "medium", "few", "best_member", "best_member_top1",
            "val_best_member_top1", "gain_top1", "val_gain_top1", "n_trainable_params",
            "inference_cost", "train_seconds"]
    keys += [f"m{i}_top1" for i in range(1, metrics["n_members"] + 1)]
    result = {k: metrics[k] for k in keys}
    if "weights" in metrics["info"]:
        result["weights"] = metrics["info"]["weights"]
    return result


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

    _require_verb("finetune", [args.method])
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
    from lt_bench.runs.run_folder import RunFolder
    from lt_bench.runs.stored import write_logits

    run = RunFolder.open(args.run_dir)  # a run folder at all,
    _ = run.metrics  # and a finished one: only those have logits to give
    labels, logits = run.split_logits(args.split)
    write_logits(labels, logits, Path(args.out))


def _add_run_options(s, one: str, example: str) -> None:
    """--method, --out, --params (one run) and --runs (several), shared by fit and combine."""
    from lt_bench.argtypes import json_list, json_object

    s.add_argument("--method", help="the method of one run")
    s.add_argument("--out", help="run folder")
    s.add_argument("--params", type=json_object, help="hyper-parameters (JSON object)")
    s.add_argument("--runs", type=json_list, metavar="JSON",
                   help=f"several runs in one process, in order (method, out, seed; params, "
                   f"{one} optional): {example}")


def add_run_commands(sub) -> None:
    from lt_bench.argtypes import json_object, name_path, seed
    from lt_bench.backbones.declared import add_backbone_spec_argument

    s = sub.add_parser("fit", help="runs of methods that consume features (heads, zero-shot, "
                       "post hoc, k-NN)",
                       description="Fit a features-consuming method on one (dataset, backbone, "
                       "seed)'s cached features, or (--runs) several runs on one features "
                       "folder in one process.")
    _add_run_options(s, one="base", example='[{"method": "ce", "out": DIR, "seed": 0, '
                     '"params": {}, "base": {"la": DIR}}, ...] (the workflow\'s head jobs)')
    s.add_argument("--seed", type=seed, default=0)
    s.add_argument("--base", type=name_path, action="append", metavar="METHOD=RUN_DIR",
                   help="finished run this method builds on (repeatable)")
    s.add_argument("--features-dir", help="features folder: results/features/{dataset}/"
                   "{backbone} (required)")
    s.add_argument("--prior", help="prior parquet of the backbone (q_hat)")
    s.add_argument("--reuse-dir", metavar="DIR",
                   help="cache of finished fits by fit key: an unchanged run is copied back, "
                   "not refitted (the workflow: results/cache/fits)")
    s.add_argument("--tune", action="store_true", default=None,
                   help="post-hoc knobs may be tuned on val")
    s.add_argument("--no-tune", dest="tune", action="store_false",
                   help="val overlaps train: knobs keep their defaults")
    s.add_argument("--group-counts", help="per-class counts defining the D-groups (CIFAR-LT)")
    s.add_argument("--device", default="cpu", help="cpu (default), auto, cuda, cuda:1")
    s.add_argument("--threads", type=int)
    s.set_defaults(func=cmd_fit)

    s = sub.add_parser("combine", help="runs of methods that consume runs (the backdoor and "
                       "its controls, the views of a fine-tuning)",
                       description="Make a run from finished member runs, no retraining: an "
                       "ensemble (the backdoor and its controls) or a view of one fine-tuning "
                       "(adaptformer_la_tte, knn_finetuned); its seed is its members'.")
    _add_run_options(s, one="members", example='[{"method": "backdoor", "out": DIR, "seed": 0, '
                     '"params": {}, "members": [DIR, ...]}, ...] (the workflow\'s combine '
                     'jobs)')
    s.add_argument("--members", nargs="+", metavar="RUN_DIR",
                   help="the member runs, in the order the method declares them")
    s.set_defaults(func=cmd_combine)

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
