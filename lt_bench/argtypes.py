"""Argument types and small helpers shared by every CLI verb (one convention: the
parameters of what a verb acts on are one JSON object, ``--params '{...}'``)."""

from __future__ import annotations

import argparse
import json


def _json_of(text: str, kind: type, noun: str, example: str, shown: str) -> dict | list:
    """``text`` parsed as a JSON ``noun`` (Python ``kind``), or an argparse error quoting
    ``shown``."""
    try:
        v = json.loads(text)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"not valid JSON ({e}): {shown!r}") from None
    if not isinstance(v, kind):
        raise argparse.ArgumentTypeError(f"expected a JSON {noun} like '{example}', "
                                         f"got {shown!r}")
    return v


def json_object(s: str) -> dict:
    """``--params`` values: a JSON object."""
    return _json_of(s, dict, "object", '{"key": 1}', s)


def json_list(s: str) -> list:
    """``--runs`` values: a JSON list (or ``@FILE`` holding one)."""
    text = s
    if s.startswith("@"):
        try:
            text = open(s[1:], encoding="utf-8").read()
        except OSError as e:
            raise argparse.ArgumentTypeError(f"cannot read {s[1:]}: {e.strerror}") from None
    return _json_of(text, list, "list", '[{"key": 1}]', s[:200])


def name_path(s: str) -> tuple[str, str]:
    if "=" not in s:
        raise argparse.ArgumentTypeError(f"expected NAME=PATH, got {s!r}")
    k, v = s.split("=", 1)
    return k, v


#: numpy's and torch's seeds are unsigned 32-bit
SEED_LIMIT = 2**32


def seed(s: str) -> int:
    """``--seed`` values: an integer in [0, 2**32) (argparse names the option)."""
    try:
        v = int(s)
    except ValueError:
        v = -1
    if not 0 <= v < SEED_LIMIT:
        raise argparse.ArgumentTypeError(f"expected an integer in [0, 2**32), got {s!r}")
    return v


def workers(s: str) -> int | str:
    if s == "auto":
        return "auto"
    try:
        return max(0, int(s))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a number of workers or 'auto', got {s!r}") from None


def set_threads(n: int | None) -> None:
    if n:
        import torch

        torch.set_num_threads(n)


def print_json(obj) -> None:
    print(json.dumps(obj, default=str))
