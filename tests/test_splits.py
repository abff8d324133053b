"""Split lists: parsing, errors that name file and line, statistics and D-groups."""

from __future__ import annotations

import json

import numpy as np
import pytest

from lt_bench.cli import main as cli_main
from lt_bench.data.splits import (
    SplitFormatError,
    check_split_integrity,
    class_counts,
    group_of_count,
    read_classnames,
    read_group_counts,
    read_split,
    split_hash,
    split_stats,
    write_classnames,
    write_group_counts,
    write_split,
)
from lt_bench.io import sha256_file


def _write_counts(path, counts):
    """A split list with ``counts[c]`` images of class c."""
    lines = [f"train/c{c}/img{i}.jpg {c}" for c, n in enumerate(counts) for i in range(n)]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_stats_groups_at_the_edges(tmp_path):
    # 101 many; 100 and 20 medium; 19 few; plus one more of each kind
    counts = [101, 100, 20, 19, 500, 50, 5]
    stats = split_stats(_write_counts(tmp_path / "train.txt", counts))
    assert stats == {
        "n_images": sum(counts), "n_classes": 7, "max_count": 500, "min_count": 5,
        "imbalance_ratio": 100.0, "many": 2, "medium": 3, "few": 2,
    }


def test_group_of_count_boundaries():
    assert [group_of_count(n) for n in (101, 100, 20, 19, 0)] == [
        "many", "medium", "medium", "few", "few"]


def test_stats_with_num_classes_counts_empty_classes(tmp_path):
    stats = split_stats(_write_counts(tmp_path / "s.txt", [3, 0, 2]), num_classes=5)
    assert stats["n_classes"] == 2  # classes that have images
    assert stats["min_count"] == 0 and stats["imbalance_ratio"] is None
    assert stats["few"] == 5
    json.dumps(stats)  # JSON-safe even with an empty class


def test_read_split_splits_on_last_whitespace(tmp_path):
    p = tmp_path / "s.txt"
    p.write_text("a dir/with space.jpg 3\ntrain/x.jpg\t0\n\n")
    assert read_split(p) == (["a dir/with space.jpg", "train/x.jpg"], [3, 0])


@pytest.mark.parametrize("line, needle", [
    ("train/only_a_path.jpg", "expected 'relative/path label'"),
    ("train/x.jpg seven", "label 'seven' is not an integer"),
    ("train/x.jpg 1.5", "label '1.5' is not an integer"),
    ("train/x.jpg -1", "label -1 is out of range"),
    ("train/x.jpg 10", "label 10 is out of range [0, 10)"),
])
def test_malformed_lines_name_file_and_line(tmp_path, line, needle):
    p = tmp_path / "bad.txt"
    p.write_text(f"train/ok.jpg 0\n{line}\n")
    with pytest.raises(SplitFormatError) as err:
        read_split(p, num_classes=10)
    assert f"{p}, line 2" in str(err.value)
    assert needle in str(err.value)


def test_write_split_roundtrip_and_refuses_unreadable_paths(tmp_path):
    p = tmp_path / "s.txt"
    write_split(p, ["a/b c.png", "d.png"], [1, 0])
    assert read_split(p) == (["a/b c.png", "d.png"], [1, 0])
    with pytest.raises(ValueError, match="cannot be written"):
        write_split(p, ["bad\nname.png"], [0])
    with pytest.raises(ValueError, match="cannot be written"):
        write_split(p, ["trailing.png "], [0])
    assert read_split(p)[0] == ["a/b c.png", "d.png"]  # the old file is untouched


def test_class_counts():
    assert class_counts([0, 2, 2], 4).tolist() == [1, 0, 2, 0]
    assert class_counts(np.array([], dtype=int), 2).tolist() == [0, 0]
    with pytest.raises(ValueError, match="label 4 is out of range"):
        class_counts([4], 4)


def test_split_hash_is_sha256(tmp_path):
    p = _write_counts(tmp_path / "s.txt", [2, 1])
    assert split_hash(p) == sha256_file(p)


def test_classnames_roundtrip_and_errors(tmp_path):
    p = tmp_path / "classnames.txt"
    write_classnames(p, ["red circle", "blue square"])
    assert read_classnames(p, num_classes=2) == ["red circle", "blue square"]
    with pytest.raises(SplitFormatError, match="expected 3 class names, found 2"):
        read_classnames(p, num_classes=3)
    p.write_text("a\n\nb\n")
    with pytest.raises(SplitFormatError, match="line 2: empty class name"):
        read_classnames(p)
    with pytest.raises(ValueError, match="class 1 has an invalid name"):
        write_classnames(p, ["ok", "two\nlines"])


def test_cli_stats_prints_json(tmp_path, capsys):
    p = _write_counts(tmp_path / "s.txt", [101, 19])
    assert cli_main(["split-stats", str(p), "--num-classes", "3"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["many"] == 1 and out["few"] == 2 and out["n_classes"] == 2


def test_cli_stats_malformed_exits_2_with_message(tmp_path, capsys):
    p = tmp_path / "s.txt"
    p.write_text("x.jpg nine\n")
    assert cli_main(["split-stats", str(p)]) == 2
    assert "line 1" in capsys.readouterr().err


def test_group_counts_roundtrip_and_absent(tmp_path):
    assert read_group_counts(tmp_path) is None  # groups then come from train.txt
    write_group_counts(tmp_path, [500, 477, 5])
    got = read_group_counts(tmp_path)
    assert got.dtype == np.int64 and got.tolist() == [500, 477, 5]
    (tmp_path / "group_counts.txt").write_text("500\nmany\n")
    with pytest.raises(SplitFormatError, match="line 2: expected one integer count"):
        read_group_counts(tmp_path)


def test_integrity_report_of_clean_splits(tmp_path):
    write_classnames(tmp_path / "classnames.txt", ["a", "b"])
    write_split(tmp_path / "train.txt", ["t0.png", "t1.png", "t2.png"], [0, 1, 1])
    write_split(tmp_path / "val.txt", ["v0.png", "v1.png"], [0, 1])
    write_split(tmp_path / "test.txt", ["s0.png", "s1.png"], [0, 1])
    report = check_split_integrity(tmp_path)
    assert report == {"num_classes": 2, "n_images": {"train": 3, "val": 2, "test": 2},
                      "val_in_train": 0, "val_subset_of_train": False,
                      "val_in_train_allowed": False}
    assert json.loads((tmp_path / "splits_check.json").read_text()) == report
