"""The real Snakemake workflow, end to end, on a tiny toy world (not a dry-run)."""

import json
import re
import statistics
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from conftest import REPO, copy_workflow

from lt_bench.methods import METHODS

pytestmark = pytest.mark.slow

TINY = REPO / "tests/data/tiny_config.yaml"


def snakemake(wf: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "snakemake", "--cores", "2", "--configfile", str(TINY), *args]
    r = subprocess.run(cmd, cwd=wf, capture_output=True, text=True)
    if check and r.returncode != 0:
        raise AssertionError(f"snakemake {args} failed:\n{r.stdout[-4000:]}\n{r.stderr[-4000:]}")
    return r


def job_counts(dry_run_output: str) -> dict[str, int]:
    """Parse the 'Job stats' table of a dry-run."""
    counts = {}
    m = re.search(r"Job stats:\n(.*?)\n\n", dry_run_output + "\n\n", re.S)
    if not m:
        return counts
    for line in m.group(1).splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].isdigit() and parts[0] != "total":
            counts[parts[0]] = int(parts[1])
    return counts


@pytest.fixture(scope="module")
def finished_workflow(tmp_path_factory):
    wf = copy_workflow(tmp_path_factory.mktemp("wf"))
    snakemake(wf)
    return wf


def tiny_suite():
    cfg = yaml.safe_load(TINY.read_text())
    return cfg["suites"][cfg["suite"]]


def test_table_rows_equal_recomputed_means(finished_workflow):
    wf = finished_workflow
    suite = tiny_suite()
    table = pd.read_csv(wf / "results/tables/main.csv")
    over_backbones = [m for m in suite["methods"]
                      if METHODS.get(m).consumes == "runs" and METHODS.get(m).vary == "backbone"]
    per_backbone = [m for m in suite["methods"] if m not in over_backbones]
    single = table[table["backbone"] != "ensemble"]
    assert len(single) == len(suite["backbones"]) * len(per_backbone)
    assert set(table[table["backbone"] == "ensemble"]["method"]) == set(over_backbones)
    # the fine-tuning track (and its backdoor) runs on finetune_seeds only
    fine = {"adaptformer_la", "backdoor_finetuned"}
    for _, row in table.iterrows():
        seeds = suite["finetune_seeds"] if row["method"] in fine else suite["seeds"]
        assert row["n_seeds"] == len(seeds), row["method"]
    for _, row in single.iterrows():
        seeds = suite["finetune_seeds"] if row["method"] in fine else suite["seeds"]
        if len(seeds) < 2:
            continue
        vals = [json.loads((wf / "results/runs" / row["dataset"] / row["backbone"] / row["method"]
                            / f"seed{s}" / "metrics.json").read_text())["top1"] * 100
                for s in seeds]
        assert row["top1_mean"] == pytest.approx(statistics.mean(vals), abs=1e-3)
        assert row["top1_std"] == pytest.approx(statistics.stdev(vals), abs=1e-3)
    md = (wf / "results/tables/main.md").read_text()
    assert "| toy" in md and "±" in md
    assert (wf / "logs/pretrain_toy_clip/toyclip0.log").stat().st_size > 0


def test_rerun_has_nothing_to_do(finished_workflow):
    r = snakemake(finished_workflow, "-n")
    assert "Nothing to be done" in r.stdout + r.stderr, r.stdout[-2000:]


def test_a_deleted_ensemble_member_reruns_with_the_ensemble(finished_workflow, tmp_path,
                                                            capsys):
    """Snakemake rebuilds a missing file only for a job that runs anyway, so a deleted
    member run went unnoticed ("Nothing to be done"). The run markers are inputs of rule
    all (common.smk run_markers): the member's job, the ensemble and the index rerun; until
    then `lt-bench logits` and `lt-bench tables` refuse the ensemble in one line."""
    import shutil

    from lt_bench.cli import main

    wf = finished_workflow
    member = wf / "results/runs/toy/toyclip1/la/seed0"
    ens = wf / "results/runs/toy/ensemble/backdoor/seed0"
    keep = tmp_path / "member"
    shutil.copytree(member, keep)  # copy2: mtimes kept, restored below as they were
    shutil.rmtree(member)
    try:
        counts = job_counts(snakemake(wf, "-n").stdout)
        assert counts.get("fit_heads") == 1 and counts.get("combine_runs") == 1, counts
        assert counts.get("runs_index") == 1 and counts.get("aggregate") == 1, counts
        capsys.readouterr()
        assert main(["logits", str(ens), "--out", str(tmp_path / "l.parquet")]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and f"member {member} is missing" \
            in err, err
        index = (wf / "results/runs/toy/index.txt").read_text().split()
        assert main(["tables", "--metrics", *[str(wf / f) for f in index],
                     "--out-dir", str(tmp_path / "tables")]) == 2
        err = capsys.readouterr().err
        assert "toyclip1/la/seed0 is no longer a finished run" in err, err
        assert not (tmp_path / "tables" / "main.csv").exists()
    finally:
        shutil.copytree(keep, member)
    assert "Nothing to be done" in snakemake(wf, "-n").stdout


def test_changing_one_method_refits_only_its_runs(finished_workflow, tmp_path):
    """All heads of a (dataset, backbone, seed) are one job, so Snakemake reruns the head
    jobs; inside them only la and the runs built on it are refitted, the others are copied
    back from results/cache/fits (their metrics.json, fit times included, unchanged)."""
    wf = finished_workflow
    cfg = yaml.safe_load(TINY.read_text())
    cfg["methods"].setdefault("la", {})["tau"] = 0.5
    changed = tmp_path / "changed.yaml"
    changed.write_text(yaml.safe_dump(cfg))
    features = wf / "results/features/toy/toyclip0/train.parquet"
    before = features.stat().st_mtime_ns
    suite = cfg["suites"][cfg["suite"]]
    runs = wf / "results/runs/toy"
    old = {p: p.read_text() for p in runs.glob("toyclip*/*/seed*/metrics.json")}

    cmd = [sys.executable, "-m", "snakemake", "--cores", "2", "--configfile", str(changed)]
    dry = subprocess.run([*cmd, "-n"], cwd=wf, capture_output=True, text=True)
    counts = job_counts(dry.stdout)
    assert counts.get("fit_heads") == len(suite["backbones"]) * len(suite["seeds"]), counts
    assert counts.get("fit_member_seeds") == len(suite["backbones"]), counts
    for upstream in ("prepare_dataset", "pretrain_toy_clip", "extract_features",
                     "estimate_prior", "finetune"):
        assert upstream not in counts, f"{upstream} would rerun: {counts}"

    run = subprocess.run(cmd, cwd=wf, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-3000:]
    assert features.stat().st_mtime_ns == before
    affected = {"la"} | {m for m in suite["methods"] if "la" in METHODS.get(m).requires}
    refit, kept = set(), set()
    for path, text in old.items():
        method = path.parent.parent.name
        if METHODS.get(method).consumes != "features":
            continue
        (refit if path.read_text() != text else kept).add(method)
    assert refit == affected, (refit, affected)
    assert not kept & affected and "ce" in kept, (kept, affected)
    log = (wf / "logs/fit_heads/toy/toyclip0/seed0.log").read_text()
    assert "configuration unchanged" in log and "reused the fit" in log, log[-2000:]
    hp = json.loads((wf / "results/runs/toy/toyclip0/la/seed0/config.json").read_text())
    assert hp["hparams"]["tau"] == 0.5
