"""``lt-bench doctor`` and ``lt-bench fetch-weights``: before the first real run (README,
"Before your first full run")."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from lt_bench.errors import EXIT_USER_ERROR, UserError


def load_config(configfile: str, overrides: list[str] | None, suite: str | None
                ) -> dict[str, Any]:
    """The workflow's config as Snakemake would see it: the file, then ``--config
    KEY=VALUE`` overrides (values parsed as YAML, as Snakemake does), then ``--suite``."""
    import yaml

    path = Path(configfile)
    if not path.is_file():
        raise UserError(f"--configfile {configfile}: not found; expected the workflow's "
                        "config.yaml (run from the repository root)")
    config = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    for item in overrides or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UserError(f"--config {item!r}: expected KEY=VALUE, e.g. data_root=/datasets")
        config[key] = yaml.safe_load(value)
    if suite:
        config["suite"] = suite
    from lt_bench.config import ConfigError, resolve_suite

    try:
        resolve_suite(config)
    except ConfigError as e:
        raise UserError(f"{configfile}: {e}") from None
    return config


def cmd_doctor(args) -> int:
    from lt_bench.doctor import failed, format_table, run_doctor

    config = load_config(args.configfile, args.config, args.suite)
    checks = run_doctor(config, profile=Path(args.profile) if args.profile else None,
                        results=Path(args.results), tracking_uri=args.tracking_uri,
                        lock_file=Path(args.lock) if args.lock else None, sample=args.sample)
    print(format_table(checks))
    bad = failed(checks)
    print(f"\n{'some checks failed: fix the ✗ lines first' if bad else 'all checks passed'} "
          f"(suite {config.get('suite')})")
    return EXIT_USER_ERROR if bad else 0


def cmd_fetch_weights(args) -> int:
    from lt_bench.backbones.weights import fetch_weights, lock_path, read_lock

    config = load_config(args.configfile, args.config, args.suite)
    from lt_bench.config import resolve_suite

    backbones = resolve_suite(config).backbones
    lock = Path(args.lock) if args.lock else lock_path()
    entries = fetch_weights(backbones, lock, cache_dir=args.cache_dir,
                            download=not args.offline, declared=config.get("backbones"))
    for name in backbones:
        e = read_lock(lock).get(name)
        print(f"{name:22s} {e.sha256 if e else '(toy: pre-trained by the pipeline)'}"
              f"  {e.file if e else ''}")
    print(f"wrote {lock} ({len(entries)} backbones)", file=sys.stderr)
    return 0


def _common(s: argparse.ArgumentParser) -> None:
    s.add_argument("--suite", help="suite of the config (default: the config's `suite`)")
    s.add_argument("--configfile", default="config.yaml")
    s.add_argument("--config", nargs="*", metavar="KEY=VALUE",
                   help="overrides as for snakemake --config (e.g. data_root=/datasets)")
    s.add_argument("--lock", help="weights lock (default: $LT_BENCH_WEIGHTS_LOCK or "
                                  "resources/weights.lock)")


def add_setup_commands(sub) -> None:
    s = sub.add_parser("doctor", help="check data, weights, GPUs, disk, SLURM and tracking "
                                      "before a real run")
    _common(s)
    s.add_argument("--profile", help="Snakemake profile folder (a SLURM profile is checked "
                                     "against sinfo/sacctmgr)")
    s.add_argument("--results", default="results", help="results folder (disk check)")
    s.add_argument("--tracking-uri", help="default: $MLFLOW_TRACKING_URI, else the project's "
                                          "SQLite store")
    s.add_argument("--sample", type=int, default=50, help="images decoded per split")
    s.set_defaults(func=cmd_doctor)

    s = sub.add_parser("fetch-weights", help="download every backbone's weights of a suite "
                                             "and pin them in resources/weights.lock")
    _common(s)
    s.add_argument("--cache-dir", help="where to put them (default: the hub cache, HF_HOME)")
    s.add_argument("--offline", action="store_true",
                   help="only pin what is already here (no download)")
    s.set_defaults(func=cmd_fetch_weights)
