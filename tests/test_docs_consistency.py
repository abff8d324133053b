"""What the README and docs/*.md name in backticks exists in the product: Snakemake rules
(from workflow/rules/*.smk), ``lt-bench`` verbs and their options (from the CLI parser),
config keys (from the config schema) and results files (from the outputs the workflow
and the CLI write). Things legitimately outside the product are in ``EXTERNAL`` with the
reason; nothing else is exempt."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
TICKS = re.compile(r"`([^`\n]+)`")

#: backticked names that are not the product's, each with why
EXTERNAL = {
    "lt-bench/demo": "an MLflow experiment name, not a verb",
    "lt-bench/<suite>": "an MLflow experiment name pattern, not a verb",
    "synchronous=NORMAL": "an SQLite pragma (docs/mlflow.md), not a config key",
    "results/README.md": "a tracked file of the repository, not an output",
    "results/cache/fits/": "the refit cache of lt_bench/runs/reuse.py (not a rule output)",
    "results/cache/fits/<key>/": "the refit cache of lt_bench/runs/reuse.py",
    "results/mlflow/artifacts/": "MLflow's artifact store, written by MLflow itself",
    "results/mlflow/mlflow.db": "MLflow's database, written by MLflow itself",
    "results/mlflow/": "the MLflow store's folder (MLflow writes inside it)",
    "results/compare/": "lt-bench compare's default --out-dir (not a workflow output)",
}


def _docs() -> list[tuple[str, int, str]]:
    """(file, line number, backticked text) of every doc."""
    out = []
    for f in DOCS:
        for i, line in enumerate(f.read_text().splitlines(), 1):
            out += [(f.name, i, m) for m in TICKS.findall(line)]
    return out


def _lines() -> list[tuple[str, int, str]]:
    return [(f.name, i, line) for f in DOCS
            for i, line in enumerate(f.read_text().splitlines(), 1)]


# --- what exists ------------------------------------------------------------------------

def _rules() -> set[str]:
    names = set()
    for f in (REPO / "workflow/rules").glob("*.smk"):
        names |= set(re.findall(r"^\s*rule (\w+):", f.read_text(), re.M))
        names |= set(re.findall(r"^\s*use rule \w+ as (\w+)", f.read_text(), re.M))
    names |= set(re.findall(r"^\s*rule (\w+):", (REPO / "Snakefile").read_text(), re.M))
    return names


def _parser() -> argparse.ArgumentParser:
    from lt_bench.cli import build_parser

    return build_parser()


def _subparsers(p: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for a in p._actions:
        if isinstance(a, argparse._SubParsersAction):
            return dict(a.choices)
    return {}


def _schema() -> dict:
    return yaml.safe_load((REPO / "workflow/schemas/config.schema.yaml").read_text())


def _config_key_exists(path: list[str], schema: dict) -> bool:
    """Whether ``a.b.c`` is a key config.yaml may hold (JSON-schema semantics: a mapping
    without ``additionalProperties: false`` is open below)."""
    node = schema
    for key in path:
        props = node.get("properties") or {}
        extra = node.get("additionalProperties", True)
        if key in props:
            node = props[key]
        elif any(re.fullmatch(p, key) for p in node.get("patternProperties") or {}):
            node = next(v for p, v in node["patternProperties"].items() if re.fullmatch(p, key))
        elif isinstance(extra, dict):
            node = extra
        else:
            return bool(extra) and node.get("type", "object") == "object"
    return True


FILE_SUFFIXES = ("parquet", "json", "txt", "csv", "md", "png", "pdf", "pt", "yaml", "lock")


def _is_code(path: list[str]) -> bool:
    """``prompts.text_classname``: a function of an lt_bench module, not a config key;
    ``prior.parquet``: a file name, not a config key."""
    if len(path) == 2 and path[1] in FILE_SUFFIXES:
        return True
    for f in (REPO / "lt_bench").rglob(f"{path[0]}.py"):
        if re.search(rf"^(def|class) {re.escape(path[1])}\b|^{re.escape(path[1])}\s*[:=]",
                     f.read_text(), re.M):
            return True
    return False


def _planned_files() -> set[str]:
    """Every path below results/ the workflow plans for any shipped suite, and every rule
    output pattern (its wildcards as ``X``)."""
    from lt_bench.plan import Plan

    config = yaml.safe_load((REPO / "config.yaml").read_text())
    out = set()
    for suite in config["suites"]:
        plan = Plan({**config, "suite": suite, "data_root": "/data"})
        out |= set(plan.final_targets()) | set(plan.suite_runs())
        for ds in plan.suite.datasets:
            for bb in plan.suite.backbones:
                out |= set(plan.features(ds, bb))
    for f in (REPO / "workflow/rules").glob("*.smk"):
        for p in re.findall(r"""["'](results/[^"'\s]*)["']""", f.read_text()):
            out.add(re.sub(r"\{\{?[^{}]*\}\}?", "X", p))
    return out


def _expand(doc_path: str) -> list[str]:
    """A doc's path with its brace alternatives expanded (``main.{csv,md}``)."""
    m = re.search(r"\{([^{}]*,[^{}]*)\}", doc_path)
    if m:
        return [x for alt in m.group(1).split(",")
                for x in _expand(doc_path[:m.start()] + alt + doc_path[m.end():])]
    return [doc_path]


def _file_exists(doc_path: str, planned: set[str]) -> bool:
    """Every expansion of ``doc_path`` (placeholders ``{x}``, ``<x>``, ``*``, ``…`` match
    any name) is a planned file, or a folder holding one."""
    for path in _expand(doc_path.rstrip("/")):
        rx = re.compile(re.sub(r"\\\{[^}]*\\\}|<[^>]*>|\\\*|…", "[^/]+", re.escape(path))
                        + "(/.*)?")
        if not any(rx.fullmatch(p) for p in planned):
            return False
    return True


# --- the checks -------------------------------------------------------------------------

def test_every_lt_bench_verb_and_option_named_exists():
    verbs = _subparsers(_parser())
    bad = []
    for f, i, text in _docs():
        if not text.startswith("lt-bench ") or text in EXTERNAL:
            continue
        words = text.split()[1:]
        if not words or words[0].startswith("-"):
            continue  # `lt-bench --help`, `lt-bench -v …`: the top-level parser's flags
        verb = words[0]
        if verb not in verbs:
            bad.append(f"{f}:{i}: `{text}`: no verb {verb!r}")
            continue
        parser = verbs[verb]
        rest = words[1:]
        sub = _subparsers(parser)
        if sub and rest and not rest[0].startswith("-"):
            for alt in rest[0].split("|"):
                if alt not in sub:
                    bad.append(f"{f}:{i}: `{text}`: no `{verb} {alt}`")
            parser = sub.get(rest[0].split("|")[0], parser)
        for w in rest:
            opt = w.split("=")[0]
            if opt.startswith("--") and opt not in parser._option_string_actions:
                bad.append(f"{f}:{i}: `{text}`: `lt-bench {verb}` has no option {opt}")
    assert not bad, "\n".join(bad)


def test_every_rule_named_exists():
    """A name is taken for a rule where the text says so (``rule X``, ``X rule``) or where
    it sits in the first column of a table whose first header is "stage" or "rule"."""
    rules = _rules()
    bad = []
    in_table = False
    for f, i, line in _lines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")] \
            if line.startswith("|") else []
        if cells and cells[0].lower() in ("stage", "rule"):
            in_table = True
            continue
        if not cells:
            in_table = False
        names = set(re.findall(r"\brules? `(\w+)`", line))
        names |= set(re.findall(r"`rule (\w+)`", line))
        names |= set(re.findall(r"`(\w+)` rules?\b", line))
        if in_table and cells and not set(cells[0]) <= set("-: "):
            # the first column names rules; plain words (e.g. "tables, figures") are stages
            names |= set(TICKS.findall(cells[0]))
        for n in names:
            if n not in rules:
                bad.append(f"{f}:{i}: `{n}` is named as a rule; rules: {sorted(rules)}")
    assert not bad, "\n".join(bad)


def test_every_config_key_named_exists():
    schema = _schema()
    top = set(schema["properties"])
    bad = []
    for f, i, text in _docs():
        if text in EXTERNAL:
            continue
        # dotted keys (`report.figure_methods`) and --config assignments (`suite=paper`)
        for m in re.finditer(r"(?:^|\s)([a-z_]+(?:\.[a-z_0-9]+)+)\b", text):
            path = m.group(1).split(".")
            if path[0] in top and not _is_code(path) and not _config_key_exists(path, schema):
                bad.append(f"{f}:{i}: `{text}`: config key {m.group(1)} not in the schema")
        if text.startswith("--config ") or re.fullmatch(r"[a-z_]+=\S+", text):
            for key in re.findall(r"([a-z_]+)=", text):
                if key not in top:
                    bad.append(f"{f}:{i}: `{text}`: {key} is not a config key")
    assert not bad, "\n".join(bad)


def test_every_results_file_named_is_planned():
    planned = _planned_files()
    bad = [f"{f}:{i}: `{text}` is no output the workflow plans" for f, i, text in _docs()
           if text.startswith("results/") and text not in EXTERNAL
           and not _file_exists(text, planned)]
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("text, ok", [
    ("results/tables/main.{csv,md,tex,html}", True),
    ("results/tables/mian.csv", False),
    ("results/runs/{dataset}/{backbone}/{method}/seed{seed}/", True),
    ("results/figures/{dataset}/dxp_{method}.{png,pdf}", True),
    ("results/figures/{dataset}/dxp_{method}.svg", False),
    ("results/tables/", True),
])
def test_the_file_check_itself(text, ok):
    assert _file_exists(text, _planned_files()) == ok


def test_the_rule_and_verb_checks_catch_a_stale_name():
    assert "backdoor" not in _rules() and "combine_runs" in _rules()
    verbs = _subparsers(_parser())
    assert "compare" in verbs and "backdoor" not in verbs
    assert _config_key_exists(["methods", "ldam", "drw_epoch"], _schema())
    assert _config_key_exists(["method_overrides", "inat2018", "epochs"], _schema())
    assert not _config_key_exists(["report", "figure_method"], _schema())
    assert _is_code(["prompts", "text_classname"]) and not _is_code(["report", "x"])
