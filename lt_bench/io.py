"""Atomic file writing: an interrupted job never leaves a file that looks complete.

:func:`atomic_path` is the one owner of the hidden ``.{name}.XXXX.part`` temp files: it
holds an exclusive ``flock`` on its own while writing, removes those of a killed writer
(unlocked) before it starts, and turns a full disk into one line
(:class:`DiskFullError`). :func:`check_output_folder` is the one decision "may lt-bench
write into this folder?" (a user's own files are never overwritten).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import glob
import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from lt_bench.errors import InputValidationError, UserError

#: below this many free bytes a failed write is taken for a full disk (libraries such as
#: torch.save report ENOSPC as a RuntimeError without errno)
_FULL_BELOW = 1 << 20


class DiskFullError(UserError, OSError):
    """No space left (or quota exceeded) while a result was written; nothing was replaced."""


@contextlib.contextmanager
def atomic_path(final: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``final``; rename it to ``final`` on success.

    The temp file lives in the same directory so the rename is atomic on POSIX.
    On error the temp file is removed and ``final`` is untouched; where the error is a
    full disk, it becomes a :class:`DiskFullError` naming the folder.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_parts(final)
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".part", dir=final.parent)
    # held until the rename: a later writer of ``final`` sees the file is in use
    fcntl.flock(fd, fcntl.LOCK_EX)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        # mkstemp creates 0600 files; give results the usual permissions (shared clusters)
        os.chmod(tmp_path, 0o666 & ~_umask())
        os.replace(tmp_path, final)
    except BaseException as e:
        full = (isinstance(e, Exception) and not isinstance(e, UserError)
                and _disk_full(e, final.parent))
        tmp_path.unlink(missing_ok=True)
        if full:
            raise DiskFullError(
                f"no space left on the file system of {final.parent} while "
                f"writing {final.name}; free some space and rerun ({final} was not "
                f"replaced)") from e
        raise
    finally:
        os.close(fd)


def _disk_full(e: Exception, folder: Path) -> bool:
    """Is ``e`` a full disk? ENOSPC/EDQUOT anywhere in its chain, or (for libraries that
    lose the errno, e.g. torch.save's "unexpected pos") a folder with ~no space left,
    measured before the partial file is removed."""
    seen = e
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        seen = seen.__cause__ or seen.__context__
    try:
        st = os.statvfs(folder)
    except OSError:
        return False
    return st.f_bavail * st.f_frsize < _FULL_BELOW


def remove_stale_parts(final: str | os.PathLike) -> list[Path]:
    """Remove the temp files ``.{final.name}.*.part`` that a killed writer of ``final``
    left behind; one that a live writer holds (its flock) stays. Returns those removed."""
    final = Path(final)
    removed = []
    for part in final.parent.glob(f".{glob.escape(final.name)}.*.part"):
        try:
            fd = os.open(part, os.O_RDONLY)
        except OSError:  # gone meanwhile, or not ours to read
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # a live writer holds it
            os.close(fd)
            continue
        try:
            part.unlink(missing_ok=True)
            removed.append(part)
        finally:
            os.close(fd)
    return removed


def check_output_folder(folder: str | os.PathLike, is_ours: Callable[[Path], bool],
                        what: str, option: str = "--out") -> None:
    """Refuse to write into ``folder`` when it holds files that are not lt-bench's.

    A missing or empty folder is fine; so is one ``is_ours`` recognises (a run or split
    folder written before: rerunning replaces our own files). Anything else is a user's
    folder: lt-bench never overwrites or deletes files it did not create (the rule of
    ``download-images``' extraction too, lt_bench/data/download.py).
    """
    # lexically normalised: "new/../theirs" is "theirs" once "new" has been created
    folder = Path(os.path.abspath(folder))
    if not folder.exists():
        return
    if not folder.is_dir():
        raise InputValidationError(f"{option} {folder}: exists and is not a folder; expected "
                                   f"a new or empty folder, or a {what}")
    entries = sorted(p.name for p in folder.iterdir())
    if not entries or is_ours(folder):
        return
    shown = ", ".join(repr(n) for n in entries[:5]) + (", ..." if len(entries) > 5 else "")
    raise InputValidationError(
        f"{option} {folder}: not empty and not a {what} of lt-bench (it holds {shown}); "
        f"lt-bench never overwrites or deletes files it did not create; give a new or "
        f"empty folder")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def finite_or_null(obj: Any) -> Any:
    """The same structure with every NaN/±inf float replaced by None: bare ``NaN`` is not
    JSON, and most readers (jq, browsers, pandas with strict parsers) refuse it."""
    import math

    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite_or_null(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_or_null(v) for v in obj]
    if type(obj).__module__ == "numpy":
        return finite_or_null(_json_default(obj))
    return obj


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Strict JSON (``null`` for undefined numbers), written atomically."""
    text = json.dumps(finite_or_null(obj), indent=2, sort_keys=True, default=_json_default,
                      allow_nan=False)
    write_text(path, text + "\n")


def read_json(path: str | os.PathLike) -> Any:
    """The JSON value of ``path``; a file that is not UTF-8 JSON is an error naming it."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        what = "empty" if Path(path).stat().st_size == 0 else f"not valid JSON ({e})"
        raise InputValidationError(f"{path}: {what}; expected the JSON file lt-bench "
                                   "writes there") from None


def _json_default(o: Any):
    import numpy as np

    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


#: sha256_cached's memo: (path, inode, size, mtime_ns, ctime_ns) -> hex digest; and the
#: bytes it has hashed in this process (what the provenance checks cost,
#: benchmarks/provenance_checks.py)
_SHA_MEMO: dict[tuple[str, int, int, int, int], str] = {}
HASH_STATS = {"files": 0, "bytes": 0}


def sha256_cached(path: str | os.PathLike) -> str:
    """:func:`sha256_file`, hashed once per file per process: keyed by the file's inode,
    size and times, so a file rewritten (every writer renames onto it: a new inode) or
    touched is hashed again. The provenance checks of the readers (a run's recorded
    feature sha256, an ensemble's members) use it: the report reads the same few feature
    files for hundreds of runs."""
    st = os.stat(path)
    key = (str(Path(path).resolve()), st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    hit = _SHA_MEMO.get(key)
    if hit is None:
        hit = _SHA_MEMO[key] = sha256_file(path)
        HASH_STATS["files"] += 1
        HASH_STATS["bytes"] += st.st_size
    return hit


def git_blob_id(path: str | os.PathLike) -> str:
    """``git hash-object`` of a file: sha1 over ``b"blob <size>\\0" + content``."""
    data = Path(path).read_bytes()
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def stable_hash(obj: Any, n: int = 12) -> str:
    """Short deterministic hash of a JSON-able object (config hashes, run keys)."""
    blob = json.dumps(obj, sort_keys=True, default=_json_default).encode()
    return hashlib.sha256(blob).hexdigest()[:n]
