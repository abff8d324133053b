"""Files a run stores beside its predictor: val/test logits (run folders of earlier
versions, predictor kind ``stored``), a fine-tuning's pre-head features, from which the
seam recomputes its logits (docs/architecture.md §3.5), and every run's per-image
predictions (the arg-max of the logits its metrics were computed from), which the
significance bootstrap reads instead of rebuilding K-wide logits."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lt_bench.errors import InputValidationError, MissingInputError
from lt_bench.io import atomic_path


def arrow_column(values):
    """A 1-d numpy array (numbers or str) as an Arrow array, built from its buffers:
    pa.array()/pa.table() import pandas on first use (0.4-1 s of every run's start-up)."""
    import pyarrow as pa

    x = np.ascontiguousarray(values)
    if x.dtype.kind in "US":
        data = [s.encode() for s in x.tolist()]
        offsets = np.zeros(len(data) + 1, np.int32)
        np.cumsum([len(s) for s in data], out=offsets[1:])
        return pa.StringArray.from_buffers(len(data), pa.py_buffer(offsets),
                                           pa.py_buffer(b"".join(data)))
    if x.dtype.kind not in "iuf":  # bools are bit-packed in Arrow, objects have no buffer
        return pa.array(x.tolist())
    return pa.Array.from_buffers(pa.from_numpy_dtype(x.dtype), len(x), [None, pa.py_buffer(x)])


# --- stored logits (runs that cannot rebuild them cheaply: fine-tuning) --------------------

def write_logits(labels: np.ndarray, logits: np.ndarray, out: Path) -> None:
    """Contract: ``label`` int32, ``logits`` fixed_size_list<float32, K>, split-list order."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    logits = np.ascontiguousarray(logits, dtype=np.float32)
    table = pa.table({
        "label": pa.array(np.asarray(labels, dtype=np.int32)),
        "logits": pa.FixedSizeListArray.from_arrays(pa.array(logits.reshape(-1)),
                                                    logits.shape[1]),
    })
    with atomic_path(out) as tmp:
        pq.write_table(table, tmp)


def read_logits(path: Path) -> tuple[np.ndarray, np.ndarray]:
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    col = table.column("logits").combine_chunks()
    return (table.column("label").to_numpy().astype(np.int64),
            col.flatten().to_numpy().reshape(-1, col.type.list_size))


# --- stored pre-head features (fine-tuning: the seam applies the stored head to them) ---

#: view -> column of a run's features file: "centre" the pre-head feature of the test
#: transform, "tte" the mean of the five test-time crops' unit-normalised features
FEATURE_VIEWS = {"centre": "feature", "tte": "feature_tte"}


def write_run_features(labels: np.ndarray, views: dict[str, np.ndarray], out: Path) -> Path:
    """Contract: ``label`` int32 and, per view, ``feature`` / ``feature_tte``
    fixed_size_list<float16, D>, split-list order (float16 as the feature store: D = 768
    makes a row 1.5 kB where K = 8,142 float32 logits were 32 kB). Whatever is computed
    from the file is computed from these rounded values, so the run's metrics and
    ``lt-bench logits`` agree exactly."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    unknown = set(views) - set(FEATURE_VIEWS)
    if unknown or not views:
        raise AssertionError(f"feature views {sorted(views)}; valid: {sorted(FEATURE_VIEWS)}")
    cols = {"label": arrow_column(np.asarray(labels, dtype=np.int32))}
    for view, x in views.items():
        x = np.ascontiguousarray(x, dtype=np.float16)
        if x.ndim != 2 or len(x) != len(labels) or not np.isfinite(x).all():
            raise InputValidationError(f"{out}: {view} features of shape {x.shape} for "
                                       f"{len(labels)} labels, or not finite in float16")
        cols[FEATURE_VIEWS[view]] = pa.FixedSizeListArray.from_arrays(
            arrow_column(x.reshape(-1)), x.shape[1])
    with atomic_path(Path(out)) as tmp:
        pq.write_table(pa.Table.from_arrays(list(cols.values()), names=list(cols)), tmp,
                       compression="zstd")
    return Path(out)


def read_run_features(path: Path, view: str = "centre") -> tuple[np.ndarray, np.ndarray]:
    """(labels int64, features float32 (N, D)) of one view of a run's features file."""
    import pyarrow.parquet as pq

    path = Path(path)
    if not path.is_file():
        raise MissingInputError(f"{path.parent}: no stored {path.stem} "
                                "(a fine-tuning run stores val and test features only)")
    column = FEATURE_VIEWS[view]
    names = pq.read_schema(path).names
    if column not in names:
        stored = [v for v, c in FEATURE_VIEWS.items() if c in names]
        raise InputValidationError(
            f"{path}: no {view!r} view stored (stored: {stored}); fine-tune with "
            "tte: both to store the centre and the five-crop views")
    table = pq.read_table(path, columns=["label", column])
    col = table.column(column).combine_chunks()
    feats = col.flatten().to_numpy().reshape(-1, col.type.list_size).astype(np.float32)
    return table.column("label").to_numpy().astype(np.int64), feats


# --- stored predictions (every run: what significance needs, without the logits) -------

def write_predictions(labels: np.ndarray, logits: np.ndarray, out: Path) -> Path:
    """Contract: ``label`` int32 and ``prediction`` int32 (``numpy.argmax`` of ``logits``
    along classes: ties go to the first class, as for the seam's logits), split-list
    order. 8 bytes a row where the logits are 4 × K (benchmarks/README.md, scale.py)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    cols = {"label": np.asarray(labels, dtype=np.int32),
            "prediction": np.asarray(logits).argmax(1).astype(np.int32)}
    with atomic_path(Path(out)) as tmp:
        pq.write_table(pa.Table.from_arrays([arrow_column(v) for v in cols.values()],
                                            names=list(cols)), tmp)
    return Path(out)


def read_predictions(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(labels int64, predictions int64) of a predictions file."""
    import pyarrow.parquet as pq

    with pq.ParquetFile(path) as f:  # not read_table: no pyarrow.dataset (pandas) import
        table = f.read(columns=["label", "prediction"])
    return (table.column("label").to_numpy().astype(np.int64),
            table.column("prediction").to_numpy().astype(np.int64))
