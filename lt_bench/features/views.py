"""Augmented train views (``extract.train_views: V``; docs/protocol.md, train augmentation).

LIFT's heads see a fresh ``RandomResizedCrop`` + flip view of every train image each
epoch (``trainer.py``: ``transform_train``); a cached feature is one fixed view. This
caches V such views per image: view ``v`` of row ``i`` is drawn under the torch seed
``view_seed(mix(seed, v), i)``, so it does not depend on workers, batching or resumption.
Each view is one resumable :func:`extract_split` pass (its own shards); the passes are
then streamed, view-major, into ``train_views.parquet`` (``path``, ``label``, ``view``
int16, ``feature``); :func:`~lt_bench.features.store.read_feature_views` gives
``(labels (N,), views (V, N, D), meta)``. Decoding is on the CPU (random crops of PIL
images, as LIFT).
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from lt_bench.features.shards import shard_dir_for
from lt_bench.features.store import META_KEY
from lt_bench.io import atomic_path

log = logging.getLogger(__name__)


def view_pass_seed(seed: int, view: int) -> int:
    return int(np.random.SeedSequence([int(seed), 0x5EED, int(view)]).generate_state(1)[0])


def extract_train_views(bb, split_file: Path, image_root: Path, out: Path,
                        meta: dict[str, Any], views: int, seed: int = 0, **kw) -> dict:
    """Write ``views`` augmented views of every image of ``split_file`` to ``out``."""
    from lt_bench.features.encode import extract_split
    from lt_bench.features.protocol import train_view_transform

    tf, tf_meta = train_view_transform(bb)
    out = Path(out)
    parts, stats = [], []
    for v in range(views):
        part = out.with_name(f"{out.stem}.view{v:03d}.parquet")
        stats.append(extract_split(bb, split_file, image_root, part,
                                   {**meta, "view": v}, transform=tf, keep_shards=True,
                                   seed=view_pass_seed(seed, v), **kw))
        parts.append(part)
    final = {**meta, "views": views, "view_seed": seed, "transform": tf_meta}
    with atomic_path(out) as tmp:
        writer = None
        try:
            for v, part in enumerate(parts):
                t = pq.read_table(part)
                t = t.add_column(2, "view", pa.array(np.full(t.num_rows, v, dtype=np.int16)))
                if writer is None:
                    final.update(dim=t.schema.field("feature").type.list_size,
                                 dtype="float16", rows=t.num_rows * views,
                                 feature=json.loads(t.schema.metadata[META_KEY])["feature"])
                    schema = t.schema.with_metadata({META_KEY: json.dumps(final,
                                                                          sort_keys=True)})
                    writer = pq.ParquetWriter(tmp, schema)
                writer.write_table(t.replace_schema_metadata(schema.metadata))
        finally:
            if writer is not None:
                writer.close()
    for part in parts:
        part.unlink(missing_ok=True)
        shutil.rmtree(shard_dir_for(part), ignore_errors=True)
    secs = sum(s["seconds"] for s in stats)
    log.info("%s: %d views x %d images in %.1f s, %.2f MB", out.name, views,
             stats[0]["images"], secs, out.stat().st_size / 1e6)
    return {"views": views, "images": stats[0]["images"], "seconds": round(secs, 3),
            "bytes": out.stat().st_size}
