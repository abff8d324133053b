"""Shared fixtures. Every test runs offline (HF_HUB_OFFLINE) on the CPU."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "false")

REPO = Path(__file__).resolve().parents[1]

#: A small but meaningful toy world: 30 classes, one toy CLIP pre-trained for ~1-3 min.
SMALL_TOY = {"num_classes": 30, "max_per_class": 200, "imbalance": 50, "val_per_class": 10,
             "test_per_class": 30, "image_size": 32, "seed": 0}
SMALL_PRETRAIN = {"num_pairs": 8000, "epochs": 3, "batch_size": 128, "eval_per_class": 40}


@pytest.fixture(scope="session")
def small_toy_world(tmp_path_factory):
    """Toy dataset + toyclip0 pre-trained on it + its extracted features.

    Returns a dict of paths: ``split_dir``, ``backbone_dir`` (checkpoint.pt, prior.parquet,
    pretrain.json) and ``features_dir`` ({train,val,test,text}.parquet).
    """
    import torch

    from lt_bench.backbones.toy_pretrain import pretrain_toy_clip
    from lt_bench.data import get_dataset
    from lt_bench.features.extract import extract_all

    torch.set_num_threads(2)
    root = tmp_path_factory.mktemp("small_toy")
    split_dir = root / "data" / "toy"
    ds = get_dataset("toy", **SMALL_TOY)
    ds.prepare(split_dir)
    backbone_dir = root / "backbones" / "toyclip0"
    pretrain_toy_clip(backbone_dir, num_classes=SMALL_TOY["num_classes"], index=0,
                      **SMALL_PRETRAIN)
    features_dir = root / "features" / "toy" / "toyclip0"
    extract_all("toy", split_dir, split_dir, "toyclip0", features_dir,
                checkpoint=backbone_dir / "checkpoint.pt", batch_size=128, num_workers=0,
                device="cpu")
    return {"root": root, "split_dir": split_dir, "backbone_dir": backbone_dir,
            "features_dir": features_dir}


def copy_workflow(dest: Path) -> Path:
    """A runnable copy of the workflow (Snakefile, config, rules, profiles) in ``dest``."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in ("Snakefile", "config.yaml"):
        shutil.copy(REPO / name, dest / name)
    for name in ("workflow", "profiles"):
        shutil.copytree(REPO / name, dest / name, dirs_exist_ok=True)
    return dest
