"""Bad data inputs, as a user meets them on the command line (docs/architecture.md §9, data part).

One row per case: what the user runs, and a substring the one-line message must hold.
Every row goes through ``lt_bench.cli.main`` and must exit with the user-error code (2),
never with a traceback. Add a row for every data bug found later.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path

import pytest

from lt_bench.cli import main as cli_main
from lt_bench.data import images, lift
from lt_bench.data.archives import is_extracted
from lt_bench.errors import EXIT_USER_ERROR
from lt_bench.io import git_blob_id

K = 3
GOOD = {
    "train": [(f"train/c{c}/{i}.jpg", c) for c, n in enumerate([4, 3, 2]) for i in range(n)],
    "val": [(f"train/c{c}/v{i}.jpg", c) for c in range(K) for i in range(2)],
    "test": [(f"val/c{c}/t{i}.jpg", c) for c in range(K) for i in range(2)],
}


def _places_lists(tmp_path: Path, monkeypatch, **changed) -> list[str]:
    """Places-LT-style LIFT files (GOOD, with ``changed`` splits replaced), pinned so that
    checksums and statistics pass: only the integrity checks can refuse them."""
    rows = {**GOOD, **changed}
    d = tmp_path / "lift" / "Places_LT"
    d.mkdir(parents=True)
    files = {}
    for role, items in rows.items():
        files[role] = d / f"Places_LT_{role}.txt"
        files[role].write_text("".join(f"{r} {y}\n" for r, y in items))
    files["classnames"] = d / "classnames.txt"
    files["classnames"].write_text("".join(f"c{c} class {c}\n" for c in range(K)))
    monkeypatch.setattr(lift.PlacesLT, "num_classes", K)
    monkeypatch.setattr(lift.PlacesLT, "expected_stats", {})
    monkeypatch.setattr(lift.PlacesLT, "sources", {
        role: lift.SourceFile(f"Places_LT/{p.name}", git_blob_id(p),
                              hashlib.sha256(p.read_bytes()).hexdigest())
        for role, p in files.items()})
    return ["prepare", "places_lt", "--out", str(tmp_path / "split"),
            "--params", json.dumps({"split_dir_local": str(tmp_path / "lift")})]


def _tar_clobber(tmp_path: Path, monkeypatch) -> list[str]:
    """A Places archive whose places365_standard/train/a.jpg differs from the user's."""
    www = tmp_path / "www"
    www.mkdir()
    tar_path = www / "places365standard_easyformat.tar"
    with tarfile.open(tar_path, "w") as tf:
        info = tarfile.TarInfo("places365_standard/train/a.jpg")
        info.size = 7
        tf.addfile(info, io.BytesIO(b"archive"))
    monkeypatch.setitem(images.IMAGE_ARCHIVES, "places_lt",
                        images.ImageArchive(tar_path.as_uri(), None, "tiny"))
    user = tmp_path / "data" / "places365_standard" / "train"
    user.mkdir(parents=True)
    (user / "a.jpg").write_bytes(b"the user's own a.jpg")
    return ["download-images", "places_lt", "--data-root", str(tmp_path / "data")]


TOY = {"num_classes": 3, "max_per_class": 4, "imbalance": 2, "val_per_class": 1,
       "test_per_class": 1}


def _toy_split(tmp_path: Path) -> Path:
    """A prepared toy split folder (through the CLI, as the workflow makes it)."""
    d = tmp_path / "toy"
    assert cli_main(["prepare", "toy", "--out", str(d), "--params", json.dumps(TOY)]) == 0
    return d


def _edited_list(tmp_path: Path, first_path: str) -> list[str]:
    """The toy train.txt edited after prepare: its first path replaced by ``first_path``."""
    d = _toy_split(tmp_path)
    lines = (d / "train.txt").read_text().splitlines()
    lines[0] = f"{first_path} 0"
    (d / "train.txt").write_text("\n".join(lines) + "\n")
    return ["verify-images", "toy", "--split-dir", str(d)]


def _list_in(tmp_path: Path, encoding: str, text: str = "images/café/0.png 0\n") -> list[str]:
    path = tmp_path / f"train_{encoding}.txt"
    path.write_bytes((text + "images/b/1.png 1\n").encode(encoding))
    return ["split-stats", str(path)]


def _prepare_into_users_folder(tmp_path: Path) -> list[str]:
    d = tmp_path / "mine"
    d.mkdir()
    (d / "notes.txt").write_text("my notes\n")
    (d / "classnames.txt").write_text("my own class list\n")
    return ["prepare", "toy", "--out", str(d), "--params", json.dumps(TOY)]


CASES = [
    ("duplicate line in a split",
     lambda t, m: _places_lists(t, m, train=GOOD["train"] + [GOOD["train"][0]]),
     "1 path(s) listed more than once (1 duplicate line(s)), e.g. 'train/c0/0.jpg' x2"),
    ("test image also in train",
     lambda t, m: _places_lists(t, m, test=GOOD["test"] + [GOOD["train"][1]]),
     "1 path(s) are in both train.txt and test.txt, e.g. 'train/c0/1.jpg'"),
    ("val image also in train (not iNat's documented policy)",
     lambda t, m: _places_lists(t, m, val=GOOD["val"] + [GOOD["train"][0]]),
     "are in both train.txt and val.txt"),
    ("test image also in val",
     lambda t, m: _places_lists(t, m, test=GOOD["test"] + [GOOD["val"][0]]),
     "are in both val.txt and test.txt"),
    ("class with zero training images",
     lambda t, m: _places_lists(t, m, train=[r for r in GOOD["train"] if r[1] != 2]),
     "1 class(es) have no training image: 2 (class 2)"),
    ("label outside 0..K-1",
     lambda t, m: _places_lists(t, m, test=GOOD["test"] + [("val/c9/x.jpg", 3)]),
     "label 3 is out of range [0, 3)"),
    ("unknown dataset parameter",
     lambda t, m: ["prepare", "places_lt", "--out", str(t), "--params", '{"split_url": "x"}'],
     "dataset 'places_lt': unknown parameter(s) split_url; valid: split_base_url, split_dir_local"),
    ("parameter fixed by the dataset's name",
     lambda t, m: ["prepare", "cifar100_lt_ir10", "--out", str(t), "--params", '{"imb_ratio": 50}'],
     "imb_ratio is fixed by the name 'cifar100_lt_ir10'"),
    ("bad parameter value",
     lambda t, m: ["prepare", "inat2018", "--out", str(t), "--params", '{"val_policy": "test"}'],
     "val_policy 'test' is not one of train_subset, holdout"),
    ("image check without data_root",
     lambda t, m: ["verify-images", "imagenet_lt", "--split-dir", str(t)],
     "needs its images: set the config key `data_root`"),
    ("download of ImageNet",
     lambda t, m: ["download-images", "imagenet_lt", "--data-root", str(t)],
     "ImageNet is never downloaded"),
    ("download of a dataset whose images prepare writes",
     lambda t, m: ["download-images", "cifar100_lt_ir100", "--data-root", str(t)],
     "written by `lt-bench prepare`"),
    ("tar member clobbers a user's file", _tar_clobber,
     "never overwrites or deletes files it did not create"),
    ("split-list path leaving the image root with ..",
     lambda t, m: _edited_list(t, "../../outside/secret.png"),
     "train.txt, line 1: path '../../outside/secret.png' leaves the image root; expected a "
     "path relative to it without '..'"),
    ("absolute split-list path",
     lambda t, m: _edited_list(t, "/etc/hostname"),
     "train.txt, line 1: path '/etc/hostname' leaves the image root"),
    ("Latin-1 split list",
     lambda t, m: _list_in(t, "latin-1"),
     "train_latin-1.txt: not UTF-8 text (byte 10: invalid continuation byte); expected a "
     "UTF-8 file"),
    ("UTF-16 split list",
     lambda t, m: _list_in(t, "utf-16"),
     "train_utf-16.txt: not UTF-8 text (byte 0: invalid start byte); expected a UTF-8 file"),
    ("UTF-16 split list without its byte-order mark",
     lambda t, m: _list_in(t, "utf-16-le", "images/a/0.png 0\n"),
     "train_utf-16-le.txt: holds NUL characters (UTF-16?); expected a UTF-8 file"),
    ("prepare --out into a folder holding the user's files",
     lambda t, m: _prepare_into_users_folder(t),
     "mine: not empty and not a split folder of lt-bench (it holds 'classnames.txt', "
     "'notes.txt'); lt-bench never overwrites or deletes files it did not create"),
]


@pytest.mark.parametrize("setup, needle", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_data_input_gives_one_clear_message(tmp_path, monkeypatch, capsys, setup, needle):
    argv = setup(tmp_path, monkeypatch)
    assert cli_main(argv) == EXIT_USER_ERROR
    err = capsys.readouterr().err
    assert needle in err
    assert "Traceback" not in err


def test_refused_prepare_leaves_no_split_lists(tmp_path, monkeypatch, capsys):
    argv = _places_lists(tmp_path, monkeypatch, test=GOOD["test"] + [GOOD["train"][1]])
    assert cli_main(argv) == EXIT_USER_ERROR
    split = tmp_path / "split"
    # nothing a later stage could mistake for a prepared dataset
    assert not any((split / n).exists() for n in (
        "splits_check.json", "train.txt", "val.txt", "test.txt", "classnames.txt"))


def test_tar_clobber_leaves_the_users_file(tmp_path, monkeypatch, capsys):
    argv = _tar_clobber(tmp_path, monkeypatch)
    cli_main(argv)
    data = tmp_path / "data"
    assert (data / "places365_standard/train/a.jpg").read_bytes() == b"the user's own a.jpg"
    assert not is_extracted(tmp_path / "www" / "places365standard_easyformat.tar", data)


def test_params_must_be_a_json_object(tmp_path, capsys):
    # argparse's own usage error: the same exit code as every user error
    with pytest.raises(SystemExit) as exit_:
        cli_main(["verify-images", "places_lt", "--params", "[1, 2]"])
    assert exit_.value.code == EXIT_USER_ERROR
    assert "expected a JSON object" in capsys.readouterr().err


def test_good_lists_pass_and_are_recorded(tmp_path, monkeypatch, capsys):
    assert cli_main(_places_lists(tmp_path, monkeypatch)) == 0
    check = json.loads((tmp_path / "split" / "splits_check.json").read_text())
    assert check["n_images"] == {"train": 9, "val": 6, "test": 6} and check["val_in_train"] == 0


def test_prepare_prints_stats_over_the_written_classes(tmp_path, capsys):
    # the toy world's class count is a parameter; the printed statistics must use it
    params = {"num_classes": 3, "max_per_class": 4, "imbalance": 4, "val_per_class": 1,
              "test_per_class": 1}
    assert cli_main(["prepare", "toy", "--out", str(tmp_path), "--params",
                     json.dumps(params)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["train"]["n_classes"] == 3 and printed["test"]["few"] == 3
    assert printed["train"]["max_count"] == 4 and printed["train"]["min_count"] == 1


def test_prepare_leaves_a_users_folder_as_it_was(tmp_path, capsys):
    argv = _prepare_into_users_folder(tmp_path)
    assert cli_main(argv) == EXIT_USER_ERROR
    d = tmp_path / "mine"
    assert sorted(p.name for p in d.iterdir()) == ["classnames.txt", "notes.txt"]
    assert (d / "classnames.txt").read_text() == "my own class list\n"


def test_prepare_again_into_its_own_split_folder(tmp_path, capsys):
    """A rerun of prepare replaces what prepare wrote (not a user's folder)."""
    d = _toy_split(tmp_path)
    assert cli_main(["prepare", "toy", "--out", str(d), "--params", json.dumps(TOY)]) == 0


def test_a_utf8_bom_is_not_part_of_the_first_path(tmp_path, capsys):
    """A list saved with a BOM (Windows editors): its first path is the image's path, so
    verify-images finds every image, and split-stats counts the first line's class."""
    from lt_bench.data.splits import read_split

    d = _toy_split(tmp_path)
    first = (d / "train.txt").read_text().splitlines()[0].rsplit(" ", 1)[0]
    (d / "train.txt").write_bytes(b"\xef\xbb\xbf" + (d / "train.txt").read_bytes())
    paths, _ = read_split(d / "train.txt")
    assert paths[0] == first and (d / paths[0]).is_file()
    capsys.readouterr()
    assert cli_main(["verify-images", "toy", "--split-dir", str(d)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["n_missing"] == 0 and report["splits"]["train"]["n_missing"] == 0
