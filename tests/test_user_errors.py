"""Bad input never becomes a "finished" run (issue 15): a table of bad inputs and faults,
each run through the CLI as a user would, with the one line it must print and the exit
status 2 — and no metrics.json left behind. Add a row for every bug found later.
(Data-stage cases: tests/test_data_validation.py.)"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from synth_runs import FAST, TRAIN_COUNTS, make_features_dir, make_prior

from lt_bench.cli import main
from lt_bench.prior import write_prior

K = len(TRAIN_COUNTS)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("ue")
    fd = {b: make_features_dir(root / "f", backbone=b, view_seed=i)
          for i, b in enumerate(("bb0", "bb1"))}
    prior = make_prior(root / "prior.parquet", np.arange(1, K + 1))
    runs = {}
    for b in fd:
        for m, seed in (("ce", 0), ("la", 0), ("la", 1)):
            out = root / "runs" / "toy" / b / m / f"seed{seed}"
            assert main(["train", "--method", m, "--features-dir", str(fd[b]), "--out",
                         str(out), "--seed", str(seed), "--params", json.dumps(FAST)]) == 0
            runs[(b, m, seed)] = out
    return {"root": root, "fd": fd, "prior": prior, "runs": runs}


def _bad_prior(world, name, q, **cols):
    path = world["root"] / f"{name}.parquet"
    if cols.get("raw"):
        pq.write_table(pa.table({"label": np.arange(len(q), dtype=np.int32),
                                 "q_hat": np.asarray(q, dtype=np.float64)}), path)
        return path
    write_prior(path, np.asarray(q, dtype=np.float64), {"temperature": 1.0})
    return path


def _nan_features(world):
    src = world["fd"]["bb0"]
    dst = world["root"] / "nanfeat" / "toy" / "bb0"
    dst.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    t = pq.read_table(src / "train.parquet")
    feats = np.array(t.column("feature").to_pylist(), dtype=np.float16)
    feats[3, 0] = np.nan
    col = pa.FixedSizeListArray.from_arrays(pa.array(feats.reshape(-1)), feats.shape[1])
    t = t.set_column(t.schema.get_field_index("feature"), "feature", col)
    pq.write_table(t, dst / "train.parquet")
    return dst


def _toy_split(world):
    from lt_bench.data import get_dataset

    d = world["root"] / "toy_split"
    if not (d / "train.txt").exists():
        get_dataset("toy", num_classes=4, max_per_class=6, imbalance=2, val_per_class=2,
                    test_per_class=2).prepare(d)
    return d


def _malicious_checkpoint(world):
    class Evil:  # unpickling this would call its __reduce__: refused by weights_only
        def __reduce__(self):
            return (print, ("pwned",))

    path = world["root"] / "evil.pt"
    path.write_bytes(pickle.dumps({"state_dict": Evil()}))
    return path


def _train(world, *extra, method="ce", fd="bb0", out="x"):
    return ["train", "--method", method, "--features-dir", str(world["fd"][fd]) if
            isinstance(fd, str) else str(fd), "--out", str(world["root"] / "bad" / out),
            "--params", json.dumps(FAST), *extra]


CASES = {
    "prior with a zero": (
        lambda w: _train(w, "--prior", str(_bad_prior(w, "zero", [0.5, 0.5, 0, 0, 0, 0]))),
        "q_hat must be finite and > 0"),
    "prior with NaN": (
        lambda w: _train(w, "--prior", str(_bad_prior(w, "nan", [np.nan] + [0.2] * 5))),
        "q_hat must be finite and > 0"),
    "prior not summing to 1": (
        lambda w: _train(w, "--prior", str(_bad_prior(w, "sum", [0.3] * K, raw=True))),
        "q_hat sums to"),
    "prior of another class set": (
        lambda w: _train(w, "--prior", str(_bad_prior(w, "k4", [0.25] * 4))),
        "expected one row per class"),
    "NaN in the features": (
        lambda w: _train(w, fd=_nan_features(w)), "row(s) with NaN/inf features"),
    "epochs 0": (
        lambda w: ["train", "--method", "ce", "--features-dir", str(w["fd"]["bb0"]),
                   "--out", str(w["root"] / "bad" / "e0"), "--params", '{"epochs": 0}'],
        "epochs = 0 is invalid"),
    "unknown hyper-parameter": (
        lambda w: _train(w, "--params", '{"lr": 0.1, "lrr": 1}'), "unknown hyper-parameter"),
    "unknown method": (
        lambda w: _train(w, method="lx"), "unknown method 'lx'"),
    "base run of another backbone": (
        lambda w: _train(w, "--base", f"ce={w['runs'][('bb1', 'ce', 0)]}", "--params", "{}", method="tau_norm"),
        "backbone 'bb1' (expected 'bb0')"),
    "base run of another method": (
        lambda w: _train(w, "--base", f"ce={w['runs'][('bb0', 'la', 0)]}", "--params", "{}", method="tau_norm"),
        "method 'la' (expected 'ce')"),
    "base run of another seed": (
        lambda w: _train(w, "--seed", "1", "--base", f"ce={w['runs'][('bb0', 'ce', 0)]}",
                         "--params", "{}", method="tau_norm"),
        "seed 0 (expected 1)"),
    "backdoor members of mixed seeds": (
        lambda w: ["train", "--method", "backdoor", "--members",
                   str(w["runs"][("bb0", "la", 0)]), str(w["runs"][("bb1", "la", 1)]),
                   "--out", str(w["root"] / "bad" / "bd")],
        "seed"),
    "backdoor members of mixed methods": (
        lambda w: ["train", "--method", "backdoor", "--members",
                   str(w["runs"][("bb0", "la", 0)]), str(w["runs"][("bb1", "ce", 0)]),
                   "--out", str(w["root"] / "bad" / "bd2")],
        "method"),
    "ensemble run list with a seed its members do not give": (
        lambda w: ["train", "--runs", json.dumps([
            {"method": "backdoor", "seed": 1, "out": str(w["root"] / "bad" / "bd3"),
             "members": [str(w["runs"][(b, "la", 0)]) for b in ("bb0", "bb1")]}])],
        "members make an ensemble of seed 0, the run list says seed 1"),
    "run list mixing ensembles and heads": (
        lambda w: ["train", "--runs", json.dumps([
            {"method": "backdoor", "seed": 0, "out": str(w["root"] / "bad" / "bd4"),
             "members": [str(w["runs"][(b, "la", 0)]) for b in ("bb0", "bb1")]},
            {"method": "la", "seed": 0, "out": str(w["root"] / "bad" / "la")}])],
        "mixes ensembles with runs on features"),
    "logits of a folder that is not a run": (
        lambda w: ["logits", str(w["root"]), "--out", str(w["root"] / "l.parquet")],
        "not a run folder"),
    "results folder under a file": (
        lambda w: ["train", "--method", "ce", "--features-dir", str(w["fd"]["bb0"]),
                   "--out", str(w["prior"] / "run"), "--params", json.dumps(FAST)],
        "Not a directory"),
    "refused checkpoint": (
        lambda w: ["extract", "--dataset", "toy", "--split-dir", str(_toy_split(w)),
                   "--backbone", "toyclip0", "--checkpoint", str(_malicious_checkpoint(w)),
                   "--out-dir", str(w["root"] / "ext"), "--device", "cpu"],
        "not a plain state dict"),
    "k-NN bank that is not a split it may use": (
        lambda w: _train(w, "--params", '{"bank": "test"}', method="knn", out="knnbank"),
        "bank = 'test'; valid: train, val"),
    "TTE row of a run that is not a fine-tuning": (
        lambda w: ["train", "--method", "adaptformer_la_tte", "--members",
                   str(w["runs"][("bb0", "la", 0)]), "--out", str(w["root"] / "bad" / "tte")],
        "is a run of method 'la'; expected 'adaptformer_la'"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_clear_line_and_exit_2(world, case, capsys):
    argv, expected = CASES[case]
    args = argv(world)
    capsys.readouterr()
    rc = main(args)
    err = capsys.readouterr().err
    assert rc == 2, (case, err[-2000:])
    assert expected in err, (case, err[-2000:])
    assert "Traceback" not in err and "weights_only=False" not in err
    out = Path(args[args.index("--out") + 1]) if "--out" in args else None
    if out is not None and out.suffix != ".parquet":
        assert not (out / "metrics.json").exists()


def test_metrics_json_is_strict_json_with_null_for_undefined(world):
    """No bare NaN: the toy runs' undefined groups (no class in 'many' ...) are null."""
    for run in world["runs"].values():
        text = (run / "metrics.json").read_text()
        assert "NaN" not in text and "Infinity" not in text
        json.loads(text, parse_constant=lambda c: pytest.fail(f"bare {c} in metrics.json"))
    pc = pd.read_parquet(world["runs"][("bb0", "ce", 0)] / "per_class.parquet")
    assert len(pc) == K


def test_verbose_shows_the_traceback(world):
    with pytest.raises(Exception, match="unknown method"):
        main(["-v", *_train(world, method="lx")])


def test_a_moved_project_keeps_its_run_folders_readable(world, tmp_path, monkeypatch):
    """Run folders record paths as given (relative to the project root); after the project
    folder moves, `lt-bench logits` (and ensembles) find them from the run's own place."""
    import shutil

    proj = tmp_path / "proj"
    (proj / "results" / "features").mkdir(parents=True)
    shutil.copytree(world["fd"]["bb0"], proj / "results/features/toy/bb0")
    monkeypatch.chdir(proj)
    run = Path("results/runs/toy/bb0/ce/seed0")
    assert main(["train", "--method", "ce", "--features-dir", "results/features/toy/bb0",
                 "--out", str(run), "--params", json.dumps(FAST)]) == 0
    moved = tmp_path / "elsewhere" / "proj2"
    moved.parent.mkdir()
    shutil.move(str(proj), str(moved))
    monkeypatch.chdir(tmp_path)  # neither the old nor the new project folder
    out = tmp_path / "l.parquet"
    assert main(["logits", str(moved / run), "--out", str(out)]) == 0
    from lt_bench.runs.folder import read_logits

    labels, z = read_logits(out)
    m = json.loads((moved / run / "metrics.json").read_text())
    assert m["top1"] == pytest.approx(float((z.argmax(1) == labels).mean()))


@pytest.mark.slow
def test_snakemake_from_another_folder_stops_with_a_message(tmp_path):
    import subprocess
    import sys

    from conftest import REPO

    # even where that folder has a config.yaml of its own (else Snakemake says it is missing)
    (tmp_path / "config.yaml").write_text((REPO / "config.yaml").read_text())
    r = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"),
                        "-n", "--cores", "1"], cwd=tmp_path, capture_output=True, text=True)
    assert r.returncode != 0
    assert "run lt-bench's workflow from its project folder" in r.stdout + r.stderr
    assert not (tmp_path / "results").exists() and not (tmp_path / "resources").exists()


@pytest.mark.slow
def test_paths_with_spaces_quotes_and_non_ascii_reach_the_shell_intact(tmp_path):
    """A data_root such as /data/it's a dätä root must reach every rule's shell command as
    one argument (quoted with shlex), not break it (issue 15)."""
    import shlex
    import subprocess
    import sys

    from conftest import copy_workflow

    wf = copy_workflow(tmp_path / "wf")
    root = tmp_path / "it's a dätä root"
    r = subprocess.run([sys.executable, "-m", "snakemake", "-n", "-p", "--cores", "1",
                        "resources/data/places_lt/images_verified.json",
                        "--config", f"data_root={root}"],
                       cwd=wf, capture_output=True, text=True)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-3000:]
    cmd = next(line for line in out.splitlines() if "lt-bench verify-images" in line)
    argv = shlex.split(cmd.split("lt-bench verify-images", 1)[1].split("2>")[0].split(">>")[0])
    assert argv[argv.index("--data-root") + 1] == str(root / "places365")
