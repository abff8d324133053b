"""Safe tar extraction (docs/architecture.md §9).

Tar members that would land outside the target are refused, naming the member.
Extraction never deletes or overwrites a file it did not create (a user's
``places365_standard/`` was once replaced): the archive goes into a staging folder first
and only entries the target does not have are moved in.
"""

from __future__ import annotations

import filecmp
import json
import logging
import os
import shutil
import tarfile
from pathlib import Path

from lt_bench.errors import UserError
from lt_bench.io import write_json

log = logging.getLogger(__name__)


class UnsafeArchiveError(UserError, ValueError):
    """A tar member would be written outside the extraction directory."""


class ExtractionConflictError(UserError, FileExistsError):
    """The target already holds a file where the archive has different content; nothing
    in the target was changed."""


def _inside(root: str, path: str) -> bool:
    return path == root or path.startswith(root + os.sep)


def check_member(member: tarfile.TarInfo, root: str) -> None:
    """Refuse a member that would escape ``root`` (a resolved, absolute directory).

    Checked against the file system as it is at extraction time (``realpath``), so a
    symlink extracted earlier cannot be used to smuggle a later member outside.
    """
    name = member.name
    if os.path.isabs(name) or name.startswith(("/", "\\")):
        raise UnsafeArchiveError(f"tar member {name!r}: absolute path")
    target = os.path.realpath(os.path.join(root, name))
    if not _inside(root, target):
        raise UnsafeArchiveError(f"tar member {name!r}: path escapes the extraction directory")
    if member.issym():
        if os.path.isabs(member.linkname):
            raise UnsafeArchiveError(
                f"tar member {name!r}: symlink to absolute path {member.linkname!r}")
        link_dir = os.path.dirname(os.path.join(root, name))
        resolved = os.path.realpath(os.path.join(link_dir, member.linkname))
        if not _inside(root, resolved):
            raise UnsafeArchiveError(
                f"tar member {name!r}: symlink to {member.linkname!r} points outside")
    elif member.islnk():
        resolved = os.path.realpath(os.path.join(root, member.linkname))
        if os.path.isabs(member.linkname) or not _inside(root, resolved):
            raise UnsafeArchiveError(
                f"tar member {name!r}: hard link to {member.linkname!r} points outside")
    elif not (member.isfile() or member.isdir()):
        raise UnsafeArchiveError(f"tar member {name!r}: device or fifo members are not allowed")


def _marker_path(tar_path: Path, dest: Path) -> Path:
    return dest / f".{tar_path.name}.extracted"


def _archive_id(tar_path: Path) -> dict:
    st = tar_path.stat()
    return {"archive": tar_path.name, "size": st.st_size}


def is_extracted(tar_path: str | os.PathLike, dest: str | os.PathLike) -> bool:
    """True if ``dest`` holds a completed extraction of this archive (its marker file)."""
    tar_path, dest = Path(tar_path), Path(dest)
    marker = _marker_path(tar_path, dest)
    if not marker.exists():
        return False
    try:
        recorded = json.loads(marker.read_text())
    except ValueError:
        return False
    return not tar_path.exists() or recorded.get("size") == tar_path.stat().st_size


def safe_extract_tar(tar_path: str | os.PathLike, dest: str | os.PathLike) -> Path:
    """Extract ``tar_path`` into ``dest`` safely; never touch a file it did not create.

    Members go into a staging directory ``dest/.partial-<archive>`` first (on the same
    file system, so moving in is a rename); each is checked just before it is written
    (absolute paths, ``..``, symlinks and hard links pointing outside are refused with
    :class:`UnsafeArchiveError` naming the member). Only when the whole archive is
    extracted is it merged into ``dest``: what ``dest`` lacks is moved in (a missing
    folder as a whole); what ``dest`` already has with the same content (a user's own
    copy, or the part an interrupted merge had moved) is kept as it is; a file or link
    with different content, or a file where the archive has a folder (or the reverse),
    is a conflict: :class:`ExtractionConflictError` lists them and ``dest`` is left
    exactly as it was. Last, a marker ``dest/.<archive>.extracted`` is written. An
    interrupted extraction leaves no marker; the next call discards its staging folder
    (which only this function writes) and extracts again.
    """
    tar_path, dest = Path(tar_path), Path(dest)
    if is_extracted(tar_path, dest):
        return dest
    dest.mkdir(parents=True, exist_ok=True)
    staging = dest / f".partial-{tar_path.name}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        _extract_checked(tar_path, staging)
        moves, kept, conflicts = _plan_merge(staging, dest)
        if conflicts:
            raise ExtractionConflictError(_conflict_message(tar_path, dest, conflicts))
        for src, target in moves:
            os.replace(src, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    if kept:
        log.info("%s: %d file(s) were already in %s with the same content; kept them",
                 tar_path.name, kept, dest)
    write_json(_marker_path(tar_path, dest), {**_archive_id(tar_path), "moved_in": len(moves),
                                              "already_present": kept})
    return dest


def _extract_checked(tar_path: Path, staging: Path) -> None:
    root = os.path.realpath(staging)
    # Python's "data" filter (3.11.4+) is a second line of defence; it also drops
    # set-uid bits and device files.
    kwargs = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
    with tarfile.open(tar_path, "r:*") as tf:
        for member in tf:
            check_member(member, root)
            tf.extract(member, staging, **kwargs)
            # tarfile remembers every TarInfo; iNat2018 has ~450k members, so forget them.
            # Hard links still resolve: extract() links to the already-extracted file on disk.
            tf.members = []


def _same_entry(staged: os.DirEntry, target: Path) -> bool:
    """Does ``target`` (which exists) already hold what the archive has at ``staged``?"""
    if staged.is_symlink():
        return target.is_symlink() and os.readlink(target) == os.readlink(staged.path)
    return (target.is_file() and not target.is_symlink()
            and filecmp.cmp(staged.path, target, shallow=False))


def _plan_merge(staged_dir: Path, target_dir: Path, moves=None, conflicts=None
                ) -> tuple[list[tuple[str, Path]], int, list[str]]:
    """What merging ``staged_dir`` into ``target_dir`` takes, without changing anything:
    ``(moves, n_already_present, conflicts)``. A folder the target lacks moves as a whole;
    a folder both have is merged entry by entry (the target's own extra files stay)."""
    moves = [] if moves is None else moves
    conflicts = [] if conflicts is None else conflicts
    kept = 0
    with os.scandir(staged_dir) as it:
        entries = sorted(it, key=lambda e: e.name)
    for entry in entries:
        target = target_dir / entry.name
        if not os.path.lexists(target):
            moves.append((entry.path, target))
        elif entry.is_dir(follow_symlinks=False):
            if target.is_dir() and not target.is_symlink():
                kept += _plan_merge(Path(entry.path), target, moves, conflicts)[1]
            else:
                conflicts.append(f"{target} (the archive has a folder there)")
        elif _same_entry(entry, target):
            kept += 1
        else:
            what = "folder" if target.is_dir() else "file with different content"
            conflicts.append(f"{target} (a {what})")
    return moves, kept, conflicts


def _conflict_message(tar_path: Path, dest: Path, conflicts: list[str]) -> str:
    shown = "; ".join(conflicts[:5]) + ("; ..." if len(conflicts) > 5 else "")
    return (f"{tar_path.name}: not extracted into {dest}: {len(conflicts)} path(s) there "
            f"already exist and differ from the archive: {shown}. lt-bench never overwrites "
            f"or deletes files it did not create; move these away (or point data_root at "
            f"an empty folder) and run again. Nothing in {dest} was changed.")
