"""``lt-bench``: one subcommand per stage, so everything runs without Snakemake too."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path


def _json_arg(s: str):
    try:
        return json.loads(s)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"not valid JSON ({e}): {s!r}") from None


def _kv(s: str) -> tuple[str, str]:
    if "=" not in s:
        raise argparse.ArgumentTypeError(f"expected NAME=PATH, got {s!r}")
    k, v = s.split("=", 1)
    return k, v


def _workers(s: str) -> int:
    if s == "auto":
        from lt_bench.features.extract import auto_num_workers

        return auto_num_workers()
    try:
        return max(0, int(s))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of workers or 'auto', got {s!r}") from None


def _threads(n: int | None) -> None:
    if n:
        import torch

        torch.set_num_threads(n)


# --- subcommand handlers --------------------------------------------------------------

def cmd_list(a):
    if a.family == "methods":
        from lt_bench.methods import METHODS

        for name, cls in METHODS.items():
            print(f"{name:14s} {cls.description}")
    elif a.family == "datasets":
        from lt_bench.data import DATASETS

        for name, cls in DATASETS.items():
            doc = (getattr(cls, "description", "") or cls.__doc__ or "").strip()
            print(f"{name:14s} {doc.splitlines()[0] if doc else ''}")
    else:
        from lt_bench.backbones import BACKBONES

        for name, spec in BACKBONES.items():
            print(f"{name:20s} {spec.library:9s} {spec.model} {spec.pretrained or ''}  "
                  f"{spec.description}")


def cmd_prepare(a):
    from lt_bench.data import get_dataset

    get_dataset(a.dataset, **(a.params or {})).prepare(Path(a.out))


def cmd_pretrain(a):
    from lt_bench.backbones import BACKBONES
    from lt_bench.backbones.toy_pretrain import pretrain_toy_clip
    from lt_bench.data.splits import read_classnames

    _threads(a.threads)
    spec = BACKBONES.get(a.backbone)
    if spec.library != "toy":
        raise ValueError(f"backbone {a.backbone!r} is not a toy CLIP; only toy backbones are "
                         "pre-trained by the pipeline (real ones come from open_clip/timm)")
    k = len(read_classnames(Path(a.dataset_dir) / "classnames.txt"))
    summary = pretrain_toy_clip(a.out, num_classes=k, index=spec.toy_index, seed=a.seed,
                                **(a.params or {}))
    print(json.dumps({k: summary[k] for k in ("zero_shot_top1", "rho_acc_vs_prior",
                                             "train_seconds")}))


def cmd_extract(a):
    from lt_bench.data import get_dataset
    from lt_bench.features.extract import extract_all

    _threads(a.threads)
    ds = get_dataset(a.dataset, **(a.dataset_params or {}))
    if a.image_root_from:  # the root an image check verified (lt-bench check-images --out)
        root = Path(json.loads(Path(a.image_root_from).read_text())["image_root"])
    else:
        root = ds.image_root(Path(a.split_dir), a.data_root)
    stats = extract_all(a.dataset, Path(a.split_dir), root, a.backbone, Path(a.out_dir),
                        checkpoint=a.checkpoint, splits=ds.splits, batch_size=a.batch_size,
                        num_workers=a.num_workers, device=a.device, shard_size=a.shard_size)
    print(json.dumps(stats))


def cmd_check_images(a):
    from lt_bench.data.real import ensure_images
    from lt_bench.io import write_json

    data_root = str(Path(a.data_root).expanduser().absolute()) if a.data_root else None
    report = ensure_images(a.dataset, Path(a.split_dir), data_root, params=a.params or {},
                           download=a.download, sample=a.sample)
    if a.out:
        write_json(a.out, report)
    print(json.dumps({k: report[k] for k in ("dataset", "image_root", "n_listed", "n_sampled",
                                             "ok")}))


def cmd_train(a):
    from lt_bench.runs import train_run

    _threads(a.threads)
    m = train_run(a.method, Path(a.features_dir), Path(a.out), a.seed, a.hparams or {},
                  prior=Path(a.prior) if a.prior else None, base_runs=dict(a.base or []),
                  tune=a.tune)
    print(json.dumps({k: m[k] for k in ("top1", "many", "medium", "few")}))


def cmd_logits(a):
    from lt_bench.runs import run_logits, write_logits

    labels, logits = run_logits(Path(a.run_dir), a.split)
    write_logits(labels, logits, Path(a.out))


def cmd_aggregate(a):
    from lt_bench.report.collect import collect_runs
    from lt_bench.report.tables import write_main_table

    runs = collect_runs(a.runs_root, a.metrics)
    table = write_main_table(runs, Path(a.out_dir))
    print(f"{len(runs)} runs -> {len(table)} rows in {a.out_dir}/main.csv")


# --- parser ---------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lt-bench", description=__doc__)
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("list", help="list registered methods, datasets or backbones")
    s.add_argument("family", choices=["methods", "datasets", "backbones"])
    s.set_defaults(func=cmd_list)

    s = sub.add_parser("prepare", help="write a dataset's split lists (and toy images)")
    s.add_argument("dataset")
    s.add_argument("--out", required=True, help="split folder, e.g. resources/data/toy")
    s.add_argument("--params", type=_json_arg, help="dataset parameters as JSON")
    s.set_defaults(func=cmd_prepare)

    s = sub.add_parser("pretrain", help="pre-train a toy CLIP on its long-tailed prior")
    s.add_argument("backbone", help="toy backbone name, e.g. toyclip0")
    s.add_argument("--dataset-dir", required=True, help="toy split folder (for class names)")
    s.add_argument("--out", required=True, help="folder for checkpoint.pt and prior.parquet")
    s.add_argument("--params", type=_json_arg, help="pre-training parameters as JSON")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--threads", type=int)
    s.set_defaults(func=cmd_pretrain)

    s = sub.add_parser("extract", help="image features + class text embeddings to Parquet")
    s.add_argument("--dataset", required=True)
    s.add_argument("--dataset-params", type=_json_arg)
    s.add_argument("--split-dir", required=True)
    s.add_argument("--data-root", help="image root of real datasets")
    s.add_argument("--image-root-from", metavar="REPORT",
                   help="take the image root from a `check-images --out` report instead")
    s.add_argument("--backbone", required=True)
    s.add_argument("--checkpoint", help="local checkpoint (required for toy backbones)")
    s.add_argument("--out-dir", required=True)
    s.add_argument("--batch-size", type=int, default=256)
    s.add_argument("--num-workers", type=_workers, default="auto",
                   help="decode worker processes, or auto: this job's share of the CPUs (one "
                        "share per GPU) - 1, at most 16 (default: auto)")
    s.add_argument("--shard-size", type=int, default=8192)
    s.add_argument("--device", help="cpu, cuda, cuda:1 (default: pick a free one)")
    s.add_argument("--threads", type=int)
    s.set_defaults(func=cmd_extract)

    s = sub.add_parser("check-images", help="verify a dataset's images (download if allowed)",
                       description="Check that every image of the split lists exists under "
                       "--data-root and that a sample decodes; with --download, Places-LT and "
                       "iNat2018 images that are missing are downloaded first. Writes the "
                       "report (with the verified image root) to --out.")
    s.add_argument("dataset")
    s.add_argument("--split-dir", required=True, help="folder with train/val/test.txt")
    s.add_argument("--data-root", help="folder the split-list paths are relative to")
    s.add_argument("--params", type=_json_arg, help="dataset parameters as JSON")
    s.add_argument("--download", action="store_true",
                   help="download missing images (places_lt, inat2018; never ImageNet)")
    s.add_argument("--sample", type=int, default=200, help="images to decode (default: 200)")
    s.add_argument("--out", help="JSON report, written atomically when the check passes")
    s.set_defaults(func=cmd_check_images)

    s = sub.add_parser("train", help="fit one method on one (dataset, backbone, seed)")
    s.add_argument("--method", required=True)
    s.add_argument("--features-dir", required=True)
    s.add_argument("--out", required=True, help="run folder")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--hparams", type=_json_arg, help="hyper-parameters as JSON")
    s.add_argument("--prior", help="prior parquet of the backbone (q_hat)")
    s.add_argument("--base", type=_kv, action="append", metavar="METHOD=RUN_DIR",
                   help="finished run this method builds on (repeatable)")
    s.add_argument("--tune", action=argparse.BooleanOptionalAction, default=None,
                   help="may post-hoc knobs be tuned on val (--no-tune where val overlaps "
                        "train; default: from the dataset's default split policy)")
    s.add_argument("--threads", type=int)
    s.set_defaults(func=cmd_train)

    s = sub.add_parser("logits", help="rebuild a run's logits on a split (no retraining)")
    s.add_argument("run_dir")
    s.add_argument("--split", default="test", choices=["train", "val", "test"])
    s.add_argument("--out", required=True, help="Parquet: label int32, logits list<float32,K>")
    s.set_defaults(func=cmd_logits)

    s = sub.add_parser("aggregate", help="results tables from the runs' metrics.json")
    s.add_argument("--runs-root", default="results/runs")
    s.add_argument("--metrics", nargs="*", help="explicit metrics.json files (default: all)")
    s.add_argument("--out-dir", default="results/tables")
    s.set_defaults(func=cmd_aggregate)

    for hook in _EXTRA_COMMANDS:
        hook(sub)
    return p


def _data_commands(sub):
    try:
        from lt_bench.data.cli import add_data_commands
    except ImportError:  # pragma: no cover
        return
    add_data_commands(sub)


def _hook(module: str, func: str):
    """Subcommands contributed by a package (``add_*_commands(subparsers)``)."""

    def add(sub):
        import importlib

        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as e:  # that stage is not installed in this checkout
            if e.name != module:
                raise
            return
        getattr(mod, func)(sub)

    return add


_EXTRA_COMMANDS = [
    _data_commands,
    _hook("lt_bench.methods.cli", "add_method_commands"),  # prior, backdoor
    _hook("lt_bench.report.cli", "add_report_commands"),  # report, tables, figures
    _hook("lt_bench.tracking", "add_tracking_commands"),  # ingest
]


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        args.func(args)
    except (ValueError, KeyError, FileNotFoundError, RuntimeError) as e:
        if args.verbose:
            raise
        print(f"lt-bench {args.command}: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
