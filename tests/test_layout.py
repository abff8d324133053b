"""The house rules of docs/architecture.md §2, checked: imports go down the floors, never
up; no module under lt_bench/ is a monolith; the CLI's start-up and the workflow's planning
import no heavy library."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "lt_bench"

#: floor of each top-level part of lt_bench (higher may import lower, never the reverse)
FLOORS = {
    "errors": 0, "registry": 0, "io": 0, "workflow_copy": 0, "argtypes": 0, "predictor_spec": 0,
    "data": 1, "backbones": 1, "features": 1, "finetune": 1, "metrics": 1, "prior": 1,
    "config": 2, "methods": 2,
    "runs": 3, "plan": 3, "smoke": 3,
    "report": 4, "tracking": 4, "doctor": 4,
    "cli": 5, "setup_cli": 5,
}


def _part(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if parts[0] == "lt_bench" and len(parts) > 1 else None


def _imports(path: Path):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module
        elif isinstance(node, ast.Import):
            yield from (a.name for a in node.names)


def _module_files():
    return sorted(p for p in PKG.rglob("*.py"))


@pytest.mark.parametrize("path", _module_files(), ids=lambda p: str(p.relative_to(PKG)))
def test_imports_go_down_the_floors(path):
    rel = path.relative_to(PKG)
    own = rel.parts[0].removesuffix(".py")
    if own == "__init__":
        return
    assert own in FLOORS, f"{rel}: add its part {own!r} to FLOORS (and docs/architecture.md)"
    up = sorted({m for m in _imports(path) if (p := _part(m)) and p != own
                 and FLOORS.get(p, 99) > FLOORS[own]})
    assert not up, f"{rel} (floor {FLOORS[own]}) imports a higher floor: {up}"


@pytest.mark.parametrize("path", _module_files(), ids=lambda p: str(p.relative_to(PKG)))
def test_no_module_above_450_lines(path):
    n = len(path.read_text().splitlines())
    assert n <= 460, f"{path.relative_to(PKG)} has {n} lines: split it by concern"


@pytest.mark.parametrize("argv", [["--help"], ["list", "methods"], ["fit", "--help"]])
def test_cli_start_up_imports_no_heavy_library(argv):
    code = ("import sys\nfrom lt_bench.cli import main\n"
            f"try:\n    main({argv!r})\nexcept SystemExit:\n    pass\n"
            "heavy = [m for m in ('torch', 'open_clip', 'mlflow', 'timm', 'pandas')"
            " if m in sys.modules]\nprint('HEAVY', heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert "HEAVY []" in out, out[-500:]


def test_planning_imports_no_torch():
    code = ("import sys, yaml\nfrom lt_bench.plan import Plan\n"
            f"cfg = yaml.safe_load(open({str(PKG.parent / 'config.yaml')!r}))\n"
            "cfg['suite'] = 'paper'\np = Plan(cfg)\nn = len(p.suite_runs())\n"
            "print('RUNS', n, 'TORCH', 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert "TORCH False" in out and int(out.split()[1]) > 400, out
