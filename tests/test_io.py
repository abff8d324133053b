"""The atomic writer (lt_bench/io.py) as a killed or starved job meets it: the temp files
of a killed writer are cleaned by the next writer (a live writer's are not), and a full
disk is one line naming the folder."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from lt_bench.cli import main
from lt_bench.io import remove_stale_parts, write_text

REPO = Path(__file__).resolve().parents[1]
WRITER = """
import sys, time
from lt_bench.io import atomic_path
with atomic_path(sys.argv[1]) as tmp:
    with open(tmp, "wb") as f:
        f.write(b"x" * 4096)
        f.flush()
        print("writing", flush=True)
        time.sleep(120)
"""


def _writer(final: Path) -> subprocess.Popen:
    p = subprocess.Popen([sys.executable, "-c", WRITER, str(final)], stdout=subprocess.PIPE,
                         text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert p.stdout.readline().strip() == "writing"
    return p


def _parts(folder: Path, name: str) -> list[Path]:
    return sorted(folder.glob(f".{name}.*.part"))


def test_a_killed_writers_part_file_is_removed_by_the_next_writer(tmp_path):
    final = tmp_path / "bb" / "checkpoint.pt"
    killed = _writer(final)
    killed.send_signal(signal.SIGKILL)  # as a pre-training killed mid-write
    killed.wait()
    stale = _parts(final.parent, final.name)
    assert len(stale) == 1 and not final.exists()
    live = _writer(final)  # another writer of the same file, still writing
    try:
        live_part = [p for p in _parts(final.parent, final.name) if p not in stale]
        assert len(live_part) == 1
        # not our pattern: left alone
        (final.parent / ".checkpoint.pt.notes").write_text("mine")
        (final.parent / ".prior.parquet.abc.part").write_text("another file's")
        write_text(final, "new")  # the next writer of checkpoint.pt
        assert final.read_text() == "new"
        assert _parts(final.parent, final.name) == live_part  # the stale one is gone
        assert (final.parent / ".checkpoint.pt.notes").read_text() == "mine"
        assert (final.parent / ".prior.parquet.abc.part").exists()
    finally:
        live.kill()
        live.wait()
    assert remove_stale_parts(final) == live_part  # once its writer is gone


def _full_tmpfs(where: Path, size: str = "1m") -> Path:
    if os.geteuid() != 0:
        pytest.skip("a full disk needs a tmpfs mount (root)")
    where.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                      capture_output=True).returncode != 0:
        pytest.skip("tmpfs cannot be mounted here")
    return where


@pytest.mark.slow
def test_a_full_disk_during_toy_pretraining_is_one_line(tmp_path, capsys):
    """A real ENOSPC (1 MiB tmpfs; the checkpoint is ~13 MB): torch.save reports it as a
    RuntimeError without errno ("unexpected pos"); the atomic writer says what it is."""
    split = tmp_path / "toy"
    assert main(["prepare", "toy", "--out", str(split), "--params", json.dumps(
        {"num_classes": 4, "max_per_class": 6, "imbalance": 2, "val_per_class": 2,
         "test_per_class": 2})]) == 0
    mnt = _full_tmpfs(tmp_path / "small")
    try:
        capsys.readouterr()
        rc = main(["pretrain", "toyclip0", "--dataset-dir", str(split), "--out",
                   str(mnt / "bb"), "--params", json.dumps(
                       {"num_pairs": 64, "epochs": 1, "batch_size": 32,
                        "eval_per_class": 2})])
        err = capsys.readouterr().err
        assert rc == 2, err[-2000:]
        assert (f"no space left on the file system of {mnt / 'bb'} while writing "
                "checkpoint.pt; free some space and rerun") in err
        assert "Traceback" not in err and "enforce fail" not in err
        assert list((mnt / "bb").iterdir()) == []  # no partial checkpoint left behind
    finally:
        with contextlib.suppress(Exception):
            subprocess.run(["umount", "-l", str(mnt)], capture_output=True)
