"""One reader of a run folder (docs/architecture.md §4): every kind of run opens as a
``RunFolder`` whose identity, consumes, members and seam agree with what the run wrote;
"is this an ensemble" is one decision, the same for the backdoor over backbones and the
same-backbone control; a folder that is not a run folder is one line; predictor.json has
one writer, one reader and one registry of kinds."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from synth_runs import FAST, TRAIN_COUNTS, make_features_dir, make_prior

from lt_bench.cli import main
from lt_bench.errors import UserError
from lt_bench.io import read_json, write_json
from lt_bench.predictor_spec import (
    PREDICTOR_KINDS,
    read_predictor_spec,
    write_predictor_spec,
)
from lt_bench.registry import UnknownNameError
from lt_bench.runs.finetune import write_finetuned_run
from lt_bench.runs.layout import ENSEMBLE_BACKBONE, coordinates
from lt_bench.runs.run_folder import NotARunFolderError, RunFolder, run_logits
from lt_bench.runs.stored import write_logits
from lt_bench.runs.train import train_run

SAME_SEEDS = (0, 1000, 2000)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """results/runs/toy: la on bb0 (seeds 0, 1000, 2000) and bb1, knn on bb0, the backdoor
    over bb0/bb1, bb0's same-backbone control, a fine-tuned run and a stored one."""
    root = tmp_path_factory.mktemp("runfolder")
    runs = root / "results" / "runs" / "toy"
    out = {}
    for i, bb in enumerate(("bb0", "bb1")):
        fd = make_features_dir(root / "features", backbone=bb, view_seed=i)
        prior = make_prior(root / "prior" / f"{bb}.parquet", np.arange(1, 7.0) + i)
        for s in SAME_SEEDS if bb == "bb0" else (0,):
            out[("la", bb, s)] = runs / bb / "la" / f"seed{s}"
            train_run("la", fd, out[("la", bb, s)], seed=s, hparams=FAST, prior=prior)
    fd0 = root / "features" / "toy" / "bb0"
    out["knn"] = runs / "bb0" / "knn" / "seed0"
    train_run("knn", fd0, out["knn"], seed=0)
    out["backdoor"] = runs / ENSEMBLE_BACKBONE / "backdoor" / "seed0"
    out["backdoor_members"] = [out[("la", "bb0", 0)], out[("la", "bb1", 0)]]
    assert main(["combine", "--method", "backdoor", "--members",
                 *map(str, out["backdoor_members"]), "--out", str(out["backdoor"])]) == 0
    out["same"] = runs / "bb0" / "backdoor_same_backbone" / "seed0"
    out["same_members"] = [out[("la", "bb0", s)] for s in SAME_SEEDS]
    assert main(["combine", "--method", "backdoor_same_backbone", "--members",
                 *map(str, out["same_members"]), "--out", str(out["same"])]) == 0
    out["finetuned"] = _finetuned(runs / "bb0" / "adaptformer_la" / "seed0")
    out["stored"] = _stored(runs / "bb1" / "old_method" / "seed0")
    out["root"], out["runs"] = root, runs
    return out


def _split(k: int, per_class: int, rng) -> tuple[np.ndarray, np.ndarray]:
    labels = np.repeat(np.arange(k), per_class)
    return labels, rng.normal(size=(len(labels), 5)).astype(np.float32)


def _config(method: str, backbone: str, consumes: str) -> dict:
    return {"method": method, "dataset": "toy", "backbone": backbone, "seed": 0,
            "consumes": consumes, "hparams": {}}


def _finetuned(out: Path) -> Path:
    """A fine-tuned run folder written as a fine-tuning writes it (no training)."""
    rng = np.random.default_rng(0)
    k = len(TRAIN_COUNTS)
    labels, feats = {}, {}
    for s in ("val", "test"):
        labels[s], f = _split(k, 4, rng)
        feats[s] = {"centre": f}
    write_finetuned_run(out, labels=labels, features=feats,
                        trainable={"head.weight": rng.normal(size=(k, 5)).astype(np.float32)},
                        scale=25.0, view="centre", train_counts=np.array(TRAIN_COUNTS),
                        config=_config("adaptformer_la", "bb0", "images"), info={})
    return out


def _stored(out: Path) -> Path:
    """A run folder of an earlier version: val/test logits stored as they are."""
    rng = np.random.default_rng(1)
    k = len(TRAIN_COUNTS)
    out.mkdir(parents=True)
    logits = {}
    for s in ("val", "test"):
        y, _ = _split(k, 4, rng)
        logits[s] = (y, rng.normal(size=(len(y), k)).astype(np.float32))
        write_logits(*logits[s], out / f"logits_{s}.parquet")
    write_predictor_spec(out, {"kind": "stored"})
    from lt_bench.runs.folder import write_run

    write_run(out, logits, train_counts=np.array(TRAIN_COUNTS),
              config=_config("old_method", "bb1", "images"), info={})
    return out


def _top1(labels: np.ndarray, logits: np.ndarray) -> float:
    """Mean per-class accuracy, computed here (the metrics' top1 on a balanced test set)."""
    right = pd.Series(logits.argmax(1) == labels).groupby(labels).mean()
    return float(right.mean())


KINDS = {"la": "linear", "knn": "knn", "backdoor": "ensemble", "same": "ensemble",
         "finetuned": "finetuned", "stored": "stored"}


@pytest.mark.parametrize("name", list(KINDS))
def test_every_kind_opens_and_its_seam_gives_its_metrics(world, name):
    path = world[("la", "bb0", 0)] if name == "la" else world[name]
    run = RunFolder.open(path)
    assert run.predictor_spec["kind"] == KINDS[name]
    here = coordinates(path)
    assert (run.dataset, run.backbone, run.method, str(run.seed)) == \
        (here.dataset, here.backbone, here.method, here.seed)
    cfg = read_json(path / "config.json")
    assert run.identity == {k: cfg[k] for k in ("dataset", "backbone", "method", "seed")}
    labels, logits = run.split_logits("test")
    assert _top1(labels, logits) == pytest.approx(read_json(path / "metrics.json")["top1"])
    np.testing.assert_array_equal(run_logits(path, "test")[1], logits)
    assert run.finished and run.metrics == read_json(path / "metrics.json")



@pytest.mark.parametrize("name", list(KINDS))
def test_stored_predictions_are_the_argmax_of_the_seams_logits(world, name):
    """Every kind of run stores, when written, the per-image arg-max of the logits its
    metrics were computed from; it equals numpy's arg-max of what the seam (``lt-bench
    logits``) gives, on val and test, and the folder stays one of our run folders."""
    from lt_bench.runs.folder import is_run_folder
    from lt_bench.runs.layout import predictions_path

    path = world[("la", "bb0", 0)] if name == "la" else world[name]
    run = RunFolder.open(path)
    for split in ("val", "test"):
        assert predictions_path(path, split).is_file()
        labels, pred = run.predictions(split)
        y, z = run_logits(path, split)
        np.testing.assert_array_equal(labels, y)
        np.testing.assert_array_equal(pred, np.asarray(z).argmax(1))
    assert is_run_folder(path)  # a rerun may replace it (a fine-tuning's features too)


def test_predictions_break_ties_as_argmax_and_old_folders_fall_back(tmp_path):
    """Tied logits: the stored prediction is the first tied class, as ``numpy.argmax`` of
    the seam's logits; a run folder written before predictions were stored gives the same
    arrays from its rebuilt logits; train has none."""
    from lt_bench.runs.folder import write_run
    from lt_bench.runs.layout import predictions_path

    rng = np.random.default_rng(3)
    k = len(TRAIN_COUNTS)
    out = tmp_path / "results" / "runs" / "toy" / "bb1" / "tied" / "seed0"
    out.mkdir(parents=True)
    logits = {}
    for s in ("val", "test"):
        y = np.repeat(np.arange(k), 5)
        z = rng.integers(0, 2, size=(len(y), k)).astype(np.float32)  # many ties per row
        logits[s] = (y, z)
        write_logits(y, z, out / f"logits_{s}.parquet")
    write_predictor_spec(out, {"kind": "stored"})
    write_run(out, logits, train_counts=np.array(TRAIN_COUNTS),
              config=_config("tied", "bb1", "images"), info={})
    run = RunFolder.open(out)
    y, z = logits["test"]
    assert (z == z.max(1, keepdims=True)).sum(1).max() > 1
    stored = run.predictions("test")
    np.testing.assert_array_equal(stored[1], z.argmax(1))
    np.testing.assert_array_equal(stored[0], y)
    predictions_path(out, "test").unlink()
    for got, want in zip(RunFolder.open(out).predictions("test"), stored, strict=True):
        np.testing.assert_array_equal(got, want)
    with pytest.raises(UserError, match="valid: val, test"):
        run.predictions("train")

def test_consumes_is_what_the_method_consumed(world):
    expected = {world[("la", "bb0", 0)]: "features", world["knn"]: "features",
                world["backdoor"]: "runs", world["same"]: "runs",
                world["finetuned"]: "images"}
    assert {p: RunFolder.open(p).consumes for p in expected} == expected


def test_is_ensemble_is_one_decision_for_both_kinds_of_ensemble(world, tmp_path):
    backdoor, same = RunFolder.open(world["backdoor"]), RunFolder.open(world["same"])
    # the same-backbone control is filed under its real backbone and is an ensemble
    assert same.backbone == "bb0" and same.is_ensemble
    assert backdoor.backbone == ENSEMBLE_BACKBONE and backdoor.is_ensemble
    for p in (world[("la", "bb0", 0)], world["knn"], world["finetuned"], world["stored"]):
        assert not RunFolder.open(p).is_ensemble
    # a run of one member (another view of one fine-tuning) combines nothing
    one = tmp_path / "toy" / "bb0" / "view" / "seed0"
    one.mkdir(parents=True)
    write_json(one / "config.json", {**_config("view", "bb0", "runs"),
                                     "members": [{"run_dir": str(world["finetuned"])}]})
    assert not RunFolder.open(one).is_ensemble
    # and the report's per-class frame carries the same decision
    from lt_bench.report.collect import collect_per_class

    pc = collect_per_class([world["backdoor"], world["same"], world[("la", "bb0", 0)]])
    assert pc.groupby("method")["ensemble"].first().to_dict() == {
        "backdoor": True, "backdoor_same_backbone": True, "la": False}


def test_members_are_resolved_run_folders_in_recorded_order(world):
    for name in ("backdoor", "same"):
        run = RunFolder.open(world[name])
        assert run.member_paths == world[f"{name}_members"]
        assert [m.path for m in run.members] == world[f"{name}_members"]
        assert all(isinstance(m, RunFolder) and m.method == "la" for m in run.members)
    assert [m.seed for m in RunFolder.open(world["same"]).members] == list(SAME_SEEDS)
    assert RunFolder.open(world[("la", "bb0", 0)]).members == []


def test_best_member_is_read_where_recorded_else_recomputed(world, tmp_path):
    run = RunFolder.open(world["backdoor"])
    val = [read_json(m / "metrics.json")["val_top1"] for m in world["backdoor_members"]]
    test = [read_json(m / "metrics.json")["top1"] for m in world["backdoor_members"]]
    assert run.best_member("val").path == world["backdoor_members"][int(np.argmax(val))]
    assert run.best_member("test").path == world["backdoor_members"][int(np.argmax(test))]
    # recorded by the run (metrics["best_member"]: indices into the members): read, not
    # recomputed — here deliberately the other member
    copy = tmp_path / "toy" / ENSEMBLE_BACKBONE / "backdoor" / "seed0"
    shutil.copytree(world["backdoor"], copy)
    m = read_json(copy / "metrics.json")
    other = 1 - int(np.argmax(val))
    write_json(copy / "metrics.json", {**m, "best_member": {"val": other, "test": other}})
    assert RunFolder.open(copy).best_member("val").path == world["backdoor_members"][other]


def test_a_folder_that_is_not_a_run_folder_is_one_line(tmp_path, capsys):
    with pytest.raises(NotARunFolderError, match="not a run folder") as e:
        RunFolder.open(tmp_path)
    assert isinstance(e.value, UserError) and "\n" not in str(e.value)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "config.json").write_text(json.dumps({"lr": 0.1}))
    with pytest.raises(NotARunFolderError, match="not a run's config.json"):
        RunFolder.open(mine)
    assert main(["logits", str(tmp_path), "--out", str(tmp_path / "z.parquet")]) == 2
    err = capsys.readouterr().err.strip()
    assert "not a run folder" in err and len(err.splitlines()) == 1


def test_predictor_json_has_one_writer_one_reader_and_registered_kinds(tmp_path):
    assert set(PREDICTOR_KINDS.names()) >= {"linear", "knn", "finetuned", "stored",
                                            "ensemble"}
    with pytest.raises(AssertionError, match="predictor kind 'nope' is not registered; valid"):
        write_predictor_spec(tmp_path, {"kind": "nope"})
    write_predictor_spec(tmp_path, {"kind": "stored", "x": 1})
    assert read_predictor_spec(tmp_path) == {"kind": "stored", "x": 1}
    with pytest.raises(UnknownNameError, match="valid predictor kinds: ensemble, finetuned"):
        PREDICTOR_KINDS.get("nope")
    (tmp_path / "predictor.json").write_text("{}")
    with pytest.raises(UserError, match="no predictor 'kind'"):
        read_predictor_spec(tmp_path)


def test_kinds_are_imported_on_lookup_only(world):
    """The ensemble's module (scipy) is not imported to read a run of another kind, and
    ``runs.predictors`` never imports it (the lazy registry entry breaks that circle)."""
    import ast

    code = ("import sys\nfrom lt_bench.runs.run_folder import run_logits\n"
            f"run_logits({str(world[('la', 'bb0', 0)])!r}, 'test')\n"
            "print('ENSEMBLE', 'lt_bench.runs.ensemble' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert "ENSEMBLE False" in out, out
    src = Path(__file__).resolve().parents[1] / "lt_bench" / "runs" / "predictors.py"
    imported = {n.module for n in ast.walk(ast.parse(src.read_text()))
                if isinstance(n, ast.ImportFrom)}
    assert "lt_bench.runs.ensemble" not in imported
