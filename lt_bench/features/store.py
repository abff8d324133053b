"""The Parquet feature store (DESIGN §3 stage 3).

``{split}.parquet``: ``path`` string, ``label`` int32, ``feature``
fixed_size_list<float16, D>; provenance as JSON under the ``lt_bench`` schema
metadata key. ``text.parquet``: ``label``, ``classname`` and, for CLIP-style
backbones, ``embedding`` fixed_size_list<float32, D> (prompt-ensembled, unit norm);
the logit scale and templates in metadata.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from lt_bench.io import atomic_path

META_KEY = b"lt_bench"


class CorruptFileError(RuntimeError):
    pass


@dataclass
class FeatureSplit:
    paths: list[str]
    labels: np.ndarray  # int64 (N,)
    features: np.ndarray  # float32 (N, D)
    meta: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.labels)


@dataclass
class TextEmbeddings:
    classnames: list[str]
    embeddings: np.ndarray | None  # float32 (K, D), unit norm; None without a text tower
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def logit_scale(self) -> float | None:
        return self.meta.get("logit_scale")


def _fixed_list(values: np.ndarray, dtype: pa.DataType) -> pa.FixedSizeListArray:
    values = np.ascontiguousarray(values)
    flat = pa.array(values.reshape(-1), type=dtype)
    return pa.FixedSizeListArray.from_arrays(flat, values.shape[1])


def _fixed_list_to_numpy(col: pa.ChunkedArray) -> np.ndarray:
    arr = col.combine_chunks()
    dim = arr.type.list_size
    return arr.flatten().to_numpy(zero_copy_only=False).reshape(-1, dim)


def features_table(paths: list[str], labels: np.ndarray, features: np.ndarray,
                   meta: dict[str, Any]) -> pa.Table:
    table = pa.table({
        "path": pa.array(paths, type=pa.string()),
        "label": pa.array(np.asarray(labels, dtype=np.int32)),
        "feature": _fixed_list(np.asarray(features, dtype=np.float16), pa.float16()),
    })
    meta = {**meta, "dim": int(features.shape[1]), "dtype": "float16", "rows": len(labels)}
    return table.replace_schema_metadata({META_KEY: json.dumps(meta, sort_keys=True)})


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
        raise FileNotFoundError(f"feature file not found: {path}")
    try:
        return pq.read_table(path, columns=columns)
    except (pa.ArrowInvalid, OSError) as e:
        raise CorruptFileError(f"{path}: not a readable Parquet file ({e}); delete it and rerun "
                               "the stage that made it") from e


def read_features(path: str | Path) -> FeatureSplit:
    table = _read(path)
    meta = json.loads((table.schema.metadata or {}).get(META_KEY, b"{}"))
    missing = {"path", "label", "feature"} - set(table.column_names)
    if missing:
        raise CorruptFileError(f"{path}: missing column(s) {sorted(missing)}")
    feats = _fixed_list_to_numpy(table.column("feature")).astype(np.float32)
    labels = table.column("label").to_numpy().astype(np.int64)
    return FeatureSplit(table.column("path").to_pylist(), labels, feats, meta)


def write_text_embeddings(path: str | Path, classnames: list[str],
                          embeddings: np.ndarray | None, meta: dict[str, Any]) -> None:
    cols = {"label": pa.array(np.arange(len(classnames), dtype=np.int32)),
            "classname": pa.array(classnames, type=pa.string())}
    if embeddings is not None:
        cols["embedding"] = _fixed_list(np.asarray(embeddings, dtype=np.float32), pa.float32())
    table = pa.table(cols).replace_schema_metadata(
        {META_KEY: json.dumps({**meta, "has_text": embeddings is not None}, sort_keys=True)})
    write_table(table, path)


def read_text_embeddings(path: str | Path) -> TextEmbeddings:
    table = _read(path)
    meta = json.loads((table.schema.metadata or {}).get(META_KEY, b"{}"))
    emb = (_fixed_list_to_numpy(table.column("embedding")).astype(np.float32)
           if "embedding" in table.column_names else None)
    return TextEmbeddings(table.column("classname").to_pylist(), emb, meta)
