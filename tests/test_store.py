"""Parquet feature store: contract, round trip, corrupt files."""

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lt_bench.features.store import (
    META_KEY,
    CorruptFileError,
    features_table,
    read_features,
    read_text_embeddings,
    write_table,
    write_text_embeddings,
)


def test_features_round_trip_and_schema_contract(tmp_path):
    rng = np.random.default_rng(0)
    feats = rng.normal(size=(7, 5)).astype(np.float32)
    paths = [f"a/{i}.png" for i in range(7)]
    labels = np.array([0, 1, 2, 0, 1, 2, 0])
    write_table(features_table(paths, labels, feats, {"backbone": "b", "split": "train"}),
                tmp_path / "train.parquet")

    schema = pq.read_schema(tmp_path / "train.parquet")
    assert schema.field("path").type == pa.string()
    assert schema.field("label").type == pa.int32()
    assert schema.field("feature").type == pa.list_(pa.float16(), 5)
    meta = json.loads(schema.metadata[META_KEY])
    assert meta["dim"] == 5 and meta["dtype"] == "float16" and meta["backbone"] == "b"

    back = read_features(tmp_path / "train.parquet")
    assert back.paths == paths
    assert back.labels.tolist() == labels.tolist()
    np.testing.assert_allclose(back.features, feats.astype(np.float16).astype(np.float32))
    np.testing.assert_allclose(back.features, feats, rtol=1e-3, atol=1e-3)


def test_text_embeddings_round_trip(tmp_path):
    emb = np.eye(3, 4, dtype=np.float32)
    write_text_embeddings(tmp_path / "text.parquet", ["a", "b", "c"], emb, {"logit_scale": 50.0})
    t = read_text_embeddings(tmp_path / "text.parquet")
    assert t.classnames == ["a", "b", "c"] and t.logit_scale == 50.0
    np.testing.assert_array_equal(t.embeddings, emb)
    write_text_embeddings(tmp_path / "none.parquet", ["a"], None, {})
    assert read_text_embeddings(tmp_path / "none.parquet").embeddings is None


def test_corrupt_and_missing_files_are_named(tmp_path):
    bad = tmp_path / "test.parquet"
    bad.write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(CorruptFileError, match="test.parquet: not a readable Parquet file"):
        read_features(bad)
    with pytest.raises(FileNotFoundError, match="feature file not found: .*val.parquet"):
        read_features(tmp_path / "val.parquet")


def test_failed_write_leaves_no_file(tmp_path):
    class Boom(Exception):
        pass

    from lt_bench.io import atomic_path

    with pytest.raises(Boom), atomic_path(tmp_path / "x.parquet") as tmp:
        tmp.write_bytes(b"half")
        raise Boom
    assert list(tmp_path.iterdir()) == []


def test_atomic_files_get_umask_permissions(tmp_path):
    import os

    from lt_bench.io import write_text

    old = os.umask(0o022)
    try:
        write_text(tmp_path / "a.txt", "x")
    finally:
        os.umask(old)
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o644


def test_shared_reads_are_kept_until_the_file_changes(tmp_path, monkeypatch):
    from lt_bench.features import store

    def write(name, seed):
        feats = np.random.default_rng(seed).normal(size=(6, 4)).astype(np.float32)
        write_table(features_table([f"{i}.png" for i in range(6)], np.arange(6) % 3, feats,
                                   {"backbone": "b", "split": "test"}), tmp_path / name)
        return feats

    first = write("test.parquet", 0)
    a = store.read_features_shared(tmp_path / "test.parquet")
    assert store.read_features_shared(tmp_path / "test.parquet") is a  # kept, not re-read
    np.testing.assert_allclose(a.features, first, atol=1e-2)
    second = write("test.parquet", 1)  # same shape and size: rewritten (re-extracted)
    b = store.read_features_shared(tmp_path / "test.parquet")
    assert b is not a
    np.testing.assert_allclose(b.features, second, atol=1e-2)
    # only the last SHARED_SPLITS files are kept
    for i in range(store.SHARED_SPLITS):
        write(f"other{i}.parquet", i)
        store.read_features_shared(tmp_path / f"other{i}.parquet")
    assert store.read_features_shared(tmp_path / "test.parquet") is not b
    # and at most SHARED_BYTES of arrays: here room for one file (the last one read)
    monkeypatch.setattr(store, "SHARED_BYTES", b.features.nbytes)
    c = store.read_features_shared(tmp_path / "test.parquet")
    store.read_features_shared(tmp_path / "other0.parquet")
    assert store.read_features_shared(tmp_path / "test.parquet") is not c
    assert len(store._SHARED) == 1
    with pytest.raises(FileNotFoundError, match="feature file not found: .*gone.parquet"):
        store.read_features_shared(tmp_path / "gone.parquet")
