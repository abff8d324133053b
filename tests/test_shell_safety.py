"""Config values never run as shell code: every rule's shell command quotes every value
through one mechanism (Snakemake's ``{x:q}``, i.e. shlex.quote), and names that become
paths (suite, dataset, backbone, method) are held to a safe pattern by the schema.

The hostile value holds ``$(touch X)``, backticks, ``;``, ``'`` and ``"``; it goes into
every free-text config value (data_root, data_dirs, the datasets' path/URL parameters, a
method's free-form parameters). The dry run prints every rule's command (``-n -p``): each
must parse into the intended argv with the hostile value whole and inside single quotes.
Two real runs then show the value arrives intact (one works, one stops with one line) and
that X is never created."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import REPO, copy_workflow

TINY = REPO / "tests/data/tiny_config.yaml"
RULES = sorted((REPO / "workflow/rules").glob("*.smk"))


def hostile(marker: Path) -> str:
    return f"it's \"q\" $(touch {marker}) `touch {marker}` ; touch {marker} ;"


def _shell_blocks(text: str) -> dict[str, str]:
    """``rule name -> its shell: string`` (the string literals that follow ``shell:``)."""
    out, rule, lines = {}, None, text.splitlines()
    i = 0
    while i < len(lines):
        m = re.match(r"\s*(?:rule|checkpoint)\s+(\w+)\s*:", lines[i])
        if m:
            rule = m.group(1)
        if lines[i].strip() == "shell:":
            parts = []
            i += 1
            while i < len(lines) and (lines[i].strip().startswith(('"', "#")) or not
                                      lines[i].strip()):
                s = lines[i].strip()
                if s.startswith('"'):
                    parts.append(s)
                i += 1
            out[rule] = " ".join(parts)
            continue
        i += 1
    return out


def test_every_field_of_every_shell_command_is_quoted_with_q():
    """The convention itself (common.smk): each ``{...}`` of a rule's shell ends in ``:q``."""
    blocks = {r: s for f in RULES for r, s in _shell_blocks(f.read_text()).items()}
    assert {"ingest_mlflow", "extract_features", "prepare_dataset", "fit_heads",
            "finetune", "aggregate"} <= set(blocks)
    bad = {r: [f for f in re.findall(r"(?<!\{)\{([^{}]+)\}(?!\})", s) if not f.endswith(":q")]
           for r, s in blocks.items()}
    assert not {r: f for r, f in bad.items() if f}, bad


def _inside_single_quotes(cmd: str, needle: str) -> bool:
    """Is every occurrence of ``needle`` in ``cmd`` inside a single-quoted word (where bash
    expands nothing)? A small scanner of bash quoting: '...' and "..." and backslash."""
    state, i, hits = None, 0, []
    while i < len(cmd):
        if cmd.startswith(needle, i):
            hits.append(state == "'")
        c = cmd[i]
        if state == "'":
            state = None if c == "'" else state
        elif state == '"':
            if c == "\\":
                i += 1
            elif c == '"':
                state = None
        elif c == "\\":
            i += 1
        elif c in "'\"":
            state = c
        i += 1
    return bool(hits) and all(hits)


def _commands(dry_run: str) -> dict[str, list[str]]:
    """rule -> the shell commands the dry run printed for its jobs."""
    out: dict[str, list[str]] = {}
    rule = None
    for line in dry_run.splitlines():
        m = re.match(r"(?:local)?rule (\w+):", line)
        if m:
            rule = m.group(1)
        elif line.startswith("Shell command: ") and line != "Shell command: None":  # run:
            out.setdefault(rule, []).append(line[len("Shell command: "):])
    return out


def _argv(cmd: str, program: str) -> list[str]:
    """The argv of ``program`` in a command line (up to the next ; > or |)."""
    lex = shlex.shlex(cmd, posix=True, punctuation_chars=True)
    lex.whitespace_split = True
    tokens = list(lex)
    start = tokens.index(program)
    end = next((j for j in range(start, len(tokens)) if tokens[j] in (";", ">", ">>", "2>",
                                                                      "2>>", "|")), None)
    return tokens[start:end]


def _evil_config(tmp_path: Path, value: str) -> tuple[Path, dict]:
    cfg = yaml.safe_load(TINY.read_text())
    root = tmp_path / value
    cfg.update(data_root=str(root), data_dirs={"places_lt": value, "imagenet_lt": value})
    cfg["datasets"].update(
        imagenet_lt={"split_dir_local": str(root), "split_base_url": f"http://x/{value}"},
        places_lt={"split_dir_local": str(root)},
        cifar100_lt={"download_root": str(root)})
    cfg["methods"]["adaptformer_la"]["loss_params"] = {"note": value}
    path = tmp_path / "evil.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path, cfg


def _snakemake(wf: Path, config: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "snakemake", *args, "--cores", "1",
                           "--configfile", str(config)], cwd=wf, capture_output=True, text=True)


@pytest.mark.slow
def test_hostile_config_values_reach_every_rule_as_one_quoted_argument(tmp_path):
    marker = tmp_path / "PWNED"
    value = hostile(marker)
    config, cfg = _evil_config(tmp_path, value)
    wf = copy_workflow(tmp_path / "wf")
    # the tiny suite's whole DAG plus the real-image rules of a real dataset
    r = _snakemake(wf, config, "all", "resources/data/places_lt/images_verified.json",
                   "results/features/places_lt/clip_vit_b16/train.parquet",
                   "resources/data/cifar100_lt/train.txt", "-n", "-p")
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-3000:]
    cmds = _commands(out)
    shell_rules = {rule for f in RULES for rule in _shell_blocks(f.read_text())}
    shell_rules |= {"fit_member_seeds", "combine_runs"}  # `use rule ... as ...`: same command
    assert shell_rules <= set(cmds), shell_rules - set(cmds)
    carried = 0
    for rule, lines in cmds.items():
        for cmd in lines:
            argv = _argv(cmd, "lt-bench")  # parses: quoting is balanced
            assert argv[1], (rule, cmd)
            if "touch" in cmd:  # the hostile value: every copy in single quotes, whole
                assert _inside_single_quotes(cmd, "touch"), (rule, cmd)
                assert _inside_single_quotes(cmd, "`"), (rule, cmd)
                in_json = json.dumps(value)[1:-1]  # inside a JSON argument: " escaped
                assert any(value in a or in_json in a for a in argv), (rule, cmd)
                carried += 1
            for flag in ("--params", "--dataset-params"):
                if flag in argv:  # JSON arrives as one argument and parses
                    json.loads(argv[argv.index(flag) + 1])
    assert carried >= 5, cmds.keys()  # prepare x3, verify, extract, finetune
    [verify] = cmds["verify_images"]
    argv = _argv(verify, "lt-bench")
    assert argv[argv.index("--data-root") + 1] == f"{cfg['data_root']}/{value}"
    assert json.loads(argv[argv.index("--params") + 1]) == cfg["datasets"]["places_lt"]
    [ft, *_] = cmds["finetune"]
    hp = json.loads(_argv(ft, "lt-bench")[_argv(ft, "lt-bench").index("--params") + 1])
    assert hp["loss_params"] == {"note": value}
    assert not marker.exists()

    # real runs: one that works with the hostile value, one that stops with one line
    images = Path(cfg["data_root"]) / value
    for split, rel in (("train", "train/c/a.jpg"), ("val", "val/c/b.jpg"),
                       ("test", "val/c/b.jpg")):
        (images / rel).parent.mkdir(parents=True, exist_ok=True)
        from PIL import Image

        Image.new("RGB", (8, 8), (10, 20, 30)).save(images / rel)
        lists = wf / "resources/data/places_lt"
        lists.mkdir(parents=True, exist_ok=True)
        (lists / f"{split}.txt").write_text(f"{rel} 0\n")
    r = _snakemake(wf, config, "resources/data/places_lt/images_verified.json")
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    report = json.loads((wf / "resources/data/places_lt/images_verified.json").read_text())
    assert report["ok"] and report["image_root"] == str(images)
    log = (wf / "logs/verify_images/places_lt.log").read_text()
    assert log.splitlines()[0] == f"images of places_lt: data_root + data_dirs.places_lt = " \
                                  f"{images}"

    r = _snakemake(wf, config, "resources/data/imagenet_lt/train.txt")
    assert r.returncode != 0
    err = (wf / "logs/prepare_dataset/imagenet_lt.log").read_text().strip().splitlines()
    assert len(err) == 1 and "split_dir_local: ImageNet_LT_train.txt not found" in err[0]
    assert str(Path(cfg["data_root"]) / "ImageNet_LT_train.txt") in err[0]
    assert not marker.exists()


@pytest.mark.slow
@pytest.mark.parametrize("mutate,needle", [
    (lambda c, v: c.update(suite=v, suites={v: c["suites"]["tiny"]}), "config.yaml suite: "),
    (lambda c, v: c["suites"]["tiny"]["methods"].append(v), "config.yaml suites.tiny.methods."),
    (lambda c, v: c["suites"]["tiny"]["backbones"].append(v),
     "config.yaml suites.tiny.backbones."),
    (lambda c, v: c["suites"]["tiny"].update(datasets=[v]), "config.yaml suites.tiny.datasets."),
    (lambda c, v: c.update(report={"figure_methods": [v]}),
     "config.yaml report.figure_methods."),
])
def test_hostile_names_are_refused_by_the_schema_in_one_line(tmp_path, mutate, needle):
    marker = tmp_path / "PWNED"
    cfg = yaml.safe_load(TINY.read_text())
    mutate(cfg, hostile(marker))
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(cfg))
    r = _snakemake(copy_workflow(tmp_path / "wf"), config, "-n")
    out = r.stdout + r.stderr
    assert r.returncode != 0
    line = next(ln for ln in out.splitlines() if ln.startswith("config.yaml "))
    assert needle in line and "does not match '^[A-Za-z0-9][A-Za-z0-9_.-]*$'" in line, out
    assert not marker.exists()
