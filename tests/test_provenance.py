"""Provenance is checked where it is read: every consumer compares what it reads with what
was recorded and refuses a mismatch with one line naming both sides (exit 2), and a
finished run whose inputs changed is reported as stale, never recomputed into other
numbers. Each row runs through the CLI as a user would and checks that nothing already
computed is lost. (The bad-input table of the other stages: tests/test_user_errors.py.)"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from synth_runs import FAST, make_features_dir

from lt_bench.cli import main
from lt_bench.features.store import META_KEY, read_meta
from lt_bench.io import sha256_file


def _copy(src: Path, dst: Path) -> Path:
    shutil.rmtree(dst, ignore_errors=True)  # each case builds its own afresh
    shutil.copytree(src, dst)
    return dst


def _set_meta(path: Path, **updates) -> None:
    """Rewrite a feature file's lt_bench metadata (what an extraction records)."""
    t = pq.read_table(path)
    meta = {**json.loads(t.schema.metadata[META_KEY]), **updates}
    md = {**t.schema.metadata, META_KEY: json.dumps(meta, sort_keys=True).encode()}
    pq.write_table(t.replace_schema_metadata(md), path)


def _as_extracted(fd: Path, lists: dict[str, str]) -> Path:
    """Give a synthetic folder what `lt-bench extract` records: every file names the sha256
    of all the split lists it was extracted with, each split file its own list's."""
    for f in ("train", "val", "test", "text"):
        _set_meta(fd / f"{f}.parquet", inputs_sha256=lists, weights="sha256:w0",
                  **({"split_sha256": lists[f]} if f != "text" else {}))
    return fd


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("prov")
    fd = {b: make_features_dir(root / "f", backbone=b, view_seed=i)
          for i, b in enumerate(("bb0", "bb1"))}
    lists = {"train": "a" * 64, "val": "b" * 64, "test": "c" * 64, "classnames": "d" * 64}
    runs = {}
    for b in fd:
        _as_extracted(fd[b], lists)
        out = root / "runs" / "toy" / b / "la" / "seed0"
        assert main(["fit", "--method", "la", "--features-dir", str(fd[b]), "--out",
                     str(out), "--seed", "0", "--params", json.dumps(FAST)]) == 0
        runs[b] = out
    # the real prior files, as `lt-bench prior` writes them (metadata: dataset, backbone)
    priors = {b: root / "prior" / f"{b}.parquet" for b in fd}
    for b in fd:
        assert main(["prior", "--features-dir", str(fd[b]), "--out", str(priors[b])]) == 0
    ens = root / "runs" / "toy" / "ensemble" / "backdoor" / "seed0"
    assert main(["combine", "--method", "backdoor", "--members", str(runs["bb0"]),
                 str(runs["bb1"]), "--out", str(ens)]) == 0
    return {"root": root, "fd": fd, "lists": lists, "runs": runs, "priors": priors,
            "ens": ens}


def _folder(w, name: str) -> Path:
    """A fresh copy of bb0's features folder for one case."""
    return _copy(w["fd"]["bb0"], w["root"] / "cases" / name / "toy" / "bb0")


def _text_of_bb1(w):
    fd = _folder(w, "text")
    shutil.copyfile(w["fd"]["bb1"] / "text.parquet", fd / "text.parquet")
    return fd


def _val_of_another_extraction(w):
    fd = _folder(w, "val")
    _set_meta(fd / "val.parquet", split_sha256="e" * 64,
              inputs_sha256={**w["lists"], "val": "e" * 64})
    return fd


def _old_val_of_another_list(w):
    """A val file written before inputs_sha256 existed, from another val list."""
    fd = _folder(w, "oldval")
    t = pq.read_table(fd / "val.parquet")
    meta = json.loads(t.schema.metadata[META_KEY])
    meta.pop("inputs_sha256")
    meta["split_sha256"] = "f" * 64
    pq.write_table(t.replace_schema_metadata({META_KEY: json.dumps(meta)}), fd / "val.parquet")
    return fd


def _run_with_replaced_features(w, name="stale"):
    """A finished la run whose test features were then replaced by another backbone's."""
    fd = _folder(w, name)
    out = w["root"] / "cases" / name / "run"
    assert main(["fit", "--method", "la", "--features-dir", str(fd), "--out", str(out),
                 "--seed", "0", "--params", json.dumps(FAST)]) == 0
    shutil.copyfile(w["fd"]["bb1"] / "test.parquet", fd / "test.parquet")
    return out


def _ensemble_missing_member(w):
    runs = {b: _copy(w["runs"][b], w["root"] / "cases" / "ens" / "toy" / b / "la" / "seed0")
            for b in ("bb0", "bb1")}
    ens = w["root"] / "cases" / "ens" / "toy" / "ensemble" / "backdoor" / "seed0"
    assert main(["combine", "--method", "backdoor", "--members", str(runs["bb0"]),
                 str(runs["bb1"]), "--out", str(ens)]) == 0
    shutil.rmtree(runs["bb1"])
    return ens


def _ensemble_member_rerun(w):
    runs = {b: _copy(w["runs"][b], w["root"] / "cases" / "ens2" / "toy" / b / "la" / "seed0")
            for b in ("bb0", "bb1")}
    ens = w["root"] / "cases" / "ens2" / "toy" / "ensemble" / "backdoor" / "seed0"
    assert main(["combine", "--method", "backdoor", "--members", str(runs["bb0"]),
                 str(runs["bb1"]), "--out", str(ens)]) == 0
    assert main(["fit", "--method", "la", "--features-dir", str(w["fd"]["bb1"]), "--out",
                 str(runs["bb1"]), "--seed", "0", "--params",
                 json.dumps({**FAST, "epochs": 3})]) == 0
    return ens


def _deleted_run(w):
    run = _copy(w["runs"]["bb0"], w["root"] / "cases" / "deleted" / "toy" / "bb0" / "la" /
                "seed0")
    shutil.rmtree(run)
    return run


def _train(fd_of, method="la", *extra):
    return lambda w: ["fit", "--method", method, "--features-dir", str(fd_of(w)), "--out",
                      str(w["root"] / "bad" / method / "x"), "--seed", "0", "--params",
                      json.dumps(FAST if method not in ("zero_shot", "gla") else {}), *extra]


def _logits(run_of):
    return lambda w: ["logits", str(run_of(w)), "--split", "test", "--out",
                      str(w["root"] / "bad" / "logits.parquet")]


#: case -> (argv of the world, what the one line must say: both sides)
CASES = {
    "zero-shot with text.parquet of another backbone": (
        _train(_text_of_bb1, "zero_shot"),
        ["text.parquet was extracted with backbone 'bb1'", "train.parquet with backbone 'bb0'"]),
    "text-initialised head with text.parquet of another backbone": (
        _train(_text_of_bb1, "la"),
        ["text.parquet was extracted with backbone 'bb1'", "train.parquet with backbone 'bb0'"]),
    "--prior of another backbone": (
        lambda w: _train(lambda w: w["fd"]["bb0"], "gla", "--prior",
                         str(w["priors"]["bb1"]), "--base", f"la={w['runs']['bb0']}")(w),
        ["bb1.parquet was estimated for backbone 'bb1'", "is of backbone 'bb0'"]),
    "val features of another extraction": (
        _train(_val_of_another_extraction),
        ["val.parquet and", "train.parquet come from different extractions",
         "val list sha256 eeeeeeeeeeee… vs bbbbbbbbbbbb…"]),
    "val features of another split list (file without inputs_sha256)": (
        _train(_old_val_of_another_list),
        ["come from different extractions", "val list sha256 ffffffffffff… vs bbbbbbbbbbbb…"]),
    "logits of a run whose features were replaced": (
        _logits(_run_with_replaced_features),
        ["stale run: its test features", "test.parquet changed (sha256", "in its config.json"]),
    "logits of an ensemble with a deleted member": (
        _logits(_ensemble_missing_member),
        ["member", "bb1/la/seed0 is missing (no metrics.json"]),
    "logits of an ensemble whose member was rerun": (
        _logits(_ensemble_member_rerun),
        ["bb1/la/seed0 was rerun since the ensemble was made (metrics.json sha256"]),
    "significance over a stale run": (
        lambda w: ["significance", "--metrics",
                   str(_run_with_replaced_features(w, "sig") / "metrics.json"),
                   str(w["runs"]["bb1"] / "metrics.json"), "--n-boot", "10",
                   "--out", str(w["root"] / "bad" / "sig.csv")],
        ["stale run: its test features"]),
    "tables over a stale run": (
        lambda w: ["tables", "--metrics",
                   str(_run_with_replaced_features(w, "tab") / "metrics.json"),
                   str(w["runs"]["bb1"] / "metrics.json"),
                   "--out-dir", str(w["root"] / "bad" / "tables")],
        ["stale run: its test features"]),
    "tables over a runs index listing a deleted run": (
        lambda w: ["tables", "--metrics", str(_deleted_run(w) / "metrics.json"),
                   str(w["runs"]["bb1"] / "metrics.json"),
                   "--out-dir", str(w["root"] / "bad" / "tables2")],
        ["la/seed0 is no longer a finished run (no metrics.json"]),
}


def _finished(root: Path) -> dict[str, str]:
    """Every finished run's metrics.json under ``root`` -> its sha256 (what must survive)."""
    return {str(p): sha256_file(p) for p in sorted(root.rglob("metrics.json"))}


@pytest.mark.parametrize("case", list(CASES))
def test_provenance_mismatch_is_one_line_naming_both_sides(world, case, capsys):
    argv, needles = CASES[case]
    args = argv(world)
    before = _finished(world["root"])
    capsys.readouterr()
    rc = main(args)
    err = capsys.readouterr().err
    assert rc == 2, (case, err[-2000:])
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, (case, err)
    for n in needles:
        assert n in lines[0], (case, n, lines[0])
    after = _finished(world["root"])
    assert after == before, case  # nothing computed is lost or rewritten
    out = Path(args[args.index("--out") + 1]) if "--out" in args else None
    if out is not None:  # no logits, no significance table, no finished run written
        assert not out.exists() or not (out / "metrics.json").exists(), (case, out)
        assert out.suffix not in (".parquet", ".csv") or not out.exists(), (case, out)
    if "--out-dir" in args:
        assert not (Path(args[args.index("--out-dir") + 1]) / "main.csv").exists(), case


def test_a_fresh_run_and_ensemble_still_give_their_recorded_numbers(world, tmp_path):
    """The checks pass what is unchanged: the logits rebuilt through the checked seam
    give back each run's recorded top-1."""
    from lt_bench.runs.folder import read_logits

    for run in (world["runs"]["bb0"], world["ens"]):
        out = tmp_path / f"{run.parts[-3]}.parquet"
        assert main(["logits", str(run), "--split", "test", "--out", str(out)]) == 0
        y, z = read_logits(out)
        top1 = json.loads((run / "metrics.json").read_text())["top1"]
        assert float((z.argmax(1) == y).mean()) == pytest.approx(top1)


def test_the_prior_records_its_dataset_and_backbone_and_old_files_still_read(world, tmp_path):
    from lt_bench.prior import read_prior, write_prior

    meta = read_meta(world["priors"]["bb0"])
    assert (meta["dataset"], meta["backbone"]) == ("toy", "bb0")
    old = tmp_path / "old.parquet"  # a prior file without the identity keys
    write_prior(old, np.full(6, 1 / 6), {"temperature": 1.0})
    assert read_prior(old, 6, dataset="toy", backbone="bb0").q_hat.sum() == pytest.approx(1)


@pytest.mark.slow
def test_extraction_records_every_list_it_read(small_toy_world):
    """What the val/test check compares: each file of a real extraction names the sha256
    of all three split lists and the class names, and its own list's among them."""
    fd, sd = small_toy_world["features_dir"], small_toy_world["split_dir"]
    want = {s: sha256_file(sd / f"{s}.txt") for s in ("train", "val", "test")}
    want["classnames"] = sha256_file(sd / "classnames.txt")
    for f in ("train", "val", "test", "text"):
        meta = read_meta(fd / f"{f}.parquet")
        assert meta["inputs_sha256"] == want, f
        if f != "text":
            assert meta["split_sha256"] == want[f]


@pytest.mark.slow
def test_duplicate_seeds_are_refused_by_snakemake_in_one_line(tmp_path):
    """seeds: [0, 0] would report n = 2 with std 0 from one seed: the schema refuses it
    before any job runs, in one line naming the key."""
    import subprocess
    import sys

    import yaml
    from conftest import REPO, copy_workflow

    cfg = yaml.safe_load((REPO / "tests/data/tiny_config.yaml").read_text())
    cfg["suites"]["tiny"]["seeds"] = [0, 0]
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(cfg))
    wf = copy_workflow(tmp_path / "wf")
    r = subprocess.run([sys.executable, "-m", "snakemake", "-n", "--cores", "1",
                        "--configfile", str(config)], cwd=wf, capture_output=True, text=True)
    out = r.stdout + r.stderr
    assert r.returncode != 0
    assert "config.yaml suites.tiny.seeds: [0, 0] has non-unique elements" in out.splitlines()
    assert "Failed validating" not in out  # not the schema's dump
    assert not (wf / "results").exists()
