"""``lt-bench``: one verb per stage, so everything runs without Snakemake too.

Conventions (docs/architecture.md, "CLI"): the parameters of the thing a verb acts on are
one JSON object, ``--params '{...}'`` (a method's hyper-parameters for ``fit``,
``combine`` and ``finetune``, a dataset's for ``prepare``); every user error prints one
line and exits with status 2 (``lt_bench.errors.EXIT_USER_ERROR``); ``-v`` shows the
traceback. Building the parser imports no torch, open_clip, mlflow or pandas: each
handler imports what it needs.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from lt_bench.argtypes import json_object, print_json, seed, set_threads, workers
from lt_bench.errors import EXIT_USER_ERROR, UserError

# --- handlers of the verbs defined here -------------------------------------------------

def cmd_list(args):
    """Every entry of a family with its origin (built-in, or the plugin's distribution), and
    a line for each plugin that failed to load (then exit 2: fix or uninstall it)."""
    if args.family == "methods":
        from lt_bench.methods import METHODS as registry

        def describe(cls):
            return f"{cls.consumes:9s} {cls.description}"
    elif args.family == "datasets":
        from lt_bench.data import DATASETS as registry

        def describe(cls):
            doc = (getattr(cls, "description", "") or cls.__doc__ or "").strip()
            return doc.splitlines()[0] if doc else ""
    else:
        from lt_bench.backbones import BACKBONES as registry

        def describe(spec):
            return (f"{spec.library:9s} {spec.model} {spec.pretrained or ''}  "
                    f"{spec.description}")
    entries, broken = registry.listing()
    width = max([len(o) for _, _, o in entries] + [len(e.dist) for e in broken] + [8])
    for name, obj, origin in entries:
        print(f"{name:20s} {origin:{width}s} {describe(obj)}")
    for e in broken:
        print(f"{'(broken plugin)':20s} {e.dist:{width}s} {e}")
    return EXIT_USER_ERROR if broken else 0


def cmd_pretrain(args):
    from lt_bench.backbones import BACKBONES
    from lt_bench.data.splits import read_classnames
    from lt_bench.data.toy import world_params
    from lt_bench.pretrain import pretrain_toy_clip

    set_threads(args.threads)
    spec = BACKBONES.get(args.backbone)
    if spec.library != "toy":
        raise UserError(f"backbone {args.backbone!r} is not a toy CLIP; only toy backbones are "
                        "pre-trained by the pipeline (real ones come from open_clip/timm)")
    dataset_dir = Path(args.dataset_dir)
    k = len(read_classnames(dataset_dir / "classnames.txt"))
    # The pre-training pairs are drawn from the dataset's own world (its regime and image
    # size, written by `lt-bench prepare toy`), so downstream and pre-training images match.
    world = world_params(dataset_dir)
    if world is None:
        raise UserError(f"{dataset_dir / 'toy_meta.json'} not found: --dataset-dir must be a "
                        "toy split folder written by `lt-bench prepare toy` (it records the "
                        "world's regime)")
    summary = pretrain_toy_clip(args.out, num_classes=k, index=spec.toy_index, seed=args.seed,
                                image_size=world["image_size"], regime=world["regime"],
                                **(args.params or {}))
    print_json({k: summary.get(k) for k in ("regime", "zero_shot_top1", "rho_acc_vs_prior",
                                            "rho_qhat_vs_prior", "rho_probe_vs_prior",
                                            "total_seconds")})


def cmd_extract(args):
    from lt_bench.backbones.declared import declare_backbone_arg
    from lt_bench.data import get_dataset
    from lt_bench.data.images import image_root_of
    from lt_bench.features.extract import auto_num_workers, extract_all
    from lt_bench.features.options import extract_kwargs

    set_threads(args.threads)
    declare_backbone_arg(args)
    ds = get_dataset(args.dataset, **(args.dataset_params or {}))
    root = image_root_of(ds, Path(args.split_dir), args.data_root, args.image_root_from)
    n_workers = auto_num_workers() if args.num_workers == "auto" else args.num_workers
    stats = extract_all(args.dataset, Path(args.split_dir), root, args.backbone,
                        Path(args.out_dir), checkpoint=args.checkpoint, splits=ds.splits,
                        batch_size=args.batch_size, num_workers=n_workers,
                        device=args.device, shard_size=args.shard_size,
                        **extract_kwargs(args))
    print_json(stats)


def cmd_prompts(args):
    from lt_bench.backbones.declared import declare_backbone_arg
    from lt_bench.backbones.prompts import prompts_report

    declare_backbone_arg(args)
    print(json.dumps(prompts_report(args.dataset, Path(args.split_dir), args.backbone),
                     indent=2, ensure_ascii=False))


# --- parser ---------------------------------------------------------------------------

def _add_core_commands(sub) -> None:
    from lt_bench.backbones.declared import add_backbone_spec_argument
    from lt_bench.features.options import add_extract_arguments

    s = sub.add_parser("list", help="list registered methods, datasets or backbones")
    s.add_argument("family", choices=["methods", "datasets", "backbones"])
    s.set_defaults(func=cmd_list)

    s = sub.add_parser("pretrain", help="pre-train a toy CLIP on its long-tailed prior")
    s.add_argument("backbone", help="toy backbone name, e.g. toyclip0")
    s.add_argument("--dataset-dir", required=True,
                   help="toy split folder (class names; the world's regime and image size "
                        "from its toy_meta.json)")
    s.add_argument("--out", required=True, help="folder for checkpoint.pt and prior.parquet")
    s.add_argument("--params", type=json_object, help="pre-training parameters (JSON object)")
    s.add_argument("--seed", type=seed, default=0)
    s.add_argument("--threads", type=int)
    s.set_defaults(func=cmd_pretrain)

    s = sub.add_parser("extract", help="image features + class text embeddings to Parquet")
    s.add_argument("--dataset", required=True)
    s.add_argument("--dataset-params", type=json_object, help="dataset parameters (JSON)")
    s.add_argument("--split-dir", required=True)
    s.add_argument("--data-root", help="image root of real datasets")
    s.add_argument("--image-root-from", metavar="REPORT",
                   help="take the image root from a `verify-images --out` report instead")
    s.add_argument("--backbone", required=True)
    add_backbone_spec_argument(s)
    s.add_argument("--checkpoint", help="local checkpoint (required for toy backbones)")
    s.add_argument("--out-dir", required=True)
    s.add_argument("--batch-size", type=int, default=256)
    s.add_argument("--num-workers", type=workers, default="auto",
                   help="decode worker processes, or auto: this job's share of the CPUs (one "
                        "share per GPU) - 1, at most 16 (default: auto)")
    s.add_argument("--shard-size", type=int, default=8192)
    s.add_argument("--device", help="cpu, cuda, cuda:1 (default: pick a free one)")
    s.add_argument("--threads", type=int)
    add_extract_arguments(s)  # the protocol options: feature, transforms, TTE, views, decode
    s.set_defaults(func=cmd_extract)

    s = sub.add_parser("prompts", help="print the exact prompts of zero-shot and head init")
    s.add_argument("dataset")
    s.add_argument("--split-dir", required=True, help="folder with classnames.txt")
    s.add_argument("--backbone", default="clip_vit_b16",
                   help="backbone whose prompt sets apply (default: clip_vit_b16)")
    add_backbone_spec_argument(s)
    s.set_defaults(func=cmd_prompts)


def build_parser() -> argparse.ArgumentParser:
    from lt_bench.data.cli import add_data_commands
    from lt_bench.prior.cli import add_prior_commands
    from lt_bench.report.cli import add_report_commands
    from lt_bench.runs.cli import add_run_commands
    from lt_bench.setup_cli import add_setup_commands
    from lt_bench.tracking.cli import add_tracking_commands

    p = argparse.ArgumentParser(prog="lt-bench", description=__doc__.split("\n\n")[0])
    p.add_argument("-v", "--verbose", action="store_true",
                   help="debug logging, and a traceback with every error")
    p.add_argument("--variants", metavar="JSON|CONFIG",
                   help="method variants this command may name, as config.yaml declares them: "
                   "'{\"la_tau05\": {\"base\": \"la\", \"tau\": 0.5}}' or a config file "
                   "(its methods: entries that name a base); the workflow passes each job its own")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_core_commands(sub)
    add_data_commands(sub)  # prepare, verify-images, split-stats, download
    add_prior_commands(sub)  # prior
    add_run_commands(sub)  # fit, combine, finetune, logits
    add_report_commands(sub)  # tables, figures, prior-table, report
    add_tracking_commands(sub)  # ingest, ui
    add_setup_commands(sub)  # doctor, fetch-weights
    return p


def _describe_os_error(e: OSError) -> str:
    import errno

    where = f" ({e.filename})" if getattr(e, "filename", None) else ""
    if e.errno == errno.ENOSPC:
        return f"no space left on the device{where}; free some space and rerun"
    if e.errno == errno.EROFS:
        return f"read-only file system{where}; results need a writable folder"
    if e.errno == errno.EACCES:
        return f"permission denied{where}; check the folder's permissions"
    return str(e)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        if args.variants:  # before the command: it looks variants up like any method
            from lt_bench.methods import declare_variants
            from lt_bench.methods._variants import read_variants_arg

            declare_variants(read_variants_arg(args.variants))
        rc = args.func(args)
    except (UserError, OSError) as e:  # OSError: disk full, permissions
        # anything else (a bare ValueError, KeyError, AssertionError) is a bug: its traceback
        if args.verbose:
            raise
        msg = _describe_os_error(e) if isinstance(e, OSError) and not isinstance(
            e, FileNotFoundError) else str(e)
        print(f"lt-bench {args.command}: error: {msg}", file=sys.stderr)
        return EXIT_USER_ERROR
    except RuntimeError as e:
        # torch's CUDA out of memory (a RuntimeError; torch is not imported at start-up):
        # the user's batch size or device, one line. Any other RuntimeError is a bug.
        if args.verbose or "out of memory" not in str(e):
            raise
        print(f"lt-bench {args.command}: error: {e} (lower the batch size, or run with -v "
              "for the traceback)", file=sys.stderr)
        return EXIT_USER_ERROR
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
