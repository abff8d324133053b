"""`lt-bench doctor` and `lt-bench fetch-weights` run as a user would, against what a real
machine looks like: ImageNet-LT's real folder layout and list format (through
``split_dir_local``, as LIFT ships them), tiny JPEGs, an open_clip architecture with random
weights saved as the user's checkpoint, a real SQLite store, and the real one-node SLURM
cluster for the profile checks."""

from __future__ import annotations

import hashlib
import json
import socket
import sqlite3
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import save_random_toy_checkpoint
from PIL import Image

from lt_bench.cli import main
from lt_bench.doctor import FAIL, OK, estimate_bytes, run_bytes
from lt_bench.plan import Plan

REPO = Path(__file__).resolve().parents[1]
WNIDS = ["n01440764", "n01443537", "n01484850", "n01491361"]


def _jpeg(path: Path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (24, 24, 3), dtype=np.uint8)).save(path, "JPEG")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A user's checkpoint: the toy architecture with random weights, saved as a state dict."""
    return save_random_toy_checkpoint(tmp_path_factory.mktemp("ckpt") / "my_clip.pt")


@pytest.fixture
def world(tmp_path, checkpoint, monkeypatch):
    """ImageNet-LT as on a user's disk (ILSVRC root, LIFT's lists) and a config for it."""
    datasets = tmp_path / "datasets"  # data_root; ImageNet under data_dirs.imagenet_lt
    root = datasets / "imagenet"
    lists = tmp_path / "lift_datasets" / "ImageNet_LT"
    lists.mkdir(parents=True)
    rows: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    for c, wnid in enumerate(WNIDS):
        for i in range(6 - c):
            rel = f"train/{wnid}/{wnid}_{i}.JPEG"
            _jpeg(root / rel, 100 * c + i)
            rows["train"].append(f"{rel} {c}")
        for split in ("val", "test"):
            rel = f"val/{wnid}/ILSVRC2012_val_{split}_{c}.JPEG"
            _jpeg(root / rel, 1000 + 10 * c + len(split))
            rows[split].append(f"{rel} {c}")
    for split, lines in rows.items():
        (lists / f"ImageNet_LT_{split}.txt").write_text("\n".join(lines) + "\n")
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    backbone = "my_clip"  # the user's checkpoint, declared as in config.yaml
    config["backbones"] = {backbone: {"library": "open_clip", "model": "lt-toy-vit-p8",
                                      "pretrained": str(checkpoint)}}
    config["suites"]["realish"] = {"datasets": ["imagenet_lt"], "backbones": [backbone],
                                   "methods": ["zero_shot", "la"], "seeds": [0]}
    config["suite"] = "realish"
    config["data_root"] = str(datasets)
    config["data_dirs"] = {"imagenet_lt": "imagenet"}
    config["datasets"]["imagenet_lt"] = {"split_dir_local": str(lists.parent)}
    cfg = tmp_path / "config.yaml"
    cfg.write_text(yaml.safe_dump(config))
    monkeypatch.chdir(tmp_path)  # no resources/data here: the lists come from split_dir_local
    return {"root": root, "config": cfg, "lock": tmp_path / "weights.lock",
            "backbone": backbone, "checkpoint": checkpoint, "tmp": tmp_path}


def _doctor(world, capsys, *extra: str) -> tuple[int, str]:
    rc = main(["doctor", "--configfile", str(world["config"]), "--lock", str(world["lock"]),
               "--results", str(world["tmp"] / "results"), "--tracking-uri",
               f"sqlite:///{world['tmp'] / 'mlflow.db'}", *extra])
    out = capsys.readouterr()
    return rc, out.out + out.err


def _line(text: str, check: str) -> str:
    """The first check line (not a fix line) that mentions ``check``."""
    return next(ln for ln in text.splitlines() if check in ln and ln[:1] in "✓✗!")


def test_doctor_passes_on_real_layout_data_with_pinned_weights(world, capsys):
    rc = main(["fetch-weights", "--configfile", str(world["config"]), "--lock",
               str(world["lock"]), "--offline"])
    assert rc == 0
    lock = json.loads(world["lock"].read_text())
    want = hashlib.sha256(world["checkpoint"].read_bytes()).hexdigest()
    assert lock["weights"] == [{"backbone": world["backbone"], "source": "file",
                                "file": str(world["checkpoint"].resolve()), "sha256": want}]
    capsys.readouterr()
    rc, text = _doctor(world, capsys)
    assert rc == 0, text
    assert FAIL not in text
    for split, n in (("train", 6 + 5 + 4 + 3), ("val", 4), ("test", 4)):
        assert f"{n} sampled images over 4 classes decode" in _line(text, f"imagenet_lt {split}")
    assert "matches the lock" in _line(text, "weights") and want[:12] in text
    assert OK in _line(text, "tracking") and "all checks passed" in text


def test_doctor_samples_spread_over_classes(world, capsys):
    rc, text = _doctor(world, capsys, "--sample", "3")
    # 3 images of train: one per class of the first three classes, not three of class 0
    assert "3 sampled images over 3 classes" in _line(text, "imagenet_lt train")
    assert rc == 0


def test_doctor_on_this_machine_names_every_fix(tmp_path, monkeypatch, capsys):
    """The paper suite here (no data, no weights, no GPU): exit 2, each ✗ with its fix."""
    monkeypatch.chdir(tmp_path)
    lock = tmp_path / "none.lock"
    rc = main(["doctor", "--configfile", str(REPO / "config.yaml"), "--suite", "paper",
               "--lock", str(lock), "--results", str(tmp_path / "results")])
    text = capsys.readouterr().out
    assert rc == 2
    for d in ("imagenet_lt", "places_lt", "inat2018"):
        line = _line(text, f"{d} images")
        assert line.startswith(FAIL) and "data_root" in line
    for b in ("clip_vit_b16", "openclip_vit_b16", "metaclip_vit_b16"):
        assert _line(text, f" {b} ").startswith(FAIL)
    fixes = [ln for ln in text.splitlines() if ln.strip().startswith("fix:")]
    fails = [ln for ln in text.splitlines() if ln.startswith(FAIL)]
    assert len(fixes) >= len(fails) == 6
    assert "no GPU visible here" in text and "some checks failed" in text


def _break_image(world):
    (world["root"] / "train" / WNIDS[1] / f"{WNIDS[1]}_0.JPEG").write_bytes(b"\xff\xd8 not a jpeg")


def _drop_image(world):
    (world["root"] / "val" / WNIDS[2] / "ILSVRC2012_val_val_2.JPEG").unlink()


def _write_lock(world, **entry):
    world["lock"].write_text(json.dumps({"version": 1, "weights": [entry]}))


def _changed_checkpoint(world):
    _write_lock(world, backbone=world["backbone"], source="file",
                file=str(world["checkpoint"]), sha256="0" * 64)


def _foreign_lock(world):
    _write_lock(world, backbone="clip_vit_b16", source="open_clip:ViT-B-16-quickgelu/openai",
                file="/cache/x.bin", sha256="1" * 64)


def _declared(world, **change):
    cfg = yaml.safe_load(world["config"].read_text())
    cfg["backbones"][world["backbone"]].update(change)
    world["config"].write_text(yaml.safe_dump(cfg))


def _no_data_root(world):
    cfg = yaml.safe_load(world["config"].read_text())
    cfg["data_root"] = str(world["tmp"] / "elsewhere")
    world["config"].write_text(yaml.safe_dump(cfg))


def _locked_store(world):
    db = world["tmp"] / "mlflow.db"
    con = sqlite3.connect(db, isolation_level=None)
    con.execute("CREATE TABLE t (x)")
    con.execute("BEGIN EXCLUSIVE")
    world["held"] = con  # kept open until the test ends


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _huge_suite(world):
    cfg = yaml.safe_load(world["config"].read_text())
    cfg["suites"]["realish"]["datasets"] = ["toy"]
    cfg["datasets"]["toy"].update(num_classes=1000, max_per_class=10**9)
    world["config"].write_text(yaml.safe_dump(cfg))


# (case, how to break the world, extra args, the check's name, what its line must say)
BROKEN = [
    ("corrupt image", _break_image, (), "imagenet_lt train images",
     f"1 of 18 sampled images do not decode, e.g. .*{WNIDS[1]}_0.JPEG"),
    ("missing image", _drop_image, (), "imagenet_lt val images",
     "1 of 4 sampled images missing, e.g. .*ILSVRC2012_val_val_2.JPEG"),
    ("checkpoint differs from the lock", _changed_checkpoint, (), "weights",
     "sha256 [0-9a-f]{64} differs from 0{64} pinned in"),
    ("checkpoint differs from its declared sha256", lambda w: _declared(w, sha256="ab" * 32),
     (), "weights", "sha256 [0-9a-f]{64} differs from (ab){32} declared in config.yaml"),
    ("declared file missing", lambda w: _declared(w, pretrained="/nowhere/my_clip.pt"), (),
     "weights", "/nowhere/my_clip.pt not found offline"),
    ("declared tag trained with QuickGELU on a GELU config",
     lambda w: _declared(w, model="ViT-B-16", pretrained="openai"), (), "weights",
     "trained with QuickGELU but model config 'ViT-B-16' uses GELU.*ViT-B-16-quickgelu"),
    ("lock of another suite", _foreign_lock, (), "weights.lock",
     "pins clip_vit_b16, not a backbone of this suite"),
    ("data_root missing", _no_data_root, (), "imagenet_lt images", "is not a directory"),
    ("tracking store locked", _locked_store, (), "tracking", "database is locked"),
    ("tracking server down", lambda w: None,
     ("--tracking-uri", f"http://127.0.0.1:{_free_port()}"), "tracking", "not reachable"),
    ("disk too small for the suite", _huge_suite, (), "results/", "GiB needed"),
]


@pytest.mark.parametrize("case,breaks,extra,check,says", BROKEN, ids=[b[0] for b in BROKEN])
def test_doctor_fails_one_line_per_broken_thing(world, capsys, case, breaks, extra, check,
                                                says):
    import re

    breaks(world)
    rc, text = _doctor(world, capsys, *extra)
    line = _line(text, check)
    assert rc == 2, text
    assert line.startswith(FAIL), line
    assert re.search(says, line), line
    # every failed line is followed by its fix
    lines = text.splitlines()
    i = lines.index(line)
    assert lines[i + 1].strip().startswith("fix:"), lines[i: i + 2]
    world.pop("held", None)


def test_extraction_refuses_a_checkpoint_that_differs_from_the_lock(world, capsys,
                                                                    monkeypatch):
    """The loader, not only doctor: extraction names both hashes and writes nothing."""
    _changed_checkpoint(world)
    monkeypatch.setenv("LT_BENCH_WEIGHTS_LOCK", str(world["lock"]))
    from lt_bench.backbones.base import load_backbone
    from lt_bench.backbones.declared import declare_backbone
    from lt_bench.backbones.weights import WeightsError

    declare_backbone(world["backbone"], yaml.safe_load(world["config"].read_text())[
        "backbones"][world["backbone"]])  # as --backbone-spec does in an extraction job
    with pytest.raises(WeightsError, match=r"sha256 [0-9a-f]{64} differs from 0{64}"):
        load_backbone(world["backbone"])
    main(["fetch-weights", "--configfile", str(world["config"]), "--lock",
          str(world["lock"]), "--offline"])
    bb = load_backbone(world["backbone"])  # the pinned file itself loads
    assert Path(bb.pretrained) == world["checkpoint"]


def test_fetch_weights_without_the_file_is_one_line(world, capsys):
    cfg = yaml.safe_load(world["config"].read_text())
    cfg["backbones"]["my_clip"]["pretrained"] = "/nowhere/my_clip.pt"
    world["config"].write_text(yaml.safe_dump(cfg))
    rc = main(["fetch-weights", "--configfile", str(world["config"]), "--lock",
               str(world["lock"]), "--offline"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1
    assert "weights not found in the local cache" in err[0] and "/nowhere/my_clip.pt" in err[0]
    assert not world["lock"].exists()


def test_disk_estimate_is_the_sum_of_its_formulas(tmp_path, monkeypatch):
    """The demo's estimate written out by hand from the documented per-file formulas."""
    monkeypatch.chdir(tmp_path)  # no prepared lists here: the shape comes from the params
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    plan = Plan(config)
    p = config["datasets"]["toy"]
    k = p["num_classes"]
    train = sum(max(1, round(p["max_per_class"] * p["imbalance"] ** (-i / (k - 1))))
                for i in range(k))
    n_eval = (p["val_per_class"] + p["test_per_class"]) * k
    d = 64  # the toy CLIPs' feature
    per_row = d * 2 + 64
    feats = 3 * ((train + n_eval) * per_row + k * 512 * 4 * 2)
    runs = plan.per_backbone_runs() + plan.ensemble_runs()
    by_kind = {c: sum(1 for r in runs if plan.consumes(r[2]) == c)
               for c in ("features", "runs", "images")}
    ens_dim = 768  # ensembles have no feature dimension of their own (unused for them)
    want = (feats + sum(n * run_bytes(c, n_eval, k, d if c != "runs" else ens_dim)
                        for c, n in by_kind.items())
            + len(runs) * (48 * k + 8_192))
    got, unknown = estimate_bytes(plan)
    assert unknown == [] and got == want
    assert by_kind["images"] == 3
    # a fine-tuned run at iNat2018's shape: what benchmarks/finetune_storage.py measured
    # (176.7 MB with both views) within the adapters' allowance
    assert 170e6 < run_bytes("images", 2 * 24_426, 8_142, 768) < 185e6


@pytest.mark.slurm
def test_doctor_checks_the_slurm_profile_against_the_cluster(world, capsys, slurm_cluster,
                                                             tmp_path):
    rc, text = _doctor(world, capsys, "--profile", str(REPO / "profiles" / "slurm-local-test"))
    assert _line(text, "partition debug").startswith(OK)
    assert _line(text, "GPU gres").startswith(OK)
    bad = tmp_path / "bad-profile"
    bad.mkdir()
    prof = yaml.safe_load((REPO / "profiles" / "slurm-local-test" / "config.yaml").read_text())
    prof["default-resources"]["slurm_partition"] = "gpu_a100"
    (bad / "config.yaml").write_text(yaml.safe_dump(prof))
    rc, text = _doctor(world, capsys, "--profile", str(bad))
    line = _line(text, "partition gpu_a100")
    assert rc == 2 and line.startswith(FAIL) and "have: debug" in line
