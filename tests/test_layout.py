"""The house rules of docs/architecture.md §2, checked: imports go down the floors, never
up; no two modules import each other (directly or round a circle); no module under
lt_bench/ is a monolith; the CLI's start-up and the workflow's planning import no heavy
library."""

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
    "blocks": 0,
    "data": 1, "backbones": 1, "features": 1, "finetune": 1, "metrics": 1, "prior": 1,
    "config": 2, "methods": 2, "pretrain": 2,
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


def _module_name(path: Path) -> str:
    parts = ("lt_bench",) + path.relative_to(PKG).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """Module → the lt_bench modules it imports, from every ``import`` and ``from … import``
    in its file, function-level ones included (a lazy import still ties the two modules).
    ``from pkg import name`` is an edge to ``pkg.name`` where that is a module, else to
    ``pkg``; a package is its ``__init__``."""
    modules = {_module_name(p): p for p in _module_files()}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        edges = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules
                           else node.module for a in node.names]
            else:
                continue
            edges |= {t for t in targets if t in modules and t != name}
        graph[name] = edges
    return graph


def circle_groups(graph: dict[str, set[str]]) -> list[set[str]]:
    """The groups of modules that import each other round a circle (the strongly connected
    components of more than one module)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    groups: list[set[str]] = []

    def visit(v: str) -> None:  # Tarjan's algorithm
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = set()
            while True:
                w = stack.pop()
                group.add(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(group)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return groups


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One circle per group, as a path ``a → b → … → a``."""
    return [cycle_path(graph, g) for g in circle_groups(graph)]


def cycle_path(graph: dict[str, set[str]], group: set[str]) -> list[str]:
    """A shortest circle through the group's first module, by breadth-first search."""
    start = min(group)
    prev = {start: None}
    queue = [start]
    while queue:
        v = queue.pop(0)
        for w in sorted(graph[v] & group):
            if w == start:
                path = [v]
                while prev[path[-1]] is not None:
                    path.append(prev[path[-1]])
                return path[::-1] + [start]  # path ran back from v to start
            if w not in prev:
                prev[w] = v
                queue.append(w)
    raise AssertionError(f"no circle in {group}")


def test_no_import_circles():
    graph = import_graph()
    groups = circle_groups(graph)
    assert not groups, "import circles: " + "; ".join(
        " → ".join(cycle_path(graph, g)) + (f" (the circle joins {sorted(g)})"
                                           if len(g) > len(cycle_path(graph, g)) - 1 else "")
        for g in groups)


def test_the_circle_finder_names_a_circle_as_a_path():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set(), "e": {"d"}}
    assert import_cycles(graph) == [["a", "b", "c", "a"]]
    assert import_cycles({"a": {"b"}, "b": set()}) == []
    assert import_cycles({"x": {"y"}, "y": {"x"}}) == [["x", "y", "x"]]


#: bare library errors that a user error must not be (docs/architecture.md: user errors are
#: lt_bench.errors.UserError subclasses; an uncaught ValueError is a bug, with a traceback)
BARE_ERRORS = ("ValueError", "KeyError", "FileNotFoundError")


def bare_raises(path: Path) -> list[int]:
    """Lines of ``raise ValueError(...)`` / ``KeyError`` / ``FileNotFoundError`` in ``path``."""
    lines = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Raise) and node.exc is not None:
            exc = node.exc.func if isinstance(node.exc, ast.Call) else node.exc
            if isinstance(exc, ast.Name) and exc.id in BARE_ERRORS:
                lines.append(node.lineno)
    return sorted(lines)


def test_user_errors_are_user_error_subclasses():
    found = {str(p.relative_to(PKG)): n for p in _module_files() if (n := bare_raises(p))}
    bad = [f"{f}:{n}" for f, lines in sorted(found.items()) for n in lines]
    assert not bad, (f"bare {'/'.join(BARE_ERRORS)} raised at {bad}: raise a UserError "
                     "subclass (lt_bench/errors.py) for a user's mistake, AssertionError for a "
                     "caller's bug")


def bare_error_classes(path: Path) -> list[str]:
    """Classes in ``path`` derived from a bare error only (``class E(ValueError)``): raised,
    they would be bugs to the CLI, so a user error's class names a UserError base too."""
    return [node.name for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, ast.ClassDef) and node.bases
            and all(isinstance(b, ast.Name) and b.id in BARE_ERRORS for b in node.bases)]


def test_error_classes_on_a_bare_error_are_user_errors_too():
    bad = [f"{p.relative_to(PKG)}: {c}" for p in _module_files() for c in bare_error_classes(p)]
    assert not bad, (f"error classes derived from {'/'.join(BARE_ERRORS)} only: {bad}; add "
                     "a UserError base (lt_bench/errors.py), e.g. class E(UserError, ValueError)")


def test_the_bare_error_class_scan_finds_them(tmp_path):
    src = tmp_path / "m.py"
    src.write_text("class A(ValueError):\n    pass\n\nclass B(UserError, ValueError):\n"
                   "    pass\n\nclass C(KeyError, FileNotFoundError):\n    pass\n\n"
                   "class D(B):\n    pass\n")
    assert bare_error_classes(src) == ["A", "C"]


def test_the_bare_raise_scan_finds_them(tmp_path):
    src = tmp_path / "m.py"
    src.write_text("def f(x):\n    if x:\n        raise ValueError('no')\n"
                   "    raise KeyError\n\ndef g():\n    raise LookupError('fine')\n")
    assert bare_raises(src) == [3, 4]


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
