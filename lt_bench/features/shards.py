"""Resumable extraction: a split's rows in shards (``extract_split``, ``encode.py``).

Rows are encoded in shards of ``shard_size``; each finished shard is written atomically to
``{split}.parquet.shards/shard-NNNNN.parquet`` with a ``manifest.json`` saying what it was
made from (split-list hash, backbone, weights, shard size, AMP). A restarted job re-uses
every finished shard whose manifest matches and encodes only the rest. The final
``{split}.parquet`` is assembled from the shards and appears atomically, only when every
shard is there. Batches never straddle a shard boundary, so a resumed extraction runs
exactly the batches an uninterrupted one would.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from lt_bench.features.store import META_KEY, read_meta
from lt_bench.io import atomic_path, read_json, write_json

log = logging.getLogger(__name__)

SHARD_DIR_SUFFIX = ".shards"


def shard_dir_for(out: Path) -> Path:
    return out.with_name(out.name + SHARD_DIR_SUFFIX)


def _write_parquet(table: pa.Table, path: Path) -> None:
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


@dataclass
class Shards:
    """The shard folder of one output file: ``rows`` rows in shards of ``size``."""

    dir: Path
    rows: int
    size: int

    @property
    def count(self) -> int:
        return max(1, -(-self.rows // self.size))

    def path(self, i: int) -> Path:
        return self.dir / f"shard-{i:05d}.parquet"

    def bounds(self, i: int) -> tuple[int, int]:
        return i * self.size, min((i + 1) * self.size, self.rows)

    def rows_of(self, i: int) -> int:
        lo, hi = self.bounds(i)
        return hi - lo

    def open(self, manifest: dict[str, Any]) -> None:
        """Keep the shards made from ``manifest``'s inputs; discard any others."""
        if self.dir.exists():
            mpath = self.dir / "manifest.json"
            old = read_json(mpath) if mpath.exists() else None
            if old != manifest:  # split list, weights, preprocessing or shard size changed
                log.warning("%s: discarding shards made from different inputs", self.dir)
                shutil.rmtree(self.dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        write_json(self.dir / "manifest.json", manifest)

    def _ok(self, i: int) -> bool:
        path = self.path(i)
        if not path.exists():
            return False
        try:
            ok = read_meta(path).get("rows") == self.rows_of(i)
        except Exception:  # a torn shard cannot exist (atomic rename), but be safe
            ok = False
        if not ok:
            log.warning("discarding unusable shard %s", path)
            path.unlink(missing_ok=True)
        return ok

    def finished(self) -> set[int]:
        return {i for i in range(self.count) if self._ok(i)}

    def batches(self, todo: list[int], batch_size: int) -> list[list[int]]:
        """Row indices of each batch of the shards ``todo``, none across a shard border."""
        out = []
        for s in todo:
            lo, hi = self.bounds(s)
            out += [list(range(b, min(b + batch_size, hi))) for b in range(lo, hi, batch_size)]
        return out

    def write(self, i: int, table: pa.Table) -> None:
        _write_parquet(table, self.path(i))

    def assemble(self, out: Path, meta: dict[str, Any]) -> None:
        """Stream the shards, in order, into ``out`` (atomically; one row group per shard)."""
        shards = [self.path(i) for i in range(self.count)]
        rows, schema = 0, None
        with atomic_path(out) as tmp:
            writer = None
            try:
                for p in shards:
                    t = pq.read_table(p)
                    if schema is None:
                        schema = _final_schema(t, shards, meta)
                        writer = pq.ParquetWriter(tmp, schema)
                    writer.write_table(t.replace_schema_metadata(schema.metadata))
                    rows += t.num_rows
            finally:
                if writer is not None:
                    writer.close()
        log.debug("%s: assembled %d rows from %d shards", out, rows, len(shards))


def _final_schema(first: pa.Table, shards: list[Path], meta: dict[str, Any]) -> pa.Schema:
    dim = first.schema.field("feature").type.list_size
    total = sum(pq.read_metadata(s).num_rows for s in shards)
    final = {**meta, "dim": dim, "dtype": "float16", "rows": total}
    if "crops" in first.schema.names:
        final["crops"] = first.schema.field("crops").type.list_size // dim
    return first.schema.with_metadata({META_KEY: json.dumps(final, sort_keys=True)})
