"""Protocol points of the head track that are not a loss formula (docs/protocol.md):
the per-epoch cosine schedule, views drawn per epoch, device routing, the seam."""

from __future__ import annotations

import math

import numpy as np
import pytest
from synth_runs import make_features_dir

from lt_bench.features.store import features_table, write_table
from lt_bench.io import read_json
from lt_bench.runs import run_logits, train_run


@pytest.fixture(scope="module")
def fd(tmp_path_factory):
    return make_features_dir(tmp_path_factory.mktemp("hp"))


def test_lr_is_cosine_over_epochs_stepped_per_epoch_like_lift(fd, tmp_path):
    """LIFT trainer.py: CosineAnnealingLR(num_epochs), one step per epoch, so epoch e trains
    at lr·(1 + cos(π e / E)) / 2 for every one of its iterations."""
    e, lr = 4, 0.01
    train_run("ce", fd, tmp_path / "ce", 0, hparams={"epochs": e, "batch_size": 16, "lr": lr})
    got = [h["lr"] for h in read_json(tmp_path / "ce" / "history.json")]
    want = [lr * (1 + math.cos(math.pi * i / e)) / 2 for i in range(e)]
    np.testing.assert_allclose(got, want, rtol=1e-12)
    # the old per-iteration schedule is an option: the same values at epoch starts, but it
    # decays inside each epoch, so the trained head differs
    train_run("ce", fd, tmp_path / "ce_step", 0,
              hparams={"epochs": e, "batch_size": 16, "lr": lr, "lr_schedule": "cosine_step"})
    got_step = [h["lr"] for h in read_json(tmp_path / "ce_step" / "history.json")]
    np.testing.assert_allclose(got_step, want, rtol=1e-12)
    assert not np.allclose(run_logits(tmp_path / "ce_step", "test")[1],
                           run_logits(tmp_path / "ce", "test")[1])


def test_bad_head_hyper_parameters_are_refused_by_the_library(fd, tmp_path):
    for hp, key in [({"epochs": 0}, "epochs"), ({"lr": -1.0}, "lr"),
                    ({"batch_size": 2.5}, "batch_size"), ({"lr_schedule": "step"}, "lr_schedule")]:
        with pytest.raises(ValueError, match=key):
            train_run("ce", fd, tmp_path / "bad", 0, hparams=hp)
        assert not (tmp_path / "bad" / "metrics.json").exists()


def test_train_views_are_drawn_one_per_image_per_epoch(fd, tmp_path):
    """With V cached views whose features are all equal to the plain train features, the
    fit must equal the fit without views (the draw changes nothing but the view)."""
    import pyarrow.parquet as pq

    from lt_bench.features.store import read_features

    train = read_features(fd / "train.parquet")
    views_dir = tmp_path / "fd"
    views_dir.mkdir()
    for f in fd.iterdir():
        (views_dir / f.name).write_bytes(f.read_bytes())
    v = 3
    t = features_table([p for _ in range(v) for p in train.paths],
                       np.tile(train.labels, v), np.tile(train.features, (v, 1)),
                       {**train.meta, "split": "train_views"})
    import pyarrow as pa

    t = t.append_column("view", pa.array(np.repeat(np.arange(v), len(train)).astype(np.int16)))
    write_table(t, views_dir / "train_views.parquet")
    assert pq.read_table(views_dir / "train_views.parquet").num_rows == v * len(train)
    hp = {"epochs": 2, "batch_size": 16}
    a = train_run("la", fd, tmp_path / "plain", 0, hparams=hp)
    b = train_run("la", views_dir, tmp_path / "views", 0, hparams=hp)
    assert b["info"]["train_views"] == v and a["info"]["train_views"] == 0
    np.testing.assert_allclose(run_logits(tmp_path / "views", "test")[1],
                               run_logits(tmp_path / "plain", "test")[1], rtol=1e-5, atol=1e-5)


def test_class_mean_init_averages_raw_features_like_lift(fd, tmp_path):
    """LIFT trainer.py, init_head_class_mean: ``features[class].mean(0)`` of the raw
    features, then ``F.normalize``. Hand-worked: (10, 0) and (0, 1) average to (5, 0.5),
    direction (0.995, 0.0995), not the (0.707, 0.707) of averaging unit vectors."""
    from safetensors.numpy import load_file

    from lt_bench.features.store import read_features
    from lt_bench.methods._heads import class_means

    got = class_means(np.array([[10.0, 0.0], [0.0, 1.0], [0.0, -3.0]]), np.array([0, 0, 1]), 2)
    np.testing.assert_allclose(got, [[10 / np.sqrt(101), 1 / np.sqrt(101)], [0.0, -1.0]])
    # a run with init class_mean and lr ~ 0 keeps exactly that init
    train_run("ce", fd, tmp_path / "cm", 0,
              hparams={"init": "class_mean", "lr": 1e-12, "epochs": 1, "weight_decay": 0.0})
    w = load_file(str(tmp_path / "cm" / "predictor.safetensors"))["term0.weight"]
    tr = read_features(fd / "train.parquet")
    k = int(tr.labels.max()) + 1
    raw = np.stack([tr.features[tr.labels == c].astype(np.float64).mean(0) for c in range(k)])
    np.testing.assert_allclose(w, raw / np.linalg.norm(raw, axis=1, keepdims=True), atol=1e-6)
