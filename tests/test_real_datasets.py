"""Real datasets on fabricated files: pinned-split checks, image checks, CIFAR-LT plan.

No test touches the internet: split lists come from a loopback HTTP server or a local
folder, with the pinned checksums/statistics monkeypatched to those of the fabricated
files (the real pinned values stay in the module and are checked against docs/architecture.md §6).
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import tarfile
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lt_bench.cli import main as cli_main
from lt_bench.data import DATASETS, base, cifar, get_dataset, images, lift
from lt_bench.data.cli import main as data_main
from lt_bench.data.download import ChecksumMismatchError
from lt_bench.data.splits import (
    group_counts,
    read_classnames,
    read_group_counts,
    read_split,
    split_hash,
    split_stats,
)
from lt_bench.io import git_blob_id

# ----------------------------------------------------------------------------- fixtures


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def http_dir(tmp_path):
    """A loopback HTTP server over a folder; yields (folder, base_url)."""
    root = tmp_path / "www"
    root.mkdir()
    srv = ThreadingHTTPServer(("127.0.0.1", 0),
                              functools.partial(_QuietHandler, directory=str(root)))
    threading.Thread(target=srv.serve_forever, args=(0.05,), daemon=True).start()
    yield root, f"http://127.0.0.1:{srv.server_address[1]}/datasets"
    srv.shutdown()
    srv.server_close()


def _places_like(folder: Path, k: int = 3) -> dict[str, Path]:
    """Fabricated Places_LT files in LIFT's layout: k classes, train 5/3/2, val 2/class."""
    d = folder / "Places_LT"
    d.mkdir(parents=True)
    train = [(f"train/c{c}/{i:08d}.jpg", c) for c, n in enumerate([5, 3, 2][:k]) for i in range(n)]
    val = [(f"train/c{c}/v{i}.jpg", c) for c in range(k) for i in range(2)]
    test = [(f"val/c{c}/t{i}.jpg", c) for c in range(k) for i in range(2)]
    files = {}
    for role, rows in (("train", train), ("val", val), ("test", test)):
        p = d / f"Places_LT_{role}.txt"
        p.write_text("".join(f"{r} {y}\n" for r, y in rows))
        files[role] = p
    files["classnames"] = d / "classnames.txt"
    files["classnames"].write_text("".join(f"c{c} class {c}\n" for c in range(k)))
    return files


def _pin(monkeypatch, cls, files, *, sha=True, stats=None):
    """Point a dataset's pinned checksums and statistics at fabricated files."""
    sources = {
        role: lift.SourceFile(f"{p.parent.name}/{p.name}", git_blob_id(p),
                              hashlib.sha256(p.read_bytes()).hexdigest() if sha else None)
        for role, p in files.items()
    }
    monkeypatch.setattr(cls, "sources", sources)
    monkeypatch.setattr(cls, "num_classes", 3)
    if stats is None:
        stats = {role: {k: v for k, v in split_stats(files[role], 3).items()
                        if k in ("n_images", "n_classes", "max_count", "min_count")}
                 for role in files if role in ("train", "val", "test")}
    monkeypatch.setattr(cls, "expected_stats", stats)


# ----------------------------------------------------------------------------- registry & pins


def test_registered_datasets():
    for name, k in [("imagenet_lt", 1000), ("places_lt", 365), ("inat2018", 8142),
                    ("cifar100_lt", 100)]:
        assert DATASETS.get(name).num_classes == k
    # the datasets whose images are the user's files (the workflow asks this, not the class
    # tree): the real ones under data_root, and a user's own lists (oltr_lists)
    assert [n for n in DATASETS.names() if DATASETS.get(n).needs_data_root] == [
        "imagenet_lt", "inat2018", "oltr_lists", "places_lt"]


def test_pinned_constants_match_design():
    assert lift.LIFT_BASE_URL == ("https://raw.githubusercontent.com/shijxcs/LIFT/"
                                  "661ead9b78368f05ba79abe4672d63154467f823/datasets")
    assert lift.IMAGENET_LT_SOURCES["train"].known_hash == (
        "gitblob:a063f095fcd475db4cf8b0658c4b73955535bbf9")
    assert lift.PLACES_LT_SOURCES["train"].known_hash.startswith("sha256:726c4871")
    assert lift.INAT2018_SOURCES["categories"].relpath == "iNaturalist18/categories.json"
    assert lift.IMAGENET_LT_STATS["train"] == {
        "n_images": 115_846, "n_classes": 1000, "max_count": 1280, "min_count": 5}
    assert lift.INAT2018_STATS["val"]["n_images"] == 24_426
    assert images.IMAGE_ARCHIVES["inat2018"].known_hash == "md5:b1c6952ce38f31868cc50ea72d066cc3"
    assert images.IMAGE_ARCHIVES["places_lt"].known_hash is None  # none published


def test_unknown_param_lists_valid_ones():
    with pytest.raises(base.UnknownParamError, match="split_base_url"):
        get_dataset("places_lt", split_url="x")


# ----------------------------------------------------------------------------- prepare


def test_prepare_from_loopback_server(http_dir, tmp_path, monkeypatch):
    www, base = http_dir
    files = _places_like(www / "datasets")
    _pin(monkeypatch, lift.PlacesLT, files)
    out = tmp_path / "split"
    get_dataset("places_lt", split_base_url=base).prepare(out)
    for split in ("train", "val", "test"):
        assert (out / f"{split}.txt").read_bytes() == files[split].read_bytes()
    assert read_classnames(out / "classnames.txt") == ["class 0", "class 1", "class 2"]
    assert split_hash(out / "train.txt") == lift.PlacesLT.sources["train"].sha256


def test_prepare_tampered_file_names_hashes_and_keeps_nothing(http_dir, tmp_path, monkeypatch):
    www, base = http_dir
    files = _places_like(www / "datasets")
    _pin(monkeypatch, lift.PlacesLT, files)
    files["val"].write_text(files["val"].read_text() + "train/c0/extra.jpg 0\n")  # tampered
    out = tmp_path / "split"
    with pytest.raises(ChecksumMismatchError) as err:
        get_dataset("places_lt", split_base_url=base).prepare(out)
    msg = str(err.value)
    assert "Places_LT_val.txt" in msg
    assert lift.PlacesLT.sources["val"].sha256 in msg
    assert hashlib.sha256(files["val"].read_bytes()).hexdigest() in msg
    assert not (out / "source" / "Places_LT_val.txt").exists()
    assert not any((out / n).exists() for n in ("train.txt", "val.txt", "test.txt"))


def test_prepare_from_split_dir_local_with_git_blob_pins(tmp_path, monkeypatch):
    local = tmp_path / "my_lift_files"
    files = _places_like(local)
    _pin(monkeypatch, lift.PlacesLT, files, sha=False)  # verified by git blob id only
    out = tmp_path / "split"
    get_dataset("places_lt", split_dir_local=str(local)).prepare(out)
    assert read_split(out / "train.txt")[1] == [0] * 5 + [1] * 3 + [2] * 2
    # a flat folder (no Places_LT/ subfolder) works too
    flat = tmp_path / "flat"
    flat.mkdir()
    for p in files.values():
        (flat / p.name).write_bytes(p.read_bytes())
    get_dataset("places_lt", split_dir_local=str(flat)).prepare(tmp_path / "split2")


def test_prepare_wrong_statistics_names_file_and_values(tmp_path, monkeypatch):
    local = tmp_path / "lift"
    files = _places_like(local)
    stats = {"train": {"n_images": 10, "n_classes": 3, "max_count": 6, "min_count": 2}}
    _pin(monkeypatch, lift.PlacesLT, files, stats=stats)
    out = tmp_path / "split"
    with pytest.raises(lift.SplitVerificationError) as err:
        get_dataset("places_lt", split_dir_local=str(local)).prepare(out)
    assert "Places_LT_train.txt" in str(err.value)
    assert "max_count: expected 6, got 5" in str(err.value)
    assert not (out / "train.txt").exists()
    assert not (out / "source" / "Places_LT_train.txt").exists()


def test_cli_prepare_with_params(tmp_path, monkeypatch, capsys):
    local = tmp_path / "lift"
    _pin(monkeypatch, lift.PlacesLT, _places_like(local))
    out = tmp_path / "split"
    data_main(["prepare", "places_lt", "--out", str(out),
               "--params", json.dumps({"split_dir_local": str(local)})])
    printed = json.loads(capsys.readouterr().out)
    assert printed["train"]["n_images"] == 10 and (out / "classnames.txt").exists()
    assert cli_main(["prepare", "places_lt", "--out", str(out),
                     "--params", '{"nope": 1}']) == 2
    assert "valid: split_base_url, split_dir_local" in capsys.readouterr().err


def test_prepare_missing_local_file_says_where_it_looked(tmp_path, monkeypatch):
    local = tmp_path / "lift"
    files = _places_like(local)
    _pin(monkeypatch, lift.PlacesLT, files)
    files["test"].unlink()
    with pytest.raises(FileNotFoundError, match="Places_LT_test.txt not found; looked for"):
        get_dataset("places_lt", split_dir_local=str(local)).prepare(tmp_path / "split")


def _inat_like(folder: Path, categories) -> dict[str, Path]:
    d = folder / "iNaturalist18"
    d.mkdir(parents=True)
    counts = [6, 4, 2]
    train = [(f"train_val2018/K/{c}/{i}.jpg", c) for c, n in enumerate(counts) for i in range(n)]
    val = [(f"train_val2018/K/{c}/v{i}.jpg", c) for c in range(3) for i in range(3)]
    files = {"train": d / "iNaturalist18_train.txt", "val": d / "iNaturalist18_val.txt",
             "categories": d / "categories.json"}
    files["train"].write_text("".join(f"{r} {y}\n" for r, y in train))
    files["val"].write_text("".join(f"{r} {y}\n" for r, y in val))
    files["categories"].write_text(json.dumps(categories))
    return files


LIFT_STYLE = [{"id": 1, "name": "Beta", "kingdom": "Animalia"},
              {"id": 0, "name": "Alpha", "kingdom": "Animalia"},
              {"id": 2, "name": "Gamma", "kingdom": "Plantae"}]


@pytest.mark.parametrize("categories", [
    LIFT_STYLE, {"categories": LIFT_STYLE}, ["Alpha", "Beta", "Gamma"],
    {"0": "Alpha", "1": "Beta", "2": "Gamma"},
])
def test_inat_default_policy_keeps_train_and_tests_on_official_val(tmp_path, monkeypatch,
                                                                  categories):
    files = _inat_like(tmp_path / "lift", categories)
    _pin(monkeypatch, lift.INat2018, files)
    out = tmp_path / "split"
    ds = get_dataset("inat2018", split_dir_local=str(tmp_path / "lift"), val_per_class=3)
    ds.prepare(out)
    assert ds.val_overlaps_train is True
    assert (out / "train.txt").read_bytes() == files["train"].read_bytes()  # protocol-exact
    assert (out / "test.txt").read_bytes() == files["val"].read_bytes()  # official val = test
    val_paths, val_labels = read_split(out / "val.txt")
    assert np.bincount(val_labels).tolist() == [3, 3, 2]  # balanced, capped by class size
    assert set(val_paths) <= set(read_split(out / "train.txt")[0])
    assert not set(val_paths) & set(read_split(out / "test.txt")[0])
    assert read_classnames(out / "classnames.txt") == ["Alpha", "Beta", "Gamma"]
    # the documented exception is recorded, not refused
    check = json.loads((out / "splits_check.json").read_text())
    assert check["val_subset_of_train"] is True and check["val_in_train"] == 8


def test_inat_holdout_policy_is_disjoint_and_deterministic(tmp_path, monkeypatch):
    files = _inat_like(tmp_path / "lift", LIFT_STYLE)
    _pin(monkeypatch, lift.INat2018, files)
    outs = []
    for name in ("a", "b"):
        out = tmp_path / name
        ds = get_dataset("inat2018", split_dir_local=str(tmp_path / "lift"),
                         val_policy="holdout", val_per_class=2, seed=7)
        ds.prepare(out)
        outs.append(out)
    assert ds.val_overlaps_train is False
    train_paths, train_labels = read_split(outs[0] / "train.txt")
    val_paths, val_labels = read_split(outs[0] / "val.txt")
    assert not set(train_paths) & set(val_paths)
    assert np.bincount(val_labels).tolist() == [2, 2, 1]  # every class keeps >= 1 train image
    assert np.bincount(train_labels).tolist() == [4, 2, 1]
    assert (outs[0] / "val.txt").read_bytes() == (outs[1] / "val.txt").read_bytes()
    with pytest.raises(base.DatasetParamError, match="val_policy"):
        get_dataset("inat2018", val_policy="test")


def test_balanced_sample_handles_many_classes_fast():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 8142, size=437_513)
    idx = lift.balanced_sample(labels, 3, seed=0)
    counts = np.bincount(labels[idx], minlength=8142)
    assert counts.max() == 3 and (counts == np.minimum(3, np.bincount(labels, minlength=8142))).all()


# ----------------------------------------------------------------------------- images


def _jpeg(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), (10, 200, 30)).save(path, format="JPEG")


def _image_tree(tmp_path):
    """A fabricated Places-style image root and split dir with one missing, one corrupt file."""
    split_dir, root = tmp_path / "split", tmp_path / "places365_standard"
    rows = {"train": [("train/c0/a.jpg", 0), ("train/c1/b.jpg", 1), ("train/c1/c.jpg", 1)],
            "val": [("train/c0/d.jpg", 0)], "test": [("val/c0/e.jpg", 0), ("val/c1/f.jpg", 1)]}
    split_dir.mkdir()
    for split, items in rows.items():
        (split_dir / f"{split}.txt").write_text("".join(f"{r} {y}\n" for r, y in items))
        for r, _ in items:
            _jpeg(root / r)
    (root / "train/c1/c.jpg").unlink()  # missing
    (root / "val/c1/f.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")  # corrupt
    return split_dir, root


def test_verify_images_names_missing_and_corrupt(tmp_path):
    split_dir, root = _image_tree(tmp_path)
    report = images.verify_images("places_lt", split_dir, root, sample=100)
    assert not report["ok"]
    assert report["n_listed"] == 6 and report["n_missing"] == 1
    assert report["missing_examples"] == ["train/c1/c.jpg"]
    assert [c["path"] for c in report["corrupt_examples"]] == ["val/c1/f.jpg"]
    assert "train/c1/c.jpg" in report["error"] and "val/c1/f.jpg" in report["error"]
    assert "easy directory structure" in report["error"]  # the expected layout
    with pytest.raises(images.ImageVerificationError):
        images.verify_images("places_lt", split_dir, root, strict=True)


def test_verify_images_accepts_parent_of_places365_standard(tmp_path):
    split_dir, root = _image_tree(tmp_path)
    (root / "train/c1").mkdir(exist_ok=True)
    _jpeg(root / "train/c1/c.jpg")
    _jpeg(root / "val/c1/f.jpg")
    report = images.verify_images("places_lt", split_dir, tmp_path, sample=100)
    assert report["ok"] and report["image_root"] == str(root) and report["error"] is None


def test_cli_verify_exits_2_naming_both_files(tmp_path, capsys):
    split_dir, root = _image_tree(tmp_path)
    assert cli_main(["verify-images", "places_lt", "--data-root", str(root),
                     "--split-dir", str(split_dir)]) == 2
    captured = capsys.readouterr()
    assert "train/c1/c.jpg" in captured.err and "val/c1/f.jpg" in captured.err
    assert json.loads(captured.out)["n_missing"] == 1


@pytest.mark.parametrize("name, needle", [
    ("imagenet_lt", "image-net.org"), ("places_lt", "easy directory structure"),
    ("inat2018", "train_val2018/"),
])
def test_missing_data_root_says_which_key_and_layout(tmp_path, name, needle):
    ds = get_dataset(name)
    with pytest.raises(base.DataRootError) as err:
        ds.image_root(tmp_path, None)
    assert "`data_root`" in str(err.value) and needle in str(err.value)
    with pytest.raises(base.DataRootError, match="has no"):
        ds.image_root(tmp_path, str(tmp_path))  # exists but wrong layout


def test_imagenet_is_never_downloaded(tmp_path):
    with pytest.raises(ValueError, match="never downloaded"):
        images.download_images("imagenet_lt", tmp_path)


def test_download_images_places_records_sha256_and_extracts(http_dir, tmp_path, monkeypatch):
    www, base = http_dir
    tar_path = www / "places365standard_easyformat.tar"
    with tarfile.open(tar_path, "w") as tf:
        for name in ("places365_standard/train/c0/a.jpg", "places365_standard/val/c0/b.jpg"):
            buf = io.BytesIO()
            Image.new("RGB", (4, 4)).save(buf, format="JPEG")
            info = tarfile.TarInfo(name)
            info.size = len(buf.getvalue())
            tf.addfile(info, io.BytesIO(buf.getvalue()))
    url = base.removesuffix("/datasets") + "/places365standard_easyformat.tar"
    monkeypatch.setitem(images.IMAGE_ARCHIVES, "places_lt",
                        images.ImageArchive(url, None, "tiny"))
    data_root = tmp_path / "places"
    result = images.download_images("places_lt", data_root, progress=False)
    digest = hashlib.sha256(tar_path.read_bytes()).hexdigest()
    assert result["checksum"] == f"sha256:{digest}"
    assert result["checksum_source"].startswith("computed")
    record = data_root / ".downloads" / "places365standard_easyformat.tar.sha256"
    assert record.read_text().split()[0] == digest
    assert get_dataset("places_lt").image_root(tmp_path, str(data_root)) == (
        data_root / "places365_standard")
    again = images.download_images("places_lt", data_root, progress=False)
    assert again["status"] == "already extracted"


# ----------------------------------------------------------------------------- CIFAR-100-LT


def test_cifar_profile_hand_values():
    p100 = cifar.cifar_lt_profile(100)
    assert p100[0] == 500 and p100[99] == 5 and len(p100) == 100
    assert p100[1] == int(500 * 100 ** (-1 / 99)) == 477
    assert p100[50] == int(500 * 100 ** (-50 / 99)) == 48
    assert cifar.cifar_lt_profile(10)[99] == 50 and cifar.cifar_lt_profile(50)[99] == 10
    for ir in (100, 50, 10):  # LIFT's float form equals the textbook formula at every class
        assert cifar.cifar_lt_profile(ir) == [int(500 * ir ** (-i / 99)) for i in range(100)]
    assert sum(p100) == 10847  # CIFAR-100-LT IR100 train size in the literature


def _fake_cifar(n_per_class=500, k=100):
    targets = np.repeat(np.arange(k), n_per_class)
    np.random.default_rng(1).shuffle(targets)
    return targets


def test_cifar_plan_matches_lift_sampling_and_val_is_balanced():
    targets = _fake_cifar()
    plan = cifar.cifar_lt_plan(targets, 100, seed=0, val_per_class=20)
    train = np.asarray(plan["train"])
    assert np.bincount(targets[train], minlength=100).tolist() == cifar.cifar_lt_profile(100)
    # LIFT: np.random.seed(0), then shuffle each class's indices in turn, keep the first n
    np.random.seed(0)
    lift = []
    for c, n in enumerate(cifar.cifar_lt_profile(100)):
        idx = np.where(targets == c)[0]
        np.random.shuffle(idx)
        lift.extend(idx[:n].tolist())
    assert plan["train"] == lift
    val = np.asarray(plan["val"])
    assert np.bincount(targets[val], minlength=100).tolist() == [20] * 100
    overlap = set(val.tolist()) & set(train.tolist())
    assert plan["val_overlap"] == {0: 20} and len(overlap) == 20  # class 0 uses all 500
    assert cifar.cifar_lt_plan(targets, 10, 0, 20)["val_overlap"] == {0: 20, 1: 8}
    assert cifar.cifar_lt_plan(targets, 100, 0, 20) == plan  # deterministic


def test_cifar_prepare_writes_pngs_and_lists(tmp_path, monkeypatch):
    k, n = 100, 10  # a tiny stand-in for CIFAR: 10 train images per class

    def fake_load(root):
        rng = np.random.default_rng(0)
        return {"train_images": rng.integers(0, 255, (k * n, 32, 32, 3), dtype=np.uint8),
                "train_targets": np.repeat(np.arange(k), n).tolist(),
                "test_images": rng.integers(0, 255, (k * 2, 32, 32, 3), dtype=np.uint8),
                "test_targets": np.repeat(np.arange(k), 2).tolist(),
                "classes": [f"class_{c}" for c in range(k)]}

    monkeypatch.setattr(cifar, "load_cifar100", fake_load)
    out = tmp_path / "cifar"
    ds = get_dataset("cifar100_lt", imb_ratio=10, val_per_class=2)
    ds.prepare(out)
    assert split_stats(out / "train.txt", 100)["max_count"] == 10
    assert split_stats(out / "val.txt", 100)["min_count"] == 2
    assert split_stats(out / "test.txt", 100)["n_images"] == 200
    assert ds.image_root(out, None) == out
    report = images.verify_images("cifar100_lt", out, None, sample=20)
    assert report["ok"], report["error"]
    info = json.loads((out / "split_info.json").read_text())
    assert info["profile"][0] == 10 and info["imb_ratio"] == 10
    # groups by the IR-100 counts (LIFT trainer.py), not by this IR-10 split's own counts
    groups = read_group_counts(out)
    assert groups.tolist() == [int(10 * 0.01 ** (i / 99)) for i in range(100)]
    assert groups.tolist() != np.bincount(read_split(out / "train.txt")[1], minlength=100).tolist()
    # val shares class 0's images with train by construction: recorded, not refused
    check = json.loads((out / "splits_check.json").read_text())
    assert check["val_in_train"] == sum(info["val_overlap_with_train"].values()) > 0
    assert check["val_subset_of_train"] is False


def test_cifar_groups_by_ir100_counts_hand_values():
    # LIFT's CIFAR-100-LT groups (IR-100 counts of 500 -> 5): 35 many, 35 medium, 30 few;
    # class 34 has int(500 * 100**(-34/99)) = 102 images, class 35 has 98, class 69 has 20
    # and class 70 has 19
    p = cifar.cifar_lt_profile(cifar.GROUPS_IMB_RATIO)
    assert (p[34], p[35], p[69], p[70]) == (102, 98, 20, 19)
    assert group_counts(np.asarray(p)) == {"many": 35, "medium": 35, "few": 30}
    # IR 10's own counts would have no few class at all (docs/protocol.md, CIFAR-100-LT groups)
    assert group_counts(np.asarray(cifar.cifar_lt_profile(10)))["few"] == 0


def test_fixed_ir_datasets_refuse_imb_ratio_and_name_why():
    assert get_dataset("cifar100_lt_ir50").params["imb_ratio"] == 50
    with pytest.raises(base.UnknownParamError, match="imb_ratio is fixed by the name"):
        get_dataset("cifar100_lt_ir10", imb_ratio=100)
    with pytest.raises(base.DatasetParamError, match="imb_ratio must be a number >= 1"):
        get_dataset("cifar100_lt", imb_ratio=0.5)
