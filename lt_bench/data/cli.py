"""The data verbs of ``lt-bench``: ``prepare``, ``verify-images``, ``split-stats``,
``download-images``.

The main CLI adds them with :func:`add_data_commands` as top-level verbs. Each sets
``func`` to a handler ``func(args)``; a handler returns nothing and raises a
:class:`lt_bench.errors.UserError` subclass for anything a user can fix (the main CLI
prints it on one line and exits with :data:`lt_bench.errors.EXIT_USER_ERROR`). Dataset
parameters are passed one way everywhere: ``--params '<JSON object>'``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from lt_bench.argtypes import json_object, seed


def _print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=2, sort_keys=True))


def cmd_prepare(args: argparse.Namespace) -> None:
    from lt_bench.data import get_dataset
    from lt_bench.data.splits import check_split_out, read_classnames, split_stats

    ds = get_dataset(args.dataset, **(args.params or {}))
    out = Path(args.out)
    check_split_out(out)  # a user's folder is refused before anything is written
    ds.prepare(out)
    if args.smoke_limits:  # a smoke run (lt_bench/smoke.py): a few images of every class
        from lt_bench.data.smoke import subsample_splits

        subsample_splits(out, {s: int(n) for s, n in args.smoke_limits.items()},
                         allow_val_in_train=ds.val_overlaps_train)
    # the class count of what was written (the toy world's is a parameter, not num_classes)
    k = len(read_classnames(out / "classnames.txt"))
    _print_json({split: split_stats(out / f"{split}.txt", k) for split in ds.splits})


def cmd_verify_images(args: argparse.Namespace) -> None:
    from lt_bench.data.images import ImageVerificationError, ensure_images
    from lt_bench.io import write_json

    data_root = str(Path(args.data_root).expanduser().absolute()) if args.data_root else None
    split_dir = Path(args.split_dir or Path("resources/data") / args.dataset)
    try:
        report = ensure_images(args.dataset, split_dir, data_root, params=args.params or {},
                               download=args.download, sample=args.sample, seed=args.seed)
    except ImageVerificationError as err:
        _print_json(err.report)  # the whole report on stdout, the message on stderr
        raise
    if args.out:  # only a passed check is written: the workflow treats it as done
        write_json(args.out, report)
    _print_json(report)


def cmd_split_stats(args: argparse.Namespace) -> None:
    from lt_bench.data.splits import split_stats

    _print_json(split_stats(args.split_file, args.num_classes))


def cmd_download_images(args: argparse.Namespace) -> None:
    from lt_bench.data.images import download_images

    _print_json(download_images(args.dataset, args.data_root, download_dir=args.download_dir,
                                keep_archive=not args.delete_archive))


def _params_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--params", type=json_object, metavar="JSON",
                   help="dataset parameters as a JSON object, e.g. '{\"imb_ratio\": 50}'")


def add_data_commands(sub: argparse._SubParsersAction) -> None:
    """Add ``prepare``, ``verify-images``, ``split-stats`` and ``download-images``."""
    p = sub.add_parser(
        "prepare", help="write a dataset's checked split lists and classnames.txt",
        description="Write train.txt, val.txt, test.txt and classnames.txt for DATASET into "
                    "--out and check them (no duplicate lines, no image in two splits, "
                    "every class with training images; splits_check.json). Real datasets "
                    "download their pinned split lists and verify checksums and statistics. "
                    "Prints the statistics of each split.")
    p.add_argument("dataset", metavar="DATASET", help="registered dataset name")
    p.add_argument("--out", required=True, metavar="DIR",
                   help="output folder (the split dir), e.g. resources/data/toy")
    _params_arg(p)
    p.add_argument("--smoke-limits", type=json_object, metavar="JSON",
                   help="a smoke run: keep at most this many images of every class per "
                        "split, e.g. '{\"train\": 3, \"val\": 2, \"test\": 2}'")
    p.set_defaults(func=cmd_prepare)

    p = sub.add_parser(
        "verify-images", help="check a dataset's images (download them if allowed)",
        description="Check that every image of the split lists exists under --data-root and "
                    "that a random sample decodes; with --download, missing Places-LT and "
                    "iNat2018 images are downloaded first (never ImageNet). Prints the JSON "
                    "report; writes it (with the verified image root) to --out when the "
                    "check passes.")
    p.add_argument("dataset", metavar="DATASET", help="registered dataset name, e.g. places_lt")
    p.add_argument("--split-dir", default=None,
                   help="folder with train/val/test.txt (default: resources/data/DATASET)")
    p.add_argument("--data-root", default=None,
                   help="folder the split-list paths are relative to (config key data_root)")
    _params_arg(p)
    p.add_argument("--download", action="store_true",
                   help="download missing images (places_lt, inat2018; never ImageNet)")
    p.add_argument("--sample", type=int, default=200, help="images to decode (default: 200)")
    p.add_argument("--seed", type=seed, default=0, help="seed of the decode sample (default: 0)")
    p.add_argument("--out", default=None, help="JSON report, written when the check passes")
    p.set_defaults(func=cmd_verify_images)

    p = sub.add_parser(
        "split-stats", help="print statistics of a split list as JSON",
        description="Print n_images, n_classes, max/min count, imbalance ratio and the number "
                    "of many (>100), medium (20-100) and few (<20) classes of an OLTR split "
                    "list ('relative/path label' per line).")
    p.add_argument("split_file", metavar="FILE",
                   help="split list, e.g. resources/data/imagenet_lt/train.txt")
    p.add_argument("--num-classes", type=int, default=None,
                   help="number of classes (default: largest label + 1)")
    p.set_defaults(func=cmd_split_stats)

    p = sub.add_parser(
        "download-images", help="download and extract the images of places_lt or inat2018",
        description="Download (resumable, checksummed) and safely extract the image archive "
                    "of places_lt or inat2018 into --data-root; files already there are "
                    "never overwritten or deleted. ImageNet is never downloaded.")
    p.add_argument("dataset", metavar="DATASET", help="places_lt or inat2018")
    p.add_argument("--data-root", required=True, help="folder to extract the images into")
    p.add_argument("--download-dir", default=None,
                   help="where the archive goes (default: DATA_ROOT/.downloads)")
    p.add_argument("--delete-archive", action="store_true",
                   help="delete the archive after a successful extraction")
    p.set_defaults(func=cmd_download_images)


def main(argv: list[str] | None = None) -> None:
    """Parse and run one data verb without the rest of ``lt-bench`` (tests, debugging).

    Errors propagate as they are; ``lt-bench`` itself turns a UserError into one line.
    """
    parser = argparse.ArgumentParser(prog="lt-bench")
    add_data_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    args.func(args)
