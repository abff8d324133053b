"""A smoke run of any suite (lt_bench/smoke.py): the same plan as the full suite, a few
images of every class, one epoch, in its own folder — checked on hand-made cases and by
real Snakemake runs on the real dataset classes (their real class counts and folder
layouts, synthetic lists and JPEGs, read through ``split_dir_local`` as a user's copy of
LIFT's lists): a paper-shaped suite on ImageNet-LT and Places-LT, and the heads and the
backdoor at iNat2018's K = 8,142 after ``lt-bench doctor`` passes on all three."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import REPO, copy_workflow
from PIL import Image

from lt_bench.data.smoke import subsample_split
from lt_bench.plan import Plan
from lt_bench.smoke import check_smoke_dir, smoke_config, wants_smoke


def test_subsample_keeps_the_first_n_of_every_class_in_list_order():
    paths = ["a0", "b0", "a1", "a2", "c0", "b1", "a3"]
    labels = [0, 1, 0, 0, 2, 1, 0]
    assert subsample_split(paths, labels, 2) == (["a0", "b0", "a1", "c0", "b1"],
                                                 [0, 1, 0, 2, 1])


def test_smoke_config_plans_the_same_runs_with_one_epoch():
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    config["suite"] = "paper"
    smoke = smoke_config(config)
    full, small = Plan(config), Plan(smoke)
    assert small.per_backbone_runs() == full.per_backbone_runs()
    assert small.ensemble_runs() == full.ensemble_runs()
    for d in ("imagenet_lt", "places_lt", "inat2018"):
        for m in ("la", "crt", "adaptformer_la"):
            assert full.hparams(m, d)["epochs"] > 1
            assert small.hparams(m, d)["epochs"] == 1
        assert small.hparams("la", d)["tau"] == full.hparams("la", d)["tau"]
    assert config["method_overrides"]["inat2018"]["epochs"] == 20  # the input is untouched


@pytest.mark.parametrize("value,want", [(True, True), ("true", True), ("True", True),
                                        ("false", False), (None, False)])
def test_smoke_switch_reads_what_snakemake_passes(value, want):
    assert wants_smoke({"smoke": value}) is want


def test_smoke_dir_with_a_full_run_is_refused(tmp_path):
    (tmp_path / "results" / "runs").mkdir(parents=True)
    with pytest.raises(Exception, match="holds a full run's results"):
        check_smoke_dir(tmp_path)
    fresh = check_smoke_dir(tmp_path / "results-smoke")
    (fresh / "results" / "runs").mkdir(parents=True)  # its own runs: a smoke folder again
    assert check_smoke_dir(fresh) == fresh


def _snakemake(wf: Path, *args: str, timeout: int = 1800) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "snakemake", *args], cwd=wf,
                          capture_output=True, text=True, timeout=timeout)


def _job_stats(out: str) -> dict[str, int]:
    import re

    m = re.search(r"Job stats:\n(.*?)\n\n", out + "\n\n", re.S)
    rows = [ln.split() for ln in m.group(1).splitlines()] if m else []
    return {r[0]: int(r[1]) for r in rows if len(r) == 2 and r[1].isdigit()}


@pytest.mark.slow
def test_smoke_into_a_folder_of_a_full_run_stops_with_one_line(tmp_path):
    wf = copy_workflow(tmp_path / "wf")
    (wf / "results" / "runs").mkdir(parents=True)
    r = _snakemake(wf, "-n", "--cores", "1", "--config", "smoke=true", "smoke_dir=.")
    assert r.returncode != 0
    msg = [ln for ln in (r.stdout + r.stderr).splitlines() if "smoke_dir" in ln]
    assert len(msg) == 1 and "holds a full run's results" in msg[0], r.stderr[-2000:]
    assert not (wf / ".lt-bench-smoke").exists()


# --- a paper-shaped suite on the real dataset classes --------------------------------------

def _jpeg(path: Path, rng) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(path, "JPEG")


#: LIFT's list folder, K, the image root under data_root, a list row's path for (class,
#: split, i), and classnames.txt's line (None: iNat's names come from categories.json)
LAYOUTS = {
    "imagenet_lt": ("ImageNet_LT", 1000, "imagenet",
                    lambda c, s, i: (f"train/n{c:08d}/n{c:08d}_{s}{i}.JPEG" if s != "test"
                                     else f"val/n{c:08d}/ILSVRC2012_val_{c:05d}{i}.JPEG"),
                    lambda c: f"n{c:08d} class {c}"),
    "places_lt": ("Places_LT", 365, "places365/places365_standard",
                  lambda c, s, i: (f"train/place{c}/{s}{i:08d}.jpg" if s != "test"
                                   else f"val/place{c}/Places365_val_{c:05d}{i}.jpg"),
                  lambda c: f"/p/place{c} place {c}"),
    # iNat2018: no test list (its official val is the test set, val a subset of train)
    "inat2018": ("iNaturalist18", 8142, "inat2018",
                 lambda c, s, i: f"train_val2018/{('Plantae', 'Aves')[c % 2]}/{c}/{s}{i}.jpg",
                 None),
}


def _real_layout(tmp: Path, names=("imagenet_lt", "places_lt"),
                 per=(("train", 3), ("val", 2), ("test", 2))) -> tuple[Path, Path]:
    """data_root with the datasets ``names`` in their real layouts (ILSVRC, Places365-
    Standard easy format, train_val2018/) and a copy of LIFT's datasets/ folder with their
    lists in LIFT's formats, every class of the real K; class 0 has 2 extra train images."""
    rng = np.random.default_rng(0)
    data_root, lift = tmp / "datasets", tmp / "lift_datasets"
    for name in names:
        folder, k, under, rel, classname = LAYOUTS[name]
        root = data_root / under
        (lift / folder).mkdir(parents=True)
        for split, n in per:
            if classname is None and split == "test":
                continue
            lines = []
            for c in range(k):
                for i in range(n + (2 if split == "train" and c == 0 else 0)):
                    p = rel(c, split, i)
                    _jpeg(root / p, rng)
                    lines.append(f"{p} {c}")
            (lift / folder / f"{folder}_{split}.txt").write_text("\n".join(lines) + "\n")
        if classname is None:
            (lift / folder / "categories.json").write_text(json.dumps(
                [{"id": c, "name": f"species {c}", "kingdom": "Plantae"} for c in range(k)]))
        else:
            (lift / folder / "classnames.txt").write_text(
                "\n".join(classname(c) for c in range(k)) + "\n")
    return data_root, lift


@pytest.mark.slow
def test_smoke_run_of_a_paper_shaped_suite(tmp_path):
    wf = copy_workflow(tmp_path / "wf")
    data_root, lift = _real_layout(tmp_path)
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    tiny = yaml.safe_load((REPO / "tests/data/tiny_config.yaml").read_text())
    paper = config["suites"]["paper"]
    config["suites"]["paper_shaped"] = {
        "datasets": ["imagenet_lt", "places_lt"], "backbones": ["toyclip0", "toyclip1"],
        "methods": paper["methods"], "extract": paper["extract"], "seeds": [0]}
    config["suite"] = "paper_shaped"
    config["data_root"] = str(data_root)
    for d in ("imagenet_lt", "places_lt"):
        config["datasets"][d] = {"split_dir_local": str(lift), "verify_sources": False}
    config["datasets"]["toy"] = tiny["datasets"]["toy"]  # the toy CLIPs' pre-training world
    config["extract"].update(num_workers=0, batch_size=128)
    config["methods"]["adaptformer_la"] = {"batch_size": 64}
    cfg = wf / "paper_shaped.yaml"
    cfg.write_text(yaml.safe_dump(config))

    full = _snakemake(wf, "-n", "--cores", "2", "--configfile", str(cfg))
    smoke = _snakemake(wf, "-n", "--cores", "2", "--configfile", str(cfg),
                       "--config", "smoke=true")
    assert full.returncode == 0 and smoke.returncode == 0, smoke.stderr[-3000:]
    assert _job_stats(smoke.stdout) == _job_stats(full.stdout) != {}

    t0 = time.time()
    r = _snakemake(wf, "--cores", "2", "--configfile", str(cfg), "--config", "smoke=true")
    wall = time.time() - t0
    assert r.returncode == 0, (r.stdout[-3000:], r.stderr[-5000:])
    print(f"smoke run of the paper-shaped suite: {wall:.0f} s, "
          f"{sum(_job_stats(smoke.stdout).values()) - 1} jobs")
    sd = wf / "results-smoke"
    assert not (wf / "results" / "runs").exists()  # nothing in the full run's folder
    for d, k in (("imagenet_lt", 1000), ("places_lt", 365)):
        lists = {s: pd.read_csv(sd / "resources/data" / d / f"{s}.txt", sep=" ",
                                header=None, names=["path", "label"])
                 for s in ("train", "val", "test")}
        for s, n in (("train", 3), ("val", 2), ("test", 2)):
            per = lists[s]["label"].value_counts()
            assert len(per) == k and per.max() == n, (d, s)  # class 0's 5 train images cut
        pc = pd.read_parquet(sd / "results/runs" / d / "toyclip0/la/seed0/per_class.parquet")
        assert len(pc) == k  # the real K reaches the heads
    main = pd.read_csv(sd / "results/tables/main.csv")
    assert set(main["dataset"]) == {"imagenet_lt", "places_lt"}
    assert {"backdoor", "adaptformer_la", "backdoor_finetuned"} <= set(main["method"])
    for run in ("la/seed0", "adaptformer_la/seed0"):  # one epoch: one history entry
        hist = json.loads((sd / "results/runs/imagenet_lt/toyclip0" / run / "history.json")
                          .read_text())
        assert len(hist) == 1, run
    con = sqlite3.connect(sd / "results/mlflow/mlflow.db")
    names = {n for (n,) in con.execute("SELECT name FROM experiments")}
    assert "lt-bench/paper_shaped-smoke" in names


@pytest.mark.slow
def test_doctor_then_smoke_at_inat2018s_k(tmp_path, capsys):
    """iNat2018 at its real K = 8,142 and layout (train_val2018/<kingdom>/<id>/…jpg, LIFT's
    iNaturalist18_*.txt and categories.json): doctor passes on all three real datasets, and
    a smoke run takes the heads, the k-NN, GLA's prior and the backdoor through K = 8,142
    (one train and one test image per class: iNat's val is a subset of train)."""
    from lt_bench.cli import main

    wf = copy_workflow(tmp_path / "wf")
    data_root, lift = _real_layout(tmp_path, ("imagenet_lt", "places_lt", "inat2018"),
                                   per=(("train", 1), ("val", 1), ("test", 1)))
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    tiny = yaml.safe_load((REPO / "tests/data/tiny_config.yaml").read_text())
    methods = ["zero_shot", "la", "crt", "knn", "gla", "backdoor"]
    config["suites"]["real_three"] = {
        "datasets": ["imagenet_lt", "places_lt", "inat2018"],
        "backbones": ["toyclip0", "toyclip1"], "methods": methods, "seeds": [0]}
    config["suites"]["inat_k"] = {**config["suites"]["real_three"], "datasets": ["inat2018"]}
    config["data_root"] = str(data_root)
    for d in ("imagenet_lt", "places_lt", "inat2018"):
        config["datasets"][d] = {"split_dir_local": str(lift), "verify_sources": False}
    config["datasets"]["toy"] = tiny["datasets"]["toy"]
    config["extract"].update(num_workers=0, batch_size=256)
    cfg = wf / "inat_k.yaml"
    cfg.write_text(yaml.safe_dump(config))

    rc = main(["doctor", "--configfile", str(cfg), "--suite", "real_three",
               "--results", str(wf / "results"),
               "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"])
    text = capsys.readouterr()
    text = text.out + text.err
    assert rc == 0 and "all checks passed" in text, text
    # iNat2018 ships two lists (its official val list is lt-bench's test split)
    for d, splits in (("imagenet_lt", ("train", "val", "test")),
                      ("places_lt", ("train", "val", "test")), ("inat2018", ("train", "val"))):
        for split in splits:
            line = next((ln for ln in text.splitlines() if f"{d} {split} images" in ln), text)
            assert line.startswith("✓") and "50 sampled images over 50 classes decode" \
                in line, (line, text)
    assert "✓   data      inat2018 image root" in text, text

    base = ["--configfile", str(cfg), "--config", "suite=inat_k"]
    full = _snakemake(wf, "-n", "--cores", "2", *base)
    smoke = _snakemake(wf, "-n", "--cores", "2", *base, "smoke=true")
    assert full.returncode == 0 and smoke.returncode == 0, smoke.stderr[-3000:]
    assert _job_stats(smoke.stdout) == _job_stats(full.stdout) != {}
    t0 = time.time()
    r = _snakemake(wf, "--cores", "2", *base, "smoke=true")
    assert r.returncode == 0, (r.stdout[-3000:], r.stderr[-5000:])
    print(f"smoke run at iNat2018's K: {time.time() - t0:.0f} s")
    sd = wf / "results-smoke"
    runs = sd / "results/runs/inat2018"
    for m in ("zero_shot", "la", "crt", "knn", "gla"):
        pc = pd.read_parquet(runs / "toyclip0" / m / "seed0/per_class.parquet")
        assert len(pc) == 8142, m  # the real K reaches every head
    test = pd.read_csv(sd / "resources/data/inat2018/test.txt", sep=" ", header=None)
    assert test[1].nunique() == 8142 and len(test) == 8142
    main_table = pd.read_csv(sd / "results/tables/main.csv")
    assert set(main_table["method"]) >= set(methods)
