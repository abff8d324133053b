"""One line of ``lt-bench doctor``'s table."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

OK, FAIL, WARN = "✓", "✗", "!"


@dataclass
class Check:
    area: str
    name: str
    status: str
    detail: str
    fix: str = ""


def read_yaml(path: Path) -> dict:
    import yaml

    return yaml.safe_load(path.read_text(encoding="utf-8")) or {}
