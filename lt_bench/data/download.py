"""Resumable, verified downloads (their archives are extracted by ``archives.py``).

Rules (docs/architecture.md §9): a file appears under its final name only after its
checksum (or, when no checksum is published, its advertised length) has been verified; a
partial transfer lives in ``<name>.part`` beside the target and is resumed with an HTTP
``Range`` request.

Why urllib instead of pooch: pooch downloads into a temporary file and starts from byte 0
on every retry. That is fine for a split list, but the image archives are 30–120 GB, where a
dropped connection must resume from where it stopped. We still use pooch's
``"alg:hex"`` way of writing checksums.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import http.client
import logging
import os
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from lt_bench.errors import InputValidationError, UserError
from lt_bench.io import git_blob_id, sha256_file

log = logging.getLogger(__name__)

CHUNK = 1 << 20
HASH_ALGORITHMS = ("sha256", "md5", "gitblob")


class DownloadError(UserError, RuntimeError):
    """A download could not be completed."""


class ChecksumMismatchError(DownloadError):
    """A file's checksum differs from the pinned one; nothing was kept under the final name."""


# ----------------------------------------------------------------------------- hashes


def parse_hash(known_hash: str) -> tuple[str, str]:
    """Split ``"sha256:abc…"`` into ``("sha256", "abc…")``; a bare hex digest is sha256."""
    alg, sep, digest = known_hash.partition(":")
    if not sep:
        alg, digest = "sha256", known_hash
    alg = alg.lower()
    if alg not in HASH_ALGORITHMS:
        raise InputValidationError(
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
    raise InputValidationError(f"unknown hash algorithm {alg!r}; valid: {', '.join(HASH_ALGORITHMS)}")


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
