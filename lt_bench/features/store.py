"""The Parquet feature store (docs/architecture.md §3 stage 3).

``{split}.parquet``
    ``path`` string, ``label`` int32, ``feature`` fixed_size_list<float16, D>; with
    test-time ensembling (``extract.tte: fivecrop`` or ``both``) val/test also have
    ``crops`` fixed_size_list<float16, C·D> (row-major C x D) and metadata ``crops: C``.
    Provenance as JSON under the ``lt_bench`` schema metadata key, including ``feature``
    (``pre_projection`` | ``encode_image`` | ``timm_pooled``) and ``transform``.

    The val/test **views** a run may read (``centre``: the ``feature`` column; ``fivecrop``:
    the crops) and the metadata ``default_view`` (``extract.tte: both``) are read by
    ``features/eval_views.py``.
``train_views.parquet`` (``extract.train_views: V`` > 0)
    ``path``, ``label``, ``view`` int16, ``feature``; view-major (all N rows of view 0,
    then view 1, ...); read with :func:`read_feature_views`.
``text.parquet``
    ``label``, ``classname`` and, for CLIP-style backbones, ``embedding`` (the zero-shot
    prompt ensemble) and ``init_embedding`` (the head-initialisation prompt set), both
    fixed_size_list<float32, E>, unit norm. The projection ``P`` (D x E, float32) of a
    pre-projection feature lives in the same file, under the schema metadata key
    ``lt_bench_projection`` (base64 of little-endian float32, shape and sha256 in the
    ``projection`` entry of the JSON metadata): the K-row table has no room for a D-row
    matrix, and one file keeps the embeddings and the matrix they need together (no
    sidecar to lose or mix up). Logit scale and prompts in metadata.
"""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from lt_bench.errors import InputValidationError, MissingInputError, UserError
from lt_bench.io import atomic_path

META_KEY = b"lt_bench"
PROJECTION_KEY = b"lt_bench_projection"
FEATURE_KINDS = ("pre_projection", "encode_image", "timm_pooled")


class CorruptFileError(UserError, RuntimeError):
    """A feature or text file that is not readable Parquet, or lacks lt_bench's metadata;
    the message names it and says to delete it and rerun the stage that made it."""


class NonFiniteFeatureError(InputValidationError):
    """A feature matrix holds NaN or inf (names the file and the first bad rows)."""


class NoTextTowerError(UserError):
    """Zero-shot logits were asked of a backbone without a text tower."""


class ProvenanceError(InputValidationError):
    """A file's recorded origin differs from what it is read with; names both sides."""


#: what every file of one features folder (one `lt-bench extract`) records alike: a file
#: whose value differs comes from another extraction (checked where both record it, so
#: files written before a key existed are still read)
FOLDER_IDENTITY = ("dataset", "backbone", "weights")


def _short(v) -> str:
    return f"{v[:12]}…" if isinstance(v, str) and len(v) > 16 else repr(v)


def check_folder(files: dict[str, tuple[Path, dict[str, Any]]], ref: str = "train") -> None:
    """The files of one features folder (``name -> (path, metadata)``) come from one
    extraction: the same dataset, backbone and weights as ``ref`` (the train split), the
    same split lists (``inputs_sha256``, recorded since extraction names them all), and a
    split file's own ``split_sha256`` equal to what ``ref``'s extraction recorded for that
    split. A :class:`ProvenanceError` naming both files otherwise (a val/test file or a
    ``text.parquet`` copied from another extraction gives a "finished" run at chance)."""
    ref_path, ref_meta = files[ref]
    fix = "re-extract the folder (one `lt-bench extract` writes all its files)"
    for name, (path, meta) in files.items():
        if name == ref:
            continue
        for key in FOLDER_IDENTITY:
            a, b = ref_meta.get(key), meta.get(key)
            if a is not None and b is not None and a != b:
                raise ProvenanceError(f"{path} was extracted with {key} {_short(b)} but "
                                      f"{ref_path} with {key} {_short(a)}; {fix}")
        a, b = ref_meta.get("inputs_sha256") or {}, meta.get("inputs_sha256") or {}
        differ = sorted(k for k in set(a) & set(b) if a[k] != b[k])
        own, rec = meta.get("split_sha256"), a.get(meta.get("split"))
        if not differ and own and rec and own != rec:
            differ, b = [meta.get("split")], {meta.get("split"): own}
        if differ:
            k = differ[0]
            raise ProvenanceError(
                f"{path} and {ref_path} come from different extractions: {k} list sha256 "
                f"{_short(b[k])} vs {_short(a[k])}; {fix}")


def check_origin(path: str | Path, meta: dict[str, Any], **expected: Any) -> None:
    """``meta`` (of the file at ``path``) records the expected dataset/backbone/...; a
    :class:`ProvenanceError` naming both values otherwise (keys it does not record pass)."""
    for key, want in expected.items():
        got = meta.get(key)
        if want is not None and got is not None and got != want:
            raise ProvenanceError(f"{path} was made for {key} {_short(got)}, but it is used "
                                  f"with {key} {_short(want)}; use the file of {key} "
                                  f"{_short(want)} (or remake it)")


def _l2n(x: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.maximum(n, 1e-12)


def first_bad_rows(values: np.ndarray, limit: int = 5) -> list[int]:
    """Indices of the first ``limit`` rows (axis 0) with a NaN or inf."""
    bad = ~np.isfinite(values.reshape(len(values), -1)).all(axis=1)
    return [int(i) for i in np.flatnonzero(bad)[:limit]]


def check_finite(values: np.ndarray, where: str, row_offset: int = 0) -> None:
    """Raise :class:`NonFiniteFeatureError` naming ``where`` and the first bad rows."""
    if values.size and not np.isfinite(values).all():
        bad = ~np.isfinite(values.reshape(len(values), -1)).all(axis=1)
        rows = [r + row_offset for r in first_bad_rows(values)]
        raise NonFiniteFeatureError(
            f"{where}: {int(bad.sum())} row(s) with NaN/inf features (first rows, 0-based: "
            f"{rows}); expected finite values. Re-extract the features (a corrupt file, or "
            "an fp16 overflow of the backbone: try extraction without AMP)")


@dataclass
class FeatureSplit:
    paths: list[str]
    labels: np.ndarray  # int64 (N,)
    features: np.ndarray  # float32 (N, D)
    meta: dict[str, Any] = field(default_factory=dict)
    crops: np.ndarray | None = None  # float32 (N, C, D): test-time ensembling views

    def __len__(self) -> int:
        return len(self.labels)


@dataclass
class TextEmbeddings:
    """Class text embeddings of one (dataset, backbone) and what zero-shot needs.

    ``embeddings``: K x E zero-shot prompt ensemble; ``init_embeddings``: K x E
    head-initialisation prompts (both unit norm; None without a text tower);
    ``projection``: D x E image projection of a pre-projection feature (None when the
    stored feature already is ``encode_image``).
    """

    classnames: list[str]
    embeddings: np.ndarray | None
    meta: dict[str, Any] = field(default_factory=dict)
    init_embeddings: np.ndarray | None = None
    projection: np.ndarray | None = None

    @property
    def logit_scale(self) -> float | None:
        return self.meta.get("logit_scale")

    def zero_shot_logits(self, features: np.ndarray) -> np.ndarray:
        """``s · cos(f @ P, t_k)`` (N x K float32); ``f`` itself when there is no P."""
        if self.embeddings is None or self.logit_scale is None:
            raise NoTextTowerError(
                f"backbone {self.meta.get('backbone', '?')!r} has no text tower (no class "
                "text embeddings or logit scale in text.parquet): zero-shot logits need a "
                "CLIP-style backbone")
        f = np.asarray(features, dtype=np.float32)
        if f.ndim == 3:  # (N, C, D) crops: the caller averages the logits
            return np.stack([self.zero_shot_logits(f[:, c]) for c in range(f.shape[1])], 1)
        if self.projection is not None:
            if f.shape[-1] != self.projection.shape[0]:
                raise InputValidationError(
                    f"features of dimension {f.shape[-1]} do not match the stored projection "
                    f"({self.projection.shape[0]} x {self.projection.shape[1]})")
            f = f @ self.projection
        return (float(self.logit_scale) * (_l2n(f) @ self.embeddings.T)).astype(np.float32)

    def head_init(self) -> np.ndarray | None:
        """K x D cosine-head weights: ``normalize(normalize(t_init) @ P.T)`` (LIFT,
        ``trainer.py: init_head_text_feat``); ``t_init`` without P; None without text.

        Files without ``init_embedding`` (written before it existed) use ``embeddings``.
        """
        t = self.init_embeddings if self.init_embeddings is not None else self.embeddings
        if t is None:
            return None
        t = _l2n(t.astype(np.float32))
        if self.projection is None:
            return t
        return _l2n(t @ self.projection.T).astype(np.float32)


def _fixed_list(values: np.ndarray, dtype: pa.DataType) -> pa.FixedSizeListArray:
    values = np.ascontiguousarray(values)
    flat = pa.array(values.reshape(-1), type=dtype)
    return pa.FixedSizeListArray.from_arrays(flat, int(np.prod(values.shape[1:])))


def column_numpy(col: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """A numeric column as a (read-only) numpy view of its values buffer. pyarrow's own
    to_numpy imports pandas on first use (0.5-1 s of every job's start-up on 2 cores);
    columns with nulls or of other types take that path (nulls become NaN, which
    check_finite then names)."""
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    t = arr.type
    kind = "f" if pa.types.is_floating(t) else "i" if pa.types.is_signed_integer(t) else (
        "u" if pa.types.is_unsigned_integer(t) else None)
    if kind is None or arr.null_count:
        return arr.to_numpy(zero_copy_only=False)
    dtype = np.dtype(f"<{kind}{t.bit_width // 8}")
    return np.frombuffer(arr.buffers()[1], dtype=dtype, count=len(arr),
                         offset=arr.offset * dtype.itemsize)


def _fixed_list_to_numpy(col: pa.ChunkedArray) -> np.ndarray:
    arr = col.combine_chunks()
    dim = arr.type.list_size
    return column_numpy(arr.flatten()).reshape(-1, dim)


def features_table(paths: list[str], labels: np.ndarray, features: np.ndarray,
                   meta: dict[str, Any], crops: np.ndarray | None = None,
                   views: np.ndarray | None = None) -> pa.Table:
    """One table of the store; ``crops`` (N, C, D) adds the TTE column, ``views`` (N,) the
    ``view`` column of ``train_views.parquet``."""
    cols = {
        "path": pa.array(paths, type=pa.string()),
        "label": pa.array(np.asarray(labels, dtype=np.int32)),
    }
    if views is not None:
        cols["view"] = pa.array(np.asarray(views, dtype=np.int16))
    cols["feature"] = _fixed_list(np.asarray(features, dtype=np.float16), pa.float16())
    meta = {**meta, "dim": int(features.shape[1]), "dtype": "float16", "rows": len(labels)}
    if crops is not None:
        crops = np.asarray(crops, dtype=np.float16)
        cols["crops"] = _fixed_list(crops, pa.float16())
        meta["crops"] = int(crops.shape[1])
    return pa.table(cols).replace_schema_metadata({META_KEY: json.dumps(meta, sort_keys=True)})


def write_table(table: pa.Table, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def read_meta(path: str | Path) -> dict[str, Any]:
    try:
        md = pq.read_schema(path).metadata or {}
    except (pa.ArrowInvalid, OSError) as e:
        raise CorruptFileError(f"{path}: not a readable Parquet file ({e}); delete it and rerun "
                               "the stage that made it") from e
    if META_KEY not in md:
        raise CorruptFileError(f"{path}: Parquet file without lt_bench metadata")
    return json.loads(md[META_KEY])


def _read(path: str | Path, columns=None) -> pa.Table:
    path = Path(path)
    if not path.is_file():
        raise MissingInputError(f"feature file not found: {path}; run the extract stage "
                                "that makes it")
    try:
        # ParquetFile, not pq.read_table: read_table goes through pyarrow.dataset, whose
        # import pulls in pandas (1-2 s of every job that reads features, on 2 cores)
        with pq.ParquetFile(path) as f:
            return f.read(columns=columns)
    except (pa.ArrowInvalid, OSError) as e:
        raise CorruptFileError(f"{path}: not a readable Parquet file ({e}); delete it and rerun "
                               "the stage that made it") from e


def _meta_of(table: pa.Table) -> dict[str, Any]:
    return json.loads((table.schema.metadata or {}).get(META_KEY, b"{}"))


def read_features(path: str | Path) -> FeatureSplit:
    """A split's features (float32); NaN/inf rows raise :class:`NonFiniteFeatureError`."""
    table = _read(path)
    meta = _meta_of(table)
    missing = {"path", "label", "feature"} - set(table.column_names)
    if missing:
        raise CorruptFileError(f"{path}: missing column(s) {sorted(missing)}")
    feats = _fixed_list_to_numpy(table.column("feature")).astype(np.float32)
    check_finite(feats, f"{path} (column 'feature')")
    crops = None
    if "crops" in table.column_names:
        c = int(meta.get("crops") or 0)
        flat = _fixed_list_to_numpy(table.column("crops")).astype(np.float32)
        if c <= 0 or flat.shape[1] % c:
            raise CorruptFileError(f"{path}: column 'crops' of width {flat.shape[1]} does not "
                                   f"match the metadata's crops={meta.get('crops')!r}")
        crops = flat.reshape(len(flat), c, flat.shape[1] // c)
        check_finite(crops, f"{path} (column 'crops')")
    labels = column_numpy(table.column("label")).astype(np.int64)
    return FeatureSplit(table.column("path").to_pylist(), labels, feats, meta, crops)


#: read_features_shared's cache: (path, inode, size, mtime, ctime) -> FeatureSplit, most
#: recent last
_SHARED: dict[tuple[str, int, int, int, int], FeatureSplit] = {}
SHARED_SPLITS = 6  # val + test of three backbones: one dataset's report, one ensemble
#: and at most this many bytes of arrays (ImageNet-LT's test split is 154 MB at D = 768,
#: 770 MB with five test-time crops): the last file read is kept whatever its size
SHARED_BYTES = 2 << 30


def _nbytes(split: FeatureSplit) -> int:
    return split.features.nbytes + (split.crops.nbytes if split.crops is not None else 0)


def read_features_shared(path: str | Path) -> FeatureSplit:
    """:func:`read_features`, kept for the next caller in this process (the last
    ``SHARED_SPLITS`` files read, up to ``SHARED_BYTES``). For readers that rebuild many
    runs' logits from the same few feature files: the significance table read the demo's
    3 test files 200 times. Keyed by the file's inode, size and times (every write of a
    feature file is a rename onto it: a new inode), so a rewritten file is read again.
    The arrays are shared: callers must not modify them."""
    st = Path(path).stat() if Path(path).is_file() else None
    if st is None:
        return read_features(path)  # its own "not found" error
    key = (str(Path(path).resolve()), st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    hit = _SHARED.pop(key, None)
    if hit is None:
        hit = read_features(path)
    _SHARED[key] = hit
    while len(_SHARED) > 1 and (len(_SHARED) > SHARED_SPLITS or
                                sum(map(_nbytes, _SHARED.values())) > SHARED_BYTES):
        _SHARED.pop(next(iter(_SHARED)))
    return hit


def read_feature_views(path: str | Path) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """``train_views.parquet`` -> (labels (N,) int64, views (V, N, D) float32, meta)."""
    table = _read(path)
    meta = _meta_of(table)
    missing = {"path", "label", "view", "feature"} - set(table.column_names)
    if missing:
        raise CorruptFileError(f"{path}: missing column(s) {sorted(missing)}")
    view = column_numpy(table.column("view")).astype(np.int64)
    v = int(meta.get("views") or (view.max() + 1 if len(view) else 0))
    if v == 0 or len(view) % v:
        raise CorruptFileError(f"{path}: {len(view)} rows are not {v} views of equal size")
    n = len(view) // v
    if not np.array_equal(view, np.repeat(np.arange(v), n)):
        raise CorruptFileError(f"{path}: rows are not view-major (view 0 rows, then view 1, ...)")
    feats = _fixed_list_to_numpy(table.column("feature")).astype(np.float32)
    check_finite(feats, f"{path} (column 'feature')")
    labels = column_numpy(table.column("label")).astype(np.int64)
    if v > 1 and not np.array_equal(labels.reshape(v, n), np.broadcast_to(labels[:n], (v, n))):
        raise CorruptFileError(f"{path}: the views do not list the same images in the same order")
    return labels[:n], feats.reshape(v, n, -1), meta


def _encode_projection(p: np.ndarray) -> tuple[bytes, dict]:
    p = np.ascontiguousarray(p, dtype="<f4")
    raw = p.tobytes()
    return base64.b64encode(raw), {"shape": list(p.shape), "dtype": "float32",
                                   "sha256": hashlib.sha256(raw).hexdigest()}


def write_text_embeddings(path: str | Path, classnames: list[str],
                          embeddings: np.ndarray | None, meta: dict[str, Any],
                          init_embeddings: np.ndarray | None = None,
                          projection: np.ndarray | None = None) -> None:
    cols = {"label": pa.array(np.arange(len(classnames), dtype=np.int32)),
            "classname": pa.array(classnames, type=pa.string())}
    if embeddings is not None:
        cols["embedding"] = _fixed_list(np.asarray(embeddings, dtype=np.float32), pa.float32())
    if init_embeddings is not None:
        cols["init_embedding"] = _fixed_list(np.asarray(init_embeddings, dtype=np.float32),
                                             pa.float32())
    meta = {**meta, "has_text": embeddings is not None}
    md = {}
    if projection is not None:
        md[PROJECTION_KEY], meta["projection"] = _encode_projection(projection)
    md[META_KEY] = json.dumps(meta, sort_keys=True)
    write_table(pa.table(cols).replace_schema_metadata(md), path)


def _decode_projection(path, table: pa.Table, info: dict) -> np.ndarray:
    raw_b64 = (table.schema.metadata or {}).get(PROJECTION_KEY)
    if raw_b64 is None:
        raise CorruptFileError(f"{path}: metadata names a projection but the file holds none")
    raw = base64.b64decode(raw_b64)
    if hashlib.sha256(raw).hexdigest() != info.get("sha256"):
        raise CorruptFileError(f"{path}: the stored projection does not match its sha256")
    return np.frombuffer(raw, dtype="<f4").reshape(info["shape"]).astype(np.float32)


def read_text_embeddings(path: str | Path) -> TextEmbeddings:
    table = _read(path)
    meta = _meta_of(table)

    def col(name):
        if name not in table.column_names:
            return None
        return _fixed_list_to_numpy(table.column(name)).astype(np.float32)

    proj = _decode_projection(path, table, meta["projection"]) if meta.get("projection") else None
    emb, init = col("embedding"), col("init_embedding")
    for name, e in (("embedding", emb), ("init_embedding", init)):
        if e is not None:
            check_finite(e, f"{path} (column {name!r})")
            if proj is not None and e.shape[1] != proj.shape[1]:
                raise CorruptFileError(f"{path}: {name} width {e.shape[1]} does not match the "
                                       f"projection {proj.shape[0]} x {proj.shape[1]}")
    return TextEmbeddings(table.column("classname").to_pylist(), emb, meta, init, proj)
