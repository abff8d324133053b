"""Atomic file writing: an interrupted job never leaves a file that looks complete."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def atomic_path(final: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``final``; rename it to ``final`` on success.

    The temp file lives in the same directory so the rename is atomic on POSIX.
    On error the temp file is removed and ``final`` is untouched.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".part", dir=final.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        # mkstemp creates 0600 files; give results the usual permissions (shared clusters)
        os.chmod(tmp_path, 0o666 & ~_umask())
        os.replace(tmp_path, final)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


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
    return json.loads(Path(path).read_text())


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
