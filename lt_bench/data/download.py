"""Resumable, verified downloads and safe tar extraction.

Rules (docs/architecture.md §9): a file appears under its final name only after its checksum (or, when
no checksum is published, its advertised length) has been verified; a partial transfer
lives in ``<name>.part`` beside the target and is resumed with an HTTP ``Range`` request;
tar members that would land outside the target are refused, naming the member.
Extraction never deletes or overwrites a file it did not create (issue 15: a user's
``places365_standard/`` was once replaced): the archive goes into a staging folder first
and only entries the target does not have are moved in.

Why urllib instead of pooch: pooch downloads into a temporary file and starts from byte 0
on every retry. That is fine for a split list, but the image archives are 30–120 GB, where a
dropped connection must resume from where it stopped. We still use pooch's
``"alg:hex"`` way of writing checksums.
"""

from __future__ import annotations

import contextlib
import fcntl
import filecmp
import hashlib
import http.client
import json
import logging
import os
import shutil
import tarfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from lt_bench.errors import UserError
from lt_bench.io import git_blob_id, sha256_file, write_json

log = logging.getLogger(__name__)

CHUNK = 1 << 20
HASH_ALGORITHMS = ("sha256", "md5", "gitblob")


class DownloadError(UserError, RuntimeError):
    """A download could not be completed."""


class ChecksumMismatchError(DownloadError):
    """A file's checksum differs from the pinned one; nothing was kept under the final name."""


class UnsafeArchiveError(UserError, ValueError):
    """A tar member would be written outside the extraction directory."""


class ExtractionConflictError(UserError, FileExistsError):
    """The target already holds a file where the archive has different content; nothing
    in the target was changed."""


# ----------------------------------------------------------------------------- hashes


def parse_hash(known_hash: str) -> tuple[str, str]:
    """Split ``"sha256:abc…"`` into ``("sha256", "abc…")``; a bare hex digest is sha256."""
    alg, sep, digest = known_hash.partition(":")
    if not sep:
        alg, digest = "sha256", known_hash
    alg = alg.lower()
    if alg not in HASH_ALGORITHMS:
        raise ValueError(
            f"unknown hash algorithm {alg!r} in {known_hash!r}; valid: {', '.join(HASH_ALGORITHMS)}"
        )
    return alg, digest.lower()


def file_hash(path: str | os.PathLike, alg: str) -> str:
    """Hex digest of a file: ``sha256``, ``md5`` or ``gitblob`` (``git hash-object``)."""
    if alg == "sha256":
        return sha256_file(path)
    if alg == "gitblob":
        return git_blob_id(path)
    if alg == "md5":
        h = hashlib.md5(usedforsecurity=False)
        with open(path, "rb") as f:
            while block := f.read(CHUNK):
                h.update(block)
        return h.hexdigest()
    raise ValueError(f"unknown hash algorithm {alg!r}; valid: {', '.join(HASH_ALGORITHMS)}")


def hash_matches(path: str | os.PathLike, known_hash: str) -> tuple[bool, str]:
    """``(matches, actual_digest)`` of a file against ``"alg:hex"``."""
    alg, expected = parse_hash(known_hash)
    actual = file_hash(path, alg)
    return actual == expected, actual


def verify_file(path: str | os.PathLike, known_hash: str, what: str | None = None) -> None:
    """Raise :class:`ChecksumMismatchError` naming the file and both digests on a mismatch."""
    ok, actual = hash_matches(path, known_hash)
    if not ok:
        alg, expected = parse_hash(known_hash)
        raise ChecksumMismatchError(
            f"{what or path}: {alg} mismatch: expected {expected}, got {actual}"
        )


# ----------------------------------------------------------------------------- download


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """Exclusive lock so two jobs never append to the same ``.part`` file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _part_path(dest: Path) -> Path:
    return dest.with_name(dest.name + ".part")


def _total_from_headers(resp, offset: int) -> int | None:
    """Full size of the resource from a 200/206 response, if the server says."""
    content_range = resp.headers.get("Content-Range")  # "bytes 100-999/1000"
    if content_range and "/" in content_range:
        total = content_range.rsplit("/", 1)[1].strip()
        return int(total) if total.isdigit() else None
    length = resp.headers.get("Content-Length")
    return offset + int(length) if length and length.isdigit() else None


def _check_range_start(url: str, resp, offset: int) -> None:
    content_range = resp.headers.get("Content-Range", "")  # "bytes 100-999/1000"
    start = content_range.removeprefix("bytes ").split("-", 1)[0].strip()
    if start != str(offset):
        raise DownloadError(
            f"{url}: asked to resume at byte {offset}, server answered {content_range!r}"
        )


def _open(url: str, offset: int, timeout: float):
    req = urllib.request.Request(url, headers={"User-Agent": "lt-bench"})
    if offset:
        req.add_header("Range", f"bytes={offset}-")
    return urllib.request.urlopen(req, timeout=timeout)  # noqa: S310 (http(s) URLs from config)


def _transfer_once(url: str, part: Path, timeout: float, progress: bool) -> int | None:
    """Append the rest of ``url`` to ``part``; returns the total size if known.

    Raises ``OSError``/``urllib.error.URLError`` on a dropped connection; the caller
    retries, resuming from the bytes already on disk.
    """
    from tqdm.auto import tqdm  # here, not at the top: `lt-bench --help` imports this module

    offset = part.stat().st_size if part.exists() else 0
    try:
        resp = _open(url, offset, timeout)
    except urllib.error.HTTPError as err:
        if err.code == 416 and offset:
            # Range not satisfiable: the .part already holds the whole file (or is longer
            # than the resource, which verification will catch).
            total = _total_from_headers(err, 0)
            err.close()
            return total if total is not None else offset
        raise
    with resp:
        if offset and resp.status != 206:
            # The server ignored Range and is sending the whole file: start over.
            log.info("%s: server does not support resume; restarting from byte 0", url)
            offset = 0
        elif offset:
            _check_range_start(url, resp, offset)
        total = _total_from_headers(resp, offset)
        mode = "ab" if offset else "wb"
        with open(part, mode) as out, tqdm(
            total=total, initial=offset, unit="B", unit_scale=True, unit_divisor=1024,
            desc=part.name.removesuffix(".part"), disable=not progress, leave=False,
        ) as bar:
            while block := resp.read(CHUNK):
                out.write(block)
                bar.update(len(block))
    size = part.stat().st_size
    if total is not None and size < total:
        # http.client does not always raise on a short body; treat it as a dropped connection
        raise ConnectionError(f"{url}: connection closed after {size} of {total} bytes")
    return total


def download(
    url: str,
    dest: str | os.PathLike,
    known_hash: str | None,
    *,
    progress: bool = True,
    retries: int = 5,
    timeout: float = 60.0,
    backoff: float = 1.0,
) -> Path:
    """Download ``url`` to ``dest`` with resume and verification; returns ``dest``.

    ``known_hash`` is ``"sha256:…"``, ``"md5:…"`` or ``"gitblob:…"``. With ``None`` (no
    checksum published) only the length advertised by the server is checked; call
    :func:`file_hash` to record a digest. An existing ``dest`` that verifies is kept
    (no network access). A ``.part`` beside ``dest`` is resumed; a transfer that fails
    verification is deleted, so ``dest`` never holds an unverified file.
    """
    dest = Path(dest)
    if dest.exists():
        if known_hash is None:
            return dest  # it only got this name after its length was verified
        ok, actual = hash_matches(dest, known_hash)
        if ok:
            return dest
        log.warning("%s exists but its checksum is %s, not %s; downloading again",
                    dest, actual, known_hash)
    part = _part_path(dest)
    with _file_lock(dest.with_name(dest.name + ".lock")):
        total = _transfer_with_retries(url, part, retries, timeout, backoff, progress)
        _verify_part(url, part, dest, known_hash, total)
        os.replace(part, dest)
    return dest


def _transfer_with_retries(url: str, part: Path, retries: int, timeout: float,
                           backoff: float, progress: bool) -> int | None:
    last: Exception | None = None
    for attempt in range(retries + 1):
        try:
            return _transfer_once(url, part, timeout, progress)
        except urllib.error.HTTPError as err:
            if err.code < 500:  # 404, 403, …: retrying will not help
                raise DownloadError(f"{url}: HTTP {err.code} {err.reason}") from err
            last = err
        except (OSError, http.client.HTTPException) as err:  # dropped connection, timeout
            # URLError is an OSError; IncompleteRead is an HTTPException
            last = err
        have = part.stat().st_size if part.exists() else 0
        log.warning("%s: attempt %d failed (%s); %d bytes kept in %s, resuming",
                    url, attempt + 1, last, have, part)
        time.sleep(backoff * attempt)
    raise DownloadError(
        f"{url}: gave up after {retries + 1} attempts ({last}); the partial file {part} "
        f"is kept and the next run resumes from it"
    )


def _verify_part(url: str, part: Path, dest: Path, known_hash: str | None,
                 total: int | None) -> None:
    size = part.stat().st_size
    if total is not None and size != total:
        part.unlink()
        raise DownloadError(f"{url}: got {size} bytes, server announced {total}; removed {part}")
    if known_hash is None:
        return
    ok, actual = hash_matches(part, known_hash)
    if not ok:
        # A complete file with the wrong content is not resumable: drop it.
        part.unlink()
        alg, expected = parse_hash(known_hash)
        raise ChecksumMismatchError(
            f"{dest.name} (from {url}): {alg} mismatch: expected {expected}, got {actual}; "
            f"the file was deleted and nothing was written to {dest}"
        )


# ----------------------------------------------------------------------------- tar


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
