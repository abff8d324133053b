"""``lt-bench data …`` subcommands: split statistics, image checks, prepare, downloads.

The main CLI hooks these in with :func:`add_data_commands`; every subcommand sets
``func`` to a handler ``func(args)`` that returns 0 on success. Errors a user can fix
(bad config, missing images, checksum mismatches) print one clear message and raise
``SystemExit(1)``, so the exit status is 1 whatever the caller does with return values.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from lt_bench.data.download import DownloadError, UnsafeArchiveError
from lt_bench.data.splits import SplitFormatError, split_stats
from lt_bench.registry import UnknownNameError

# Errors whose message is the whole story: no traceback for these.
USER_ERRORS = (SplitFormatError, DownloadError, UnsafeArchiveError, UnknownNameError,
               FileNotFoundError, ValueError)


def parse_param(text: str) -> tuple[str, Any]:
    """``k=v`` → ``(k, v)``; ``v`` is read as JSON when it parses (``100``, ``true``), else text."""
    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        value = json.loads(raw)
    except ValueError:
        value = raw
    return key.strip(), value


def _params(pairs: list[tuple[str, Any]] | None) -> dict[str, Any]:
    return dict(pairs or [])


def _print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=2, sort_keys=True))


def _fail(message: str) -> None:
    print(f"lt-bench data: error: {message}", file=sys.stderr)
    raise SystemExit(1)


def _run(fn, args: argparse.Namespace) -> int:
    try:
        return fn(args)
    except USER_ERRORS as err:
        _fail(str(err))
        raise  # unreachable; keeps type checkers happy


def cmd_stats(args: argparse.Namespace) -> int:
    _print_json(split_stats(args.split_file, args.num_classes))
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from lt_bench.data.real import verify_images

    split_dir = args.split_dir or Path("resources/data") / args.dataset
    report = verify_images(args.dataset, split_dir, args.data_root, sample=args.sample,
                           seed=args.seed, params=_params(args.param))
    _print_json(report)
    if not report["ok"]:
        _fail(report["error"])
    return 0


def cmd_prepare(args: argparse.Namespace) -> int:
    from lt_bench.data import get_dataset
    from lt_bench.data.splits import split_stats as stats

    ds = get_dataset(args.dataset, **_params(args.param))
    out = Path(args.out)
    ds.prepare(out)
    _print_json({split: stats(out / f"{split}.txt", ds.num_classes) for split in ds.splits})
    return 0


def cmd_download_images(args: argparse.Namespace) -> int:
    from lt_bench.data.real import download_images

    result = download_images(args.dataset, args.data_root, download_dir=args.download_dir,
                             keep_archive=not args.delete_archive)
    _print_json(result)
    return 0


def _handler(fn):
    return lambda args: _run(fn, args)


def add_data_commands(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``data stats|verify|prepare|download-images`` to a CLI's subparsers."""
    data = subparsers.add_parser(
        "data", help="split lists, image checks and dataset downloads",
        description="Work with datasets: split statistics, image checks, preparing split "
                    "lists and (opt-in) image downloads.")
    sub = data.add_subparsers(dest="data_command", metavar="COMMAND", required=True)

    p = sub.add_parser(
        "stats", help="print statistics of a split list as JSON",
        description="Print n_images, n_classes, max/min count, imbalance ratio and the number "
                    "of many (>100), medium (20-100) and few (<20) classes of an OLTR split "
                    "list ('relative/path label' per line).")
    p.add_argument("split_file", metavar="SPLIT_FILE", help="split list, e.g. resources/data/imagenet_lt/train.txt")
    p.add_argument("--num-classes", type=int, default=None,
                   help="number of classes (default: largest label + 1)")
    p.set_defaults(func=_handler(cmd_stats))

    p = sub.add_parser(
        "verify", help="check that every listed image exists and a sample decodes",
        description="Check that every image in train/val/test.txt exists under the data root "
                    "and that a random sample decodes. Prints a JSON report; exits 1 naming "
                    "missing or corrupt images and the expected layout.")
    p.add_argument("dataset", metavar="DATASET", help="registered dataset name, e.g. imagenet_lt")
    p.add_argument("--data-root", default=None,
                   help="folder the split-list paths are relative to (config key data_root)")
    p.add_argument("--split-dir", default=None,
                   help="folder with train.txt/val.txt/test.txt (default: resources/data/DATASET)")
    p.add_argument("--sample", type=int, default=200, help="images to decode (default: 200)")
    p.add_argument("--seed", type=int, default=0, help="seed of the decode sample (default: 0)")
    p.add_argument("--param", type=parse_param, action="append", metavar="KEY=VALUE",
                   help="dataset parameter (repeatable)")
    p.set_defaults(func=_handler(cmd_verify))

    p = sub.add_parser(
        "prepare", help="write a dataset's verified split lists and classnames.txt",
        description="Write train.txt, val.txt, test.txt and classnames.txt for DATASET into "
                    "--out. Real datasets download their pinned split lists and verify "
                    "checksums and statistics; prints the statistics of each split.")
    p.add_argument("dataset", metavar="DATASET", help="registered dataset name")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (the split dir)")
    p.add_argument("--param", type=parse_param, action="append", metavar="KEY=VALUE",
                   help="dataset parameter, e.g. imb_ratio=50 or split_dir_local=/path (repeatable)")
    p.set_defaults(func=_handler(cmd_prepare))

    p = sub.add_parser(
        "download-images", help="download and extract a dataset's images (Places-LT, iNat2018)",
        description="Download (resumable, checksummed) and safely extract the image archive "
                    "of places_lt or inat2018 into --data-root. ImageNet is never downloaded.")
    p.add_argument("dataset", metavar="DATASET", help="places_lt or inat2018")
    p.add_argument("--data-root", required=True, help="folder to extract the images into")
    p.add_argument("--download-dir", default=None,
                   help="where the archive goes (default: DATA_ROOT/.downloads)")
    p.add_argument("--delete-archive", action="store_true",
                   help="delete the archive after a successful extraction")
    p.set_defaults(func=_handler(cmd_download_images))
    return data


def main(argv: list[str] | None = None) -> int:
    """Standalone entry (``python -m lt_bench.data.cli data …``), mainly for tests."""
    parser = argparse.ArgumentParser(prog="lt-bench")
    add_data_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
