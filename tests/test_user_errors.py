"""Bad input never becomes a "finished" run (docs/architecture.md §9): a table of bad inputs
and faults, each run through the CLI as a user would, with the one line it must print and
the exit status 2 — and no metrics.json left behind. Add a row for every bug found later.
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
from lt_bench.config import ConfigError
from lt_bench.errors import DuplicateNameError, InputValidationError, MissingInputError
from lt_bench.registry import UnknownNameError

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
            assert main(["fit", "--method", m, "--features-dir", str(fd[b]), "--out",
                         str(out), "--seed", str(seed), "--params", json.dumps(FAST)]) == 0
            runs[(b, m, seed)] = out
    return {"root": root, "fd": fd, "prior": prior, "runs": runs}


def _bad_prior(world, name, q):
    """A prior file as a damaged or hand-made one would be (write_prior refuses to write it)."""
    path = world["root"] / f"{name}.parquet"
    pq.write_table(pa.table({"label": np.arange(len(q), dtype=np.int32),
                             "q_hat": np.asarray(q, dtype=np.float64)}), path)
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


def _extract_declared(world, name, declaration):
    """`lt-bench extract` of a backbone declared as in config.yaml (as the workflow runs it)."""
    return ["extract", "--dataset", "toy", "--split-dir", str(_toy_split(world)), "--backbone",
            name, "--backbone-spec", json.dumps(declaration), "--out-dir",
            str(world["root"] / f"ext_{name}"), "--device", "cpu"]


def _user_lists(world, label):
    """A user's OLTR lists (oltr_lists) whose train.txt line 3 has ``label``, K = 4."""
    d = world["root"] / f"oltr_{label}"
    d.mkdir(exist_ok=True)
    (d / "classnames.txt").write_text("a\nb\nc\nd\n")
    (d / "train.txt").write_text(f"t/0.jpg 0\nt/1.jpg 1\nt/2.jpg {label}\nt/3.jpg 3\n")
    (d / "test.txt").write_text("s/0.jpg 0\ns/1.jpg 1\ns/2.jpg 2\ns/3.jpg 3\n")
    return ["prepare", "my_lt", "--out", str(world["root"] / f"prep_{label}"), "--params",
            json.dumps({"type": "oltr_lists", "split_dir": str(d)})]


def _with_broken_plugin(world, argv):
    from plugin_dists import broken_methods_plugin

    broken_methods_plugin(world["root"] / "broken_site")
    return argv


def _unbreak(world):
    from plugin_dists import unbreak

    unbreak(world["root"] / "broken_site")


def _label_past_k(world):
    """Features of a split list edited after `prepare`: a train label K (classes 0..K-1)."""
    src = world["fd"]["bb0"]
    dst = world["root"] / "labelk" / "toy" / "bb0"
    dst.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    t = pq.read_table(src / "train.parquet")
    labels = t.column("label").to_numpy().copy()
    labels[3] = K
    t = t.set_column(t.schema.get_field_index("label"), "label", pa.array(labels))
    pq.write_table(t, dst / "train.parquet")
    return dst


def _run_copy(world, name, metrics_text=None):
    """A copy of a finished ce run; metrics.json removed (None) or replaced by ``metrics_text``."""
    import shutil

    dst = world["root"] / "copies" / name
    shutil.rmtree(dst, ignore_errors=True)
    shutil.copytree(world["runs"][("bb0", "ce", 0)], dst)
    if metrics_text is None:
        (dst / "metrics.json").unlink()
    else:
        (dst / "metrics.json").write_text(metrics_text)
    return dst


def _logits_of(world, name, metrics_text=None):
    run = _run_copy(world, name, metrics_text)
    return ["logits", str(run), "--out", str(world["root"] / "copies" / f"{name}.parquet")]


def _train_to(world, out):
    return ["fit", "--method", "ce", "--features-dir", str(world["fd"]["bb0"]), "--out",
            str(out), "--params", json.dumps(FAST)]


def _users_folder(world):
    d = world["root"] / "users_folder"
    d.mkdir(exist_ok=True)
    (d / "config.json").write_text('{"lr": 0.1, "mine": true}\n')
    return d


def _into_users_folder(world):
    return _train_to(world, _users_folder(world))


def _unchanged(path, text):
    def check(world):
        assert Path(path).read_text() == text

    return check


def _full_disk(world):
    """A 1 MiB tmpfs, filled: a run saved there meets a real ENOSPC (root only)."""
    import atexit
    import os
    import subprocess

    mnt = world["root"] / "full_disk"
    mnt.mkdir(exist_ok=True)
    if os.geteuid() != 0 or subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)],
            capture_output=True).returncode != 0:
        pytest.skip("a full disk needs a tmpfs mount (root)")
    atexit.register(subprocess.run, ["umount", "-l", str(mnt)], capture_output=True)
    try:  # fill it to the last block
        with open(mnt / "filler", "wb", buffering=0) as f:
            while True:
                f.write(b"\0" * 4096)
    except OSError as e:
        assert e.errno == 28  # ENOSPC: full
    return mnt / "run"


def _locked_store(world):
    """An SQLite store another process holds an exclusive transaction on."""
    import atexit
    import sqlite3
    import subprocess
    import sys

    db = world["root"] / "mlflow_locked" / "mlflow.db"
    db.parent.mkdir(exist_ok=True)
    sqlite3.connect(db).close()
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sqlite3, sys, time\n"
         "con = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
         "con.execute('BEGIN EXCLUSIVE'); print('locked', flush=True); time.sleep(300)",
         str(db)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    atexit.register(holder.kill)
    return ["ingest", "--metrics", str(world["runs"][("bb0", "ce", 0)] / "metrics.json"),
            "--tracking-uri", f"sqlite:///{db}", "--lock-timeout", "2",
            "--out", str(db.parent / "ingested.json")]


def _train(world, *extra, method="ce", fd="bb0", out="x"):
    return ["fit", "--method", method, "--features-dir", str(world["fd"][fd]) if
            isinstance(fd, str) else str(fd), "--out", str(world["root"] / "bad" / out),
            "--params", json.dumps(FAST), *extra]


def _variant_fit(world, variants: dict, method: str = "v"):
    """`lt-bench fit` of a variant declared as the workflow declares it to a job."""
    return ["--variants", json.dumps(variants), *_train(world, method=method, out=method)]


def _config_with(world, name: str, entry: dict) -> list[str]:
    """`lt-bench doctor` on config.yaml with ``methods.<name>: entry`` (as a user writes it)."""
    import yaml
    from conftest import REPO

    cfg = yaml.safe_load((REPO / "config.yaml").read_text())
    cfg["methods"][name] = entry
    path = world["root"] / f"config_{name}.yaml"
    path.write_text(yaml.safe_dump(cfg, allow_unicode=True))
    return ["doctor", "--configfile", str(path)]


def _forget_variants(world):
    from lt_bench.methods import METHODS

    METHODS.undeclare("config")


def _runs_copy(w, name: str, edit) -> Path:
    """A runs root holding a copy of bb0's ce run of seed 0, its files changed by ``edit``."""
    import shutil

    dst = w["root"] / name / "toy" / "bb0" / "ce" / "seed0"
    if not dst.exists():
        shutil.copytree(w["runs"][("bb0", "ce", 0)], dst)
        edit(dst)
    return w["root"] / name


def _edit_json(path: Path, change) -> None:
    obj = json.loads(path.read_text())
    change(obj)
    path.write_text(json.dumps(obj))


def _renamed_method(d: Path) -> None:
    for f in ("metrics.json", "config.json"):
        _edit_json(d / f, lambda o: o.update(method="focal"))


def _other_test_split(d: Path) -> None:
    _edit_json(d / "config.json", lambda o: o["split_sha256"].update(test="0" * 64))


def _split_copy(w, name: str, edit) -> list[str]:
    """`lt-bench extract` of a copy of the toy split lists changed by ``edit`` (toyclip0
    with a user's checkpoint, on the CPU)."""
    import shutil

    from conftest import save_random_toy_checkpoint

    d = w["root"] / "splits_copies" / name
    if not d.exists():
        shutil.copytree(_toy_split(w), d)
        edit(d)
    ck = w["root"] / "toy_random.pt"
    if not ck.exists():
        save_random_toy_checkpoint(ck)
    return ["extract", "--dataset", "toy", "--split-dir", str(d), "--backbone", "toyclip0",
            "--checkpoint", str(ck), "--out-dir", str(w["root"] / "ext_copies" / name),
            "--device", "cpu"]


def _features_copy(w, name: str, *, fit_knn: bool = False) -> Path:
    """A copy of bb0's features folder (a knn run fitted on it first with ``fit_knn``)."""
    import shutil

    dst = w["root"] / name / "toy" / "bb0"
    if not dst.exists():
        shutil.copytree(w["fd"]["bb0"], dst)
        if fit_knn:
            assert main(["fit", "--method", "knn", "--features-dir", str(dst), "--out",
                         str(w["root"] / name / "knn")]) == 0
    return dst


def _knn_logits_without_train_features(w) -> list[str]:
    fd = _features_copy(w, "knn_gone", fit_knn=True)
    (fd / "train.parquet").unlink(missing_ok=True)
    return ["logits", str(w["root"] / "knn_gone" / "knn"), "--out",
            str(w["root"] / "knn_gone" / "logits.parquet")]


def _fit_without_val_features(w) -> list[str]:
    fd = _features_copy(w, "no_val")
    (fd / "val.parquet").unlink(missing_ok=True)
    return _train(w, fd=fd, out="no_val")


def _extract_on_gpus(w, **env) -> tuple[list[str], dict]:
    """`lt-bench extract` with no --device (it claims a GPU) and the GPU variables ``env``
    (LT_BENCH_FAKE_GPUS: the machine's GPU count, as the tests of claiming set it)."""
    env = {"LT_BENCH_GPU_LOCK_DIR": str(w["root"] / "gpu_locks"),
           "CUDA_VISIBLE_DEVICES": None, **env}
    return _split_copy(w, "gpu", lambda d: None)[:-2], env


CASES = {
    "prior with a zero": (
        lambda w: _train(w, "--prior", str(_bad_prior(w, "zero", [0.5, 0.5, 0, 0, 0, 0]))),
        "q_hat must be finite and > 0"),
    "prior with NaN": (
        lambda w: _train(w, "--prior", str(_bad_prior(w, "nan", [np.nan] + [0.2] * 5))),
        "q_hat must be finite and > 0"),
    "prior not summing to 1": (
        lambda w: _train(w, "--prior", str(_bad_prior(w, "sum", [0.3] * K))),
        "q_hat sums to"),
    "prior of another class set": (
        lambda w: _train(w, "--prior", str(_bad_prior(w, "k4", [0.25] * 4))),
        "expected one row per class"),
    "NaN in the features": (
        lambda w: _train(w, fd=_nan_features(w)), "row(s) with NaN/inf features"),
    "epochs 0": (
        lambda w: ["fit", "--method", "ce", "--features-dir", str(w["fd"]["bb0"]),
                   "--out", str(w["root"] / "bad" / "e0"), "--params", '{"epochs": 0}'],
        "epochs = 0 is invalid"),
    "unknown hyper-parameter": (
        lambda w: _train(w, "--params", '{"lr": 0.1, "lrr": 1}'), "unknown hyper-parameter"),
    "five-crop view of features extracted without it": (
        lambda w: _train(w, "--params", json.dumps({**FAST, "view": "fivecrop"})),
        "features have no five-crop view (extracted with extract.tte: none); re-extract them with "
        "extract.tte: both"),
    "unknown view": (
        lambda w: _train(w, "--params", json.dumps({**FAST, "view": "tte"})),
        "method 'ce': view = 'tte'; valid: auto, centre, fivecrop"),
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
        lambda w: ["combine", "--method", "backdoor", "--members",
                   str(w["runs"][("bb0", "la", 0)]), str(w["runs"][("bb1", "la", 1)]),
                   "--out", str(w["root"] / "bad" / "bd")],
        "seed"),
    "backdoor members of mixed methods": (
        lambda w: ["combine", "--method", "backdoor", "--members",
                   str(w["runs"][("bb0", "la", 0)]), str(w["runs"][("bb1", "ce", 0)]),
                   "--out", str(w["root"] / "bad" / "bd2")],
        "method"),
    "ensemble run list with a seed its members do not give": (
        lambda w: ["combine", "--runs", json.dumps([
            {"method": "backdoor", "seed": 1, "out": str(w["root"] / "bad" / "bd3"),
             "members": [str(w["runs"][(b, "la", 0)]) for b in ("bb0", "bb1")]}])],
        "members make an ensemble of seed 0, the run list says seed 1"),
    "combine run list with a run on features": (
        lambda w: ["combine", "--runs", json.dumps([
            {"method": "backdoor", "seed": 0, "out": str(w["root"] / "bad" / "bd4"),
             "members": [str(w["runs"][(b, "la", 0)]) for b in ("bb0", "bb1")]},
            {"method": "la", "seed": 0, "out": str(w["root"] / "bad" / "la")}])],
        "method 'la' consumes features, which `lt-bench combine` does not make runs from: "
        "`lt-bench fit --method la --features-dir"),
    "fit of a method that consumes runs": (
        lambda w: _train(w, method="backdoor"),
        "method 'backdoor' consumes runs, which `lt-bench fit` does not make runs from: "
        "`lt-bench combine --method backdoor --members RUN_DIR RUN_DIR ...`"),
    "combine run list with a base run": (
        lambda w: ["combine", "--runs", json.dumps([
            {"method": "backdoor", "seed": 0, "out": str(w["root"] / "bad" / "bd5"),
             "base": {"la": str(w["runs"][("bb0", "la", 0)])}}])],
        "--runs[0]: unknown key(s) ['base']; valid: ['members', 'method', 'out', 'params', "
        "'seed']"),
    "combine of an ensemble given no members": (
        lambda w: ["combine", "--method", "backdoor", "--out", str(w["root"] / "bad" / "bd6")],
        "method 'backdoor' combines finished runs: give them with --members"),
    "combine with --runs and --members": (
        lambda w: ["combine", "--members", str(w["runs"][("bb0", "la", 0)]), "--runs",
                   json.dumps([{"method": "backdoor", "seed": 0,
                                "out": str(w["root"] / "bad" / "bd7")}])],
        "--runs lists every run (method, out, seed, params, members): drop "
        "--method/--out/--params/--members"),
    "logits of a folder that is not a run": (
        lambda w: ["logits", str(w["root"]), "--out", str(w["root"] / "l.parquet")],
        "not a run folder"),
    "results folder under a file": (
        lambda w: ["fit", "--method", "ce", "--features-dir", str(w["fd"]["bb0"]),
                   "--out", str(w["prior"] / "run"), "--params", json.dumps(FAST)],
        "Not a directory"),
    "refused checkpoint": (
        lambda w: ["extract", "--dataset", "toy", "--split-dir", str(_toy_split(w)),
                   "--backbone", "toyclip0", "--checkpoint", str(_malicious_checkpoint(w)),
                   "--out-dir", str(w["root"] / "ext"), "--device", "cpu"],
        "not a plain state dict"),
    "a plugin whose import fails": (
        lambda w: _with_broken_plugin(w, _train(w)),
        "plugin 'lt-bench-broken-plugin' (entry point lt_bench.methods: broken = "
        "lt_bench_broken_plugin) failed to load: ModuleNotFoundError: No module named "
        "'lt_bench_no_such_dependency'; fix it, or uninstall it", _unbreak),
    "a config backbone whose file is missing": (
        lambda w: _extract_declared(w, "my_clip", {
            "library": "open_clip", "model": "lt-toy-vit-p8",
            "pretrained": str(w["root"] / "nowhere" / "my_clip.pt")}),
        "checkpoint for backbone 'my_clip' not found: "),
    "a config backbone whose sha256 differs": (
        lambda w: _extract_declared(w, "my_clip", {
            "library": "open_clip", "model": "lt-toy-vit-p8", "pretrained": str(w["prior"]),
            "sha256": "0" * 64}),
        "differs from " + "0" * 64 + " declared in config.yaml (backbones.my_clip.sha256)"),
    "a config backbone named like a built-in": (
        lambda w: _extract_declared(w, "clip_vit_b16", {
            "library": "open_clip", "model": "ViT-B-16", "pretrained": "/models/x.pt"}),
        "backbones.clip_vit_b16: the name clashes with the built-in backbone 'clip_vit_b16'; "
        "choose another name"),
    "an oltr_lists dataset with a label out of range": (
        lambda w: _user_lists(w, 4), "train.txt, line 3: label 4 is out of range [0, 4)"),
    "label beyond the class count (a list edited after prepare)": (
        lambda w: _train(w, fd=_label_past_k(w)),
        f"train.parquet: label {K} (row 3; 1 row(s) in all) is out of range [0, {K})"),
    "logits of a folder that is not a run folder": (
        lambda w: ["logits", str(_users_folder(w)), "--out",
                   str(w["root"] / "copies" / "users.parquet")],
        "config.json: not a run's config.json (no 'method' and 'dataset')"),
    "logits of an unfinished run (no metrics.json)": (
        lambda w: _logits_of(w, "unfinished"),
        "is not a finished run (no metrics.json)"),
    "logits of a run whose metrics.json is empty": (
        lambda w: _logits_of(w, "empty", ""), "metrics.json: empty; expected the JSON file"),
    "logits of a run whose metrics.json is not JSON": (
        lambda w: _logits_of(w, "invalid", "{top1: 0.5"), "metrics.json: not valid JSON"),
    "logits of a run whose metrics.json is a string": (
        lambda w: _logits_of(w, "string", '"done"'),
        "metrics.json: expected the JSON object of a finished run's metrics with a numeric "
        "top1, got str"),
    "epochs 1e12 (a float)": (
        lambda w: _train(w, "--params", '{"epochs": 1e12}'),
        "hyper-parameter epochs = 1000000000000.0 is invalid; expected an integer >= 1 "
        "<= 1000000"),
    "negative seed": (
        lambda w: _train(w, "--seed", "-1"),
        "argument --seed: expected an integer in [0, 2**32), got '-1'"),
    "--out is a user's folder with their config.json": (
        _into_users_folder,
        "users_folder: not empty and not a run folder of lt-bench (it holds 'config.json'); "
        "lt-bench never overwrites or deletes files it did not create",
        lambda w: _unchanged(w["root"] / "users_folder" / "config.json",
                             '{"lr": 0.1, "mine": true}\n')(w)),
    "--runs with two runs sharing one out folder": (
        lambda w: ["fit", "--features-dir", str(w["fd"]["bb0"]), "--runs", json.dumps([
            {"method": "la", "seed": 0, "out": str(_run_copy(w, "shared", (
                w["runs"][("bb0", "ce", 0)] / "metrics.json").read_text())),
             "params": FAST},
            {"method": "ce", "seed": 0, "out": str(w["root"] / "copies" / "shared" / "."),
             "params": FAST}])],
        "--runs[0] and --runs[1] share the out folder",
        lambda w: _unchanged(w["root"] / "copies" / "shared" / "metrics.json",
                             (w["runs"][("bb0", "ce", 0)] / "metrics.json").read_text())(w)),
    "a full disk while the run is saved": (
        lambda w: _train_to(w, _full_disk(w)),
        "no space left on the file system of"),
    "a locked MLflow SQLite store": (
        _locked_store,
        "mlflow.db stayed locked by another process for 2 s"),
    "cRT class-aware sampler drawing 0 images a class": (
        lambda w: _train(w, "--params", '{"num_samples_cls": 0}', method="crt"),
        "num_samples_cls = 0 is invalid"),
    "class-aware sampler on a head without num_samples_cls": (
        lambda w: _train(w, "--params", '{"sampler": "class_aware"}', method="la"),
        "sampler = 'class_aware' needs num_samples_cls"),
    "compare with no setting in common": (
        lambda w: ["compare", str(w["root"] / "runs"), str(_runs_copy(w, "cmp_other",
                                                                     _renamed_method)),
                   "--out-dir", str(w["root"] / "bad" / "cmp1")],
        "have no (dataset, backbone, method) in common"),
    "compare of runs on different test splits": (
        lambda w: ["compare", str(w["root"] / "runs"), str(_runs_copy(w, "cmp_split",
                                                                     _other_test_split)),
                   "--out-dir", str(w["root"] / "bad" / "cmp2")],
        "both sides need the same test split"),
    "32-bit float image in a split list": (  # _float_image: below, with the 16-bit test
        lambda w: _float_image(w),
        "32-bit float image (mode F); expected 8- or 16-bit integer pixels"),
    "k-NN bank that is not a split it may use": (
        lambda w: _train(w, "--params", '{"bank": "test"}', method="knn", out="knnbank"),
        "bank = 'test'; valid: train, val"),
    "a variant of an unknown base": (
        lambda w: _variant_fit(w, {"v": {"base": "lx", "tau": 0.5}}),
        "methods.v: unknown base 'lx'; valid bases: adaptformer_ce, ", _forget_variants),
    "a variant key its base does not accept": (
        lambda w: _variant_fit(w, {"v": {"base": "la", "gamma": 2.0}}),
        "methods.v: unknown hyper-parameter(s) ['gamma'] for base 'la'; valid: ['batch_size'",
        _forget_variants),
    "a variant named like a registered method": (
        lambda w: _variant_fit(w, {"ce": {"base": "la", "tau": 0.5}}, method="ce"),
        "methods.ce: a variant (it names a base) cannot take the name of the registered "
        "method 'ce'; choose another name", _forget_variants),
    "a variant of a variant": (
        lambda w: _variant_fit(w, {"la_tau05": {"base": "la", "tau": 0.5},
                                   "v": {"base": "la_tau05", "epochs": 3}}),
        "methods.v: base 'la_tau05' is itself a variant; a variant's base is a registered "
        "method", _forget_variants),
    "a variant whose display is not a string": (
        lambda w: _variant_fit(w, {"v": {"base": "la", "display": 3}}),
        "methods.v: display = 3; expected a non-empty string", _forget_variants),
    "a variant value of the wrong type": (
        lambda w: _variant_fit(w, {"v": {"base": "la", "tau": "0.5"}}),
        "methods.v: tau = '0.5'; expected a number (the method's default is 1.0)",
        _forget_variants),
    "config.yaml with a variant of an unknown base": (
        lambda w: _config_with(w, "la_tau05", {"base": "lla", "tau": 0.5}),
        "methods.la_tau05: unknown base 'lla'; valid bases: "),
    "config.yaml with a method key its class does not accept": (
        lambda w: _config_with(w, "la", {"tua": 0.5}),
        "methods.la: unknown hyper-parameter(s) ['tua']; valid: ['batch_size'"),
    "TTE row of a run that is not a fine-tuning": (
        lambda w: ["combine", "--method", "adaptformer_la_tte", "--members",
                   str(w["runs"][("bb0", "la", 0)]), "--out", str(w["root"] / "bad" / "tte")],
        "is a run of method 'la'; expected 'adaptformer_la'"),
    "extract with a split list missing": (
        lambda w: _split_copy(w, "no_val", lambda d: (d / "val.txt").unlink()),
        "val.txt not found; run the prepare stage for dataset 'toy' first"),
    "extract of an empty split list": (
        lambda w: _split_copy(w, "empty", lambda d: (d / "train.txt").write_text("")),
        "train.txt: the split list is empty; expected one '<image path> <label>' line per "
        "image"),
    "fit on a features folder missing a split's file": (
        _fit_without_val_features,
        "val.parquet; run the extract stage that makes it"),
    "logits of a knn run whose train features are gone": (
        _knn_logits_without_train_features,
        "train.parquet not found; the run rebuilds its logits from them: re-extract them, or "
        "rerun the knn run"),
    "LT_BENCH_GPU_WAIT_S not a number": (
        lambda w: _extract_on_gpus(w, LT_BENCH_FAKE_GPUS="2", LT_BENCH_GPU_WAIT_S="soon"),
        "LT_BENCH_GPU_WAIT_S must be a number of seconds, got 'soon'"),
    "LT_BENCH_FAKE_GPUS not an integer": (
        lambda w: _extract_on_gpus(w, LT_BENCH_FAKE_GPUS="four"),
        "LT_BENCH_FAKE_GPUS must be an integer (GPUs to pretend), got 'four'"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_clear_line_and_exit_2(world, case, capsys, monkeypatch):
    argv, expected, *kept = CASES[case]  # kept: checks that nothing computed was lost
    args = argv(world)
    args, env = args if isinstance(args, tuple) else (args, {})  # env: variables set/unset
    for name, value in env.items():
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    capsys.readouterr()
    try:
        rc = main(args)
    except SystemExit as e:  # argparse's own usage errors (they name the option)
        rc = e.code
    err = capsys.readouterr().err
    assert rc == 2, (case, err[-2000:])
    assert expected in err, (case, err[-2000:])
    assert "Traceback" not in err and "weights_only=False" not in err
    out = Path(args[args.index("--out") + 1]) if "--out" in args else None
    if out is not None and out.suffix == ".parquet":
        assert not out.exists()  # no logits from a refused run
    elif out is not None and out.suffix != ".json":
        assert not (out / "metrics.json").exists()
    for check in kept:
        check(world)


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
    assert main(["fit", "--method", "ce", "--features-dir", "results/features/toy/bb0",
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
    one argument (quoted with shlex), not break it (docs/architecture.md §9)."""
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


@pytest.mark.slow
def test_snakemake_unknown_method_in_a_suite_is_exactly_one_line(tmp_path):
    """The registries' config check (lt_bench/config.py) under Snakemake: one line, exit 2,
    no traceback lines (raised, Snakemake would append the frames of common.smk)."""
    import subprocess
    import sys

    from conftest import copy_workflow

    wf = copy_workflow(tmp_path / "wf")
    (wf / "bad.yaml").write_text("suite: bad\nsuites:\n  bad: {datasets: [toy], backbones: "
                                 "[toyclip0], methods: [ce, lx], seeds: [0]}\n")
    r = subprocess.run([sys.executable, "-m", "snakemake", "-n", "--cores", "1",
                        "--configfile", "bad.yaml"], cwd=wf, capture_output=True, text=True)
    assert r.returncode == 2, r.stdout + r.stderr
    own = [line for line in (r.stdout + r.stderr).splitlines()
           if not line.startswith(("Using workflow specific profile", "Config file "))]
    import yaml

    from lt_bench.methods import METHODS

    # the registered methods, then the config's variants (the paper suites' TTE twins)
    variants = [n for n, e in yaml.safe_load((wf / "config.yaml").read_text())["methods"].items()
                if "base" in (e or {})]
    assert variants and "la_tte" in variants
    valid = [n for n in METHODS.names() if METHODS.origin(n) != "config"] + variants
    assert own == ["config error: suites.bad.methods: unknown method 'lx'; valid methods: "
                   + ", ".join(valid)]
    assert not (wf / "results").exists()


def test_tables_by_hand_and_by_the_workflow_agree(world, tmp_path, capsys):
    """The same-backbone control's member runs at extra seeds (la at 1000, 2000) are
    finished runs under results/runs, but not rows of the tables: `lt-bench tables` by hand
    reads the workflow's index.txt (written from Plan.dataset_runs) and gives the same
    tables as the workflow's `--metrics` list (before: LA over 3 runs instead of 1)."""
    from lt_bench.plan import Plan
    from lt_bench.runs.folder import write_runs_index

    proj = tmp_path / "proj"
    runs = proj / "results" / "runs"
    la = {s: runs / "toy" / "toyclip0" / "la" / f"seed{s}" for s in (0, 1000, 2000)}
    for s, out in la.items():
        assert main(["fit", "--method", "la", "--features-dir", str(world["fd"]["bb0"]),
                     "--out", str(out), "--seed", str(s), "--params", json.dumps(FAST)]) == 0
    bsb = runs / "toy" / "toyclip0" / "backdoor_same_backbone" / "seed0"
    assert main(["combine", "--method", "backdoor_same_backbone", "--out", str(bsb),
                 "--members", *map(str, la.values())]) == 0
    plan = Plan({"suite": "s", "suites": {"s": {
        "datasets": ["toy"], "backbones": ["toyclip0"], "methods": ["la",
                                                                     "backdoor_same_backbone"],
        "seeds": [0]}}})
    listed = plan.dataset_runs("toy")  # what rule runs_index writes
    assert sorted(listed) == sorted(f"results/runs/toy/toyclip0/{m}/seed0/metrics.json"
                                    for m in ("la", "backdoor_same_backbone"))
    write_runs_index(listed, runs / "toy" / "index.txt")
    by_wf, by_hand = tmp_path / "wf_tables", tmp_path / "hand_tables"
    assert main(["tables", "--metrics", *(str(proj / f) for f in listed),
                 "--out-dir", str(by_wf)]) == 0
    assert main(["tables", "--runs-root", str(runs), "--out-dir", str(by_hand)]) == 0
    wf_main, hand_main = pd.read_csv(by_wf / "main.csv"), pd.read_csv(by_hand / "main.csv")
    pd.testing.assert_frame_equal(wf_main, hand_main)
    assert wf_main.set_index("method").loc["la", "n_seeds"] == 1
    assert (by_wf / "runs.csv").read_text().count("\n") == (
        by_hand / "runs.csv").read_text().count("\n") == 3  # header + 2 runs
    # runs made by hand only (no workflow, no index): every finished run, as before
    (runs / "toy" / "index.txt").unlink()
    assert main(["tables", "--runs-root", str(runs), "--out-dir", str(tmp_path / "all")]) == 0
    assert pd.read_csv(tmp_path / "all" / "main.csv").set_index("method").loc[
        "la", "n_seeds"] == 3
# --- images wider than 8 bits (appended rows: 16-bit PNGs were read as white) ------------

def _places_layout(root: Path, image: Path) -> tuple[Path, Path]:
    """A Places-LT split dir and data_root listing one image (``val/c/<name>``) three times."""
    import shutil

    data = root / "data"
    (data / "train" / "c").mkdir(parents=True)
    (data / "val" / "c").mkdir(parents=True)
    shutil.copyfile(image, data / "val" / "c" / image.name)
    shutil.copyfile(image, data / "train" / "c" / image.name)
    splits = root / "splits"
    splits.mkdir()
    for s, rel in (("train", f"train/c/{image.name}"), ("val", f"val/c/{image.name}"),
                   ("test", f"val/c/{image.name}")):
        (splits / f"{s}.txt").write_text(f"{rel} 0\n")
    return splits, data


def _float_image(world):
    from PIL import Image

    path = world["root"] / "float_img" / "f.png"  # a TIFF in disguise: PNG has no floats
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((8, 8), 0.5, np.float32)).save(path, format="TIFF")
    splits, data = _places_layout(path.parent / "w", path)
    return ["verify-images", "places_lt", "--split-dir", str(splits), "--data-root",
            str(data), "--out", str(path.parent / "verified.json")]


def test_16_bit_png_is_scaled_to_8_bits_by_every_reader(tmp_path, capsys):
    """A 16-bit grayscale PNG (PIL mode I;16) reaches extraction, the GPU-decode fallback,
    fine-tuning and verify-images as 8-bit RGB v >> 8 (torchvision's uint16 -> uint8), not
    as PIL's convert("RGB"), which clips at 255: a white image."""
    from PIL import Image

    from lt_bench.features.decode import pil_tensor
    from lt_bench.features.images import ImageListDataset
    from lt_bench.finetune.images import ImageItems

    raw = np.array([[0, 255, 256, 1000], [32768, 40000, 65280, 65535]], dtype=np.uint16)
    png = tmp_path / "g16.png"
    Image.fromarray(raw).save(png)
    with Image.open(png) as im:
        assert im.mode == "I;16"
        assert np.asarray(im.convert("RGB")).max(initial=0) == 255  # what PIL alone gives
    want = np.repeat((raw >> 8).astype(np.uint8)[..., None], 3, axis=2)
    assert want[1].tolist() == [[128] * 3, [156] * 3, [255] * 3, [255] * 3]
    assert want[0].tolist() == [[0] * 3, [0] * 3, [1] * 3, [3] * 3]

    ds = ImageListDataset(tmp_path, [png.name], np.zeros(1, np.int64), transform=np.asarray)
    assert np.array_equal(ds[0][0], want)
    assert np.array_equal(pil_tensor(png.read_bytes()).permute(1, 2, 0).numpy(), want)
    items = ImageItems(tmp_path, [(png.name, 0)], transform=np.asarray, split="train")
    assert np.array_equal(np.asarray(items._load(0)), want)

    splits, data = _places_layout(tmp_path / "w", png)
    out = tmp_path / "verified.json"
    assert main(["verify-images", "places_lt", "--split-dir", str(splits), "--data-root",
                 str(data), "--out", str(out)]) == 0, capsys.readouterr().err
    report = json.loads(out.read_text())
    assert report["ok"] and report["n_corrupt"] == 0 and report["n_sampled"] == 2


# --- one convention: a UserError is one line and exit 2; a bare ValueError is a bug -------

@pytest.mark.parametrize("error, user_error", [
    (ValueError("a bug"), False), (KeyError("a bug"), False),
    (AssertionError("a caller's bug"), False),
    (InputValidationError("--x: bad; expected y"), True),
    (MissingInputError("/nowhere: no such file"), True),
    (ConfigError("suites.s.methods: unknown method 'lx'"), True),
    (UnknownNameError("unknown method 'lx'; valid methods: ce"), True),
    (DuplicateNameError("method 'la' is registered twice (first by built-in)"), True),
    (PermissionError(13, "Permission denied", "/ro"), True),
])
def test_only_user_errors_are_one_line(monkeypatch, capsys, error, user_error):
    """A command failing with ``error`` (injected: no input reaches these as a bare error any
    more): a UserError or an OSError prints one line and exits 2; anything else is a bug and
    shows its traceback (the exception reaches the caller)."""
    import lt_bench.cli as cli

    def fails(args):
        raise error

    monkeypatch.setattr(cli, "cmd_list", fails)
    if not user_error:
        with pytest.raises(type(error)):
            main(["list", "methods"])
        return
    assert main(["list", "methods"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("lt-bench list: error: "), err
    assert ("permission denied (/ro)" in err) if isinstance(error, PermissionError) else (
        str(error) in err)
