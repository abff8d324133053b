"""A user's own dataset from OLTR split lists (``type: oltr_lists``, lt_bench/data/oltr.py):
the same integrity checks as the built-in datasets, the documented val policy, D-groups from
its train counts, prompts from its class names; declared in the config it flows into the
plan, doctor, and the workflow (a dry run with a declared backbone beside it, and its smoke
run's DAG)."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import REPO, copy_workflow
from PIL import Image

from lt_bench.cli import main
from lt_bench.config import ConfigError, resolve_suite
from lt_bench.data import dataset_class, get_dataset
from lt_bench.data.base import DatasetParamError
from lt_bench.data.splits import (
    SplitFormatError,
    SplitIntegrityError,
    group_of_count,
    read_split,
    split_stats,
)
from lt_bench.doctor import FAIL, OK, check_data
from lt_bench.plan import Plan

#: train images per class (a long tail: many, medium, few), K = 4
TRAIN = [120, 40, 6, 2]
NAMES = ["snow leopard", "red_panda", "okapi", "saola"]


def user_lists(root: Path, *, val: bool = True, images: bool = False) -> Path:
    """A user's split folder (and, with ``images``, the images beside it in ``images/``)."""
    d = root / "splits"
    d.mkdir(parents=True, exist_ok=True)
    rows = {"train": [(f"train/{c}/{i}.jpg", c) for c, n in enumerate(TRAIN) for i in range(n)],
            "test": [(f"test/{c}/{i}.jpg", c) for c in range(4) for i in range(3)]}
    if val:
        rows["val"] = [(f"val/{c}/{i}.jpg", c) for c in range(4) for i in range(2)]
    for split, lines in rows.items():
        (d / f"{split}.txt").write_text("".join(f"{p} {y}\n" for p, y in lines))
        if images:
            for p, _ in lines:
                (root / "images" / p).parent.mkdir(parents=True, exist_ok=True)
                Image.new("RGB", (8, 8), (10, 20, 30)).save(root / "images" / p, "JPEG")
    (d / "classnames.txt").write_text("\n".join(NAMES) + "\n")
    return d


def _ds(split_dir: Path, **params):
    return get_dataset("my_lt", type="oltr_lists", split_dir=str(split_dir), **params)


def test_prepare_writes_the_users_lists_checked(tmp_path):
    src = user_lists(tmp_path)
    ds = _ds(src)
    assert ds.name == "my_lt" and not ds.val_overlaps_train
    out = tmp_path / "prepared"
    ds.prepare(out)
    for split in ("train", "val", "test"):
        assert read_split(out / f"{split}.txt") == read_split(src / f"{split}.txt")
    assert (out / "classnames.txt").read_text().splitlines() == NAMES
    check = json.loads((out / "splits_check.json").read_text())
    assert check["num_classes"] == 4 and check["val_in_train"] == 0
    # D-groups from the user's train counts: many / medium / few / few
    stats = split_stats(out / "train.txt", 4)
    assert (stats["many"], stats["medium"], stats["few"]) == (1, 1, 2)
    assert [group_of_count(n) for n in TRAIN] == ["many", "medium", "few", "few"]


def test_prompts_come_from_the_users_class_names(tmp_path, capsys):
    out = tmp_path / "prepared"
    _ds(user_lists(tmp_path)).prepare(out)
    assert main(["prompts", "my_lt", "--split-dir", str(out), "--backbone", "toyclip0"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert [c["head_init"] for c in report["classes"]] == [
        ["a photo of a snow leopard."], ["a photo of a red panda."], ["a photo of a okapi."],
        ["a photo of a saola."]]


@pytest.mark.parametrize("policy", ["train_subset", "holdout"])
def test_without_val_a_class_balanced_val_is_carved_from_train(tmp_path, policy):
    src = user_lists(tmp_path, val=False)
    ds = _ds(src, val_policy=policy, val_per_class=5, seed=3)
    assert ds.val_overlaps_train == (policy == "train_subset")
    out = tmp_path / "prepared"
    ds.prepare(out)
    train, val = read_split(out / "train.txt"), read_split(out / "val.txt")
    user_train = read_split(src / "train.txt")
    val_counts = np.bincount(val[1], minlength=4)
    if policy == "train_subset":
        assert train == user_train  # the user's train list, and so its D-groups, unchanged
        assert set(val[0]) <= set(train[0])
        assert val_counts.tolist() == [min(5, n) for n in TRAIN]
    else:
        assert not set(val[0]) & set(train[0])
        assert sorted(train[0] + val[0]) == sorted(user_train[0])
        # at most 5 a class, and every class keeps a training image
        assert val_counts.tolist() == [min(5, n - 1) for n in TRAIN]
        assert np.bincount(train[1], minlength=4).min() >= 1
    # the same seed draws the same val
    again = tmp_path / "again"
    _ds(src, val_policy=policy, val_per_class=5, seed=3).prepare(again)
    assert read_split(again / "val.txt") == val


def _edit(src: Path, name: str, text: str) -> None:
    (src / name).write_text(text)


@pytest.mark.parametrize("edit,error,says", [
    (lambda s: _edit(s, "train.txt", (s / "train.txt").read_text() + "train/0/0.jpg 0\n"),
     SplitIntegrityError, "train.txt: 1 path(s) listed more than once"),
    (lambda s: _edit(s, "test.txt", (s / "test.txt").read_text() + "train/1/0.jpg 1\n"),
     SplitIntegrityError, "are in both train.txt and test.txt"),
    (lambda s: _edit(s, "train.txt", "".join(
        ln + "\n" for ln in (s / "train.txt").read_text().splitlines() if
        not ln.endswith(" 3"))), SplitIntegrityError, "1 class(es) have no training image: 3 "
                                                       "(saola)"),
    (lambda s: _edit(s, "test.txt", "test/0/0.jpg 0\ntest/0/1.jpg 7\n"), SplitFormatError,
     "test.txt, line 2: label 7 is out of range [0, 4)"),
    (lambda s: (s / "test.txt").unlink(), DatasetParamError, "test.txt not found"),
])
def test_the_built_in_integrity_checks_name_the_users_lists(tmp_path, edit, error, says):
    src = user_lists(tmp_path)
    edit(src)
    out = tmp_path / "prepared"
    with pytest.raises(error) as e:
        _ds(src).prepare(out)
    assert says in str(e.value) and "\n" not in str(e.value)
    assert str(src) in str(e.value)  # the user's folder, not only our copy
    assert not (out / "train.txt").exists()  # nothing a later stage could read


def test_image_root_is_the_declared_folder_or_data_root(tmp_path):
    ds = _ds(tmp_path, image_root=str(tmp_path))
    assert ds.image_root(tmp_path / "x", None) == tmp_path
    assert _ds(tmp_path).image_root(tmp_path / "x", str(tmp_path)) == tmp_path
    with pytest.raises(Exception, match=r"set datasets.my_lt.image_root"):
        _ds(tmp_path).image_root(tmp_path / "x", None)
    with pytest.raises(Exception, match=r"image root '.*nowhere' \(datasets.my_lt.image_root\) "
                                        "is not a directory"):
        _ds(tmp_path, image_root=str(tmp_path / "nowhere")).image_root(tmp_path, None)


@pytest.mark.parametrize("name,params,says", [
    ("toy", {"type": "oltr_lists", "split_dir": "x"},
     "datasets.toy: type 'oltr_lists' declares a new dataset, but 'toy' is a registered "
     "dataset (built-in)"),
    ("My-LT", {"type": "oltr_lists", "split_dir": "x"}, "lower-case letters, digits and '_'"),
    ("my_lt", {"type": "oltr_list", "split_dir": "x"}, "unknown type 'oltr_list'; valid types"),
    ("my_lt", {"type": "oltr_lists"}, "split_dir is required"),
    ("my_lt", {"type": "oltr_lists", "split_dir": "x", "val_policy": "none"},
     "val_policy 'none' is not one of train_subset, holdout"),
])
def test_a_bad_declaration_is_one_line(name, params, says):
    with pytest.raises(DatasetParamError, match=re.escape(says)):
        get_dataset(name, **params)


def _config(tmp_path: Path, split_dir: Path, **dataset) -> dict:
    cfg = yaml.safe_load((REPO / "tests/data/tiny_config.yaml").read_text())
    cfg["datasets"]["my_lt"] = {"type": "oltr_lists", "split_dir": str(split_dir), **dataset}
    cfg["suites"]["tiny"]["datasets"] = ["toy", "my_lt"]
    return cfg


def test_the_plan_knows_a_declared_dataset(tmp_path):
    src = user_lists(tmp_path, val=False)
    plan = Plan(_config(tmp_path, src))
    assert plan.suite.datasets == ["toy", "my_lt"]
    assert plan.reads_data_root("my_lt") and "my_lt" in plan.real_image_datasets()
    assert not plan.may_tune("my_lt")  # val carved as a subset of train: nothing tuned on it
    assert plan.group_counts_file("my_lt") is None  # D-groups from its own train counts
    assert dataset_class("my_lt", plan.dataset_params("my_lt")).name == "my_lt"
    assert {r[0] for r in plan.per_backbone_runs()} == {"toy", "my_lt"}
    plan = Plan(_config(tmp_path, src, val_policy="holdout"))
    assert plan.may_tune("my_lt")
    with pytest.raises(ConfigError, match="datasets.toy: type 'oltr_lists' declares a new"):
        cfg = _config(tmp_path, src)
        cfg["datasets"]["toy"]["type"] = "oltr_lists"
        resolve_suite(cfg)


def test_doctor_samples_the_users_images(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    src = user_lists(tmp_path, images=True)
    plan = Plan(_config(tmp_path, src, image_root=str(tmp_path / "images")))
    checks = {c.name: c for c in check_data(plan, "my_lt", tmp_path / "results", 8)}
    assert checks["my_lt split lists"].status == OK and str(src) in checks[
        "my_lt split lists"].detail
    for split in ("train", "val", "test"):
        c = checks[f"my_lt {split} images"]
        assert c.status == OK and "over 4 classes decode" in c.detail, c
    (tmp_path / "images" / "test" / "2" / "1.jpg").unlink()
    plan = Plan(_config(tmp_path, src, image_root=str(tmp_path / "images")))
    checks = {c.name: c for c in check_data(plan, "my_lt", tmp_path / "results", 50)}
    assert checks["my_lt test images"].status == FAIL
    plan = Plan(_config(tmp_path, src, image_root=str(tmp_path / "nowhere")))
    [*_, bad] = check_data(plan, "my_lt", tmp_path / "results", 8)
    assert bad.status == FAIL and "datasets.my_lt.image_root" in bad.fix


# --- the workflow: a declared dataset and a declared backbone, dry runs ---------------------

def _commands(text: str) -> dict[str, list[list[str]]]:
    """rule -> the argv of `lt-bench` in each printed shell command (`-n -p`)."""
    out: dict[str, list[list[str]]] = {}
    rule = None
    for line in text.splitlines():
        m = re.match(r"(?:local)?rule (\w+):", line)
        if m:
            rule = m.group(1)
        elif line.startswith("Shell command: ") and "lt-bench " in line:
            cmd = line[len("Shell command: "):]
            tokens = shlex.split(cmd[cmd.index("lt-bench "):].split(" 2>")[0])
            out.setdefault(rule, []).append(tokens)
    return out


def _snakemake(wf: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "snakemake", "-n", "-p", "--cores", "1",
                           "--configfile", "byo.yaml", *args], cwd=wf, capture_output=True,
                          text=True, timeout=600)


def test_workflow_plans_a_declared_backbone_and_dataset(tmp_path):
    """The toy CLIP's checkpoint declared as a user's file (relative to the project) and a
    user's lists: every job of both is planned, the declaration reaches extraction and
    fine-tuning as one quoted JSON argument, and the smoke run plans the same jobs."""
    wf = copy_workflow(tmp_path / "wf")
    (wf / "models").mkdir()
    (wf / "models" / "my clip.pt").write_bytes(b"weights")  # a space: quoted, not split
    src = user_lists(tmp_path / "user", val=False)
    cfg = _config(tmp_path, src, image_root=str(tmp_path / "user" / "images"))
    declaration = {"library": "open_clip", "model": "lt-toy-vit-p8",
                   "pretrained": "models/my clip.pt", "templates": "toy"}
    cfg["backbones"] = {"my_clip": declaration}
    cfg["suites"]["tiny"]["backbones"] = ["toyclip0", "my_clip"]
    (wf / "byo.yaml").write_text(yaml.safe_dump(cfg))
    r = _snakemake(wf)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    cmds = _commands(r.stdout)
    extract = {(a[a.index("--dataset") + 1], a[a.index("--backbone") + 1]): a
               for a in cmds["extract_features"]}
    assert set(extract) == {(d, b) for d in ("toy", "my_lt") for b in ("toyclip0", "my_clip")}
    for (d, b), argv in extract.items():
        if b == "my_clip":
            assert json.loads(argv[argv.index("--backbone-spec") + 1]) == declaration
            assert argv[argv.index("--checkpoint") + 1] == "models/my clip.pt"  # an input
        else:
            assert "--backbone-spec" not in argv
        if d == "my_lt":
            params = json.loads(argv[argv.index("--dataset-params") + 1])
            assert params == cfg["datasets"]["my_lt"]
    for argv in cmds["finetune"]:
        if argv[argv.index("--backbone") + 1] == "my_clip":
            assert json.loads(argv[argv.index("--backbone-spec") + 1]) == declaration
    [prepare] = [a for a in cmds["prepare_dataset"] if a[2] == "my_lt"]
    assert json.loads(prepare[prepare.index("--params") + 1])["type"] == "oltr_lists"
    assert any(a[2] == "my_lt" for a in cmds["verify_images"])  # the user's images checked
    assert "pretrain_toy_clip" in cmds and all(a[2] == "toyclip0"
                                               for a in cmds["pretrain_toy_clip"])
    full = r.stdout[r.stdout.index("Job stats:"):].split("\n\n")[0]

    r = _snakemake(wf, "--config", "smoke=true")
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    assert r.stdout[r.stdout.index("Job stats:"):].split("\n\n")[0] == full
    smoke = _commands(r.stdout)
    [argv] = [a for a in smoke["extract_features"] if "my_clip" in a and "my_lt" in a]
    # the smoke run works in results-smoke/: the declared file is the project's
    want = str(wf / "models" / "my clip.pt")
    assert json.loads(argv[argv.index("--backbone-spec") + 1])["pretrained"] == want
