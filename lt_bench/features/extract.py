"""Image features and class text embeddings of one (dataset, backbone) into Parquet:
every split list (``encode.py``: one resumable, deterministic pass each), the optional
train views (``views.py``) and ``text.parquet`` (``text.py``).

Protocol (docs/protocol.md, LIFT ``trainer.py``)
    The stored feature is the backbone's :meth:`~LoadedBackbone.encode_feature`
    (pre-projection ``ln_post`` CLS token for open_clip ViTs); images go through LIFT's test
    transform (``Resize(S*8/7)`` + ``CenterCrop(S)``) unless ``test_transform="open_clip"``;
    ``tte="fivecrop"`` adds the ``crops`` column to the non-train splits, encoded in the
    same pass as the centre view (each image decoded once); ``tte="both"`` writes the same
    columns and records ``default_view: centre`` (runs read the centre view unless they ask
    for ``view: fivecrop``: ``eval_views.split_view``); ``train_views``
    > 0 writes ``train_views.parquet`` (``features/views.py``). Both are recorded in the
    metadata (``feature``, ``transform``, ``crops``).
Shards
    Each split's shard folder (``shards.py``) is removed once all splits and
    ``text.parquet`` are written (so a job killed between splits, whose outputs Snakemake
    deletes, re-assembles the finished splits without encoding them again).
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

import torch

from lt_bench.backbones.weights import weights_id
from lt_bench.errors import MissingInputError, UserError
from lt_bench.features.encode import describe_transform, extract_split
from lt_bench.features.shards import shard_dir_for
from lt_bench.io import sha256_file

log = logging.getLogger(__name__)


def auto_num_workers(cap: int = 16) -> int:
    """Decode workers for this process: its share of the CPUs it may run on, minus one.

    The CPUs are this process's affinity (a SLURM job's allocation); they are shared by the
    GPU jobs that can run at once on this machine (one per GPU it can see), so four
    extraction jobs on a 4-GPU, 32-core box get 7 workers each. At most ``cap``.
    """
    import os

    from lt_bench.features.device import gpu_count, visible_devices

    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    visible = visible_devices()
    gpus = gpu_count() if visible is None else min(len(visible), gpu_count())
    return max(1, min(cpus // max(1, gpus) - 1, cap))


def library_versions() -> dict[str, str]:
    import open_clip
    import pyarrow as pa
    import timm

    return {"torch": torch.__version__, "open_clip": open_clip.__version__,
            "timm": timm.__version__, "pyarrow": pa.__version__}


def extract_all(dataset: str, split_dir: Path, image_root: Path, backbone_name: str,
                out_dir: Path, checkpoint: Path | None = None, splits=("train", "val", "test"),
                batch_size: int = 256, num_workers: int = 2, device: str | None = None,
                shard_size: int = 8192, *, feature: str = "auto", test_transform: str = "auto",
                tte: str = "none", train_views: int = 0, view_seed: int = 0,
                decode: str = "cpu", prompts: dict | None = None) -> dict[str, Any]:
    """Features of every split plus ``text.parquet`` (and ``train_views.parquet`` with
    ``train_views`` > 0) for one (dataset, backbone); options as ``extract:`` in config."""
    from lt_bench.backbones.base import load_backbone
    from lt_bench.data.splits import read_classnames
    from lt_bench.features.device import pick_device
    from lt_bench.features.protocol import device_transforms, eval_transforms
    from lt_bench.features.store import write_text_embeddings
    from lt_bench.features.text import text_embeddings
    from lt_bench.features.views import extract_train_views

    split_dir, out_dir = Path(split_dir), Path(out_dir)
    _check_lists(split_dir, splits, dataset)
    if train_views < 0:
        raise UserError(f"extract.train_views must be >= 0, got {train_views}")
    dev = torch.device(device) if device else pick_device()
    amp = dev.type == "cuda"
    log.info("extracting %s / %s on %s", dataset, backbone_name, dev)
    bb = load_backbone(backbone_name, checkpoint=checkpoint, device=dev)
    weights = weights_id(bb)
    tf, crops_tf, tf_info = eval_transforms(bb, test_transform, tte)
    dev_tfs = device_transforms(tf_info) if decode != "cpu" else None
    base_meta = {"backbone": backbone_name, "pretrained": str(bb.pretrained),
                 "weights": weights, "model": bb.spec.model, "library": bb.spec.library,
                 "dataset": dataset, "preprocessing": describe_transform(tf),
                 "transform": tf_info["test"], "versions": library_versions(), "amp": amp,
                 "device": dev.type, "feature": bb.feature_kind(feature), "decode": decode,
                 "inputs_sha256": _inputs_sha256(split_dir, splits)}
    stats: dict[str, Any] = {}
    for split in splits:
        split_file = split_dir / f"{split}.txt"
        with_tte = crops_tf is not None and split != "train"
        meta = {**base_meta, "split": split, "split_sha256": sha256_file(split_file),
                **({"tte": tf_info["tte"]} if with_tte else {}),
                # only under both, so fivecrop files (and their runs' numbers) are unchanged
                **({"default_view": "centre"} if with_tte and tte == "both" else {})}
        stats[split] = extract_split(
            bb, split_file, image_root, out_dir / f"{split}.parquet", meta,
            batch_size=batch_size, num_workers=num_workers, shard_size=shard_size, device=dev,
            amp=amp, keep_shards=True, weights=weights, transform=tf,
            crops_transform=crops_tf if with_tte else None, feature=feature, decode=decode,
            device_transforms=(dev_tfs[0], dev_tfs[1] if with_tte else None) if dev_tfs
            else None)
    if train_views:
        stats["train_views"] = extract_train_views(
            bb, split_dir / "train.txt", image_root, out_dir / "train_views.parquet",
            {**base_meta, "split": "train_views"}, views=train_views, seed=view_seed,
            batch_size=batch_size, num_workers=num_workers, shard_size=shard_size, device=dev,
            amp=amp, weights=weights, feature=feature)
    classnames = read_classnames(split_dir / "classnames.txt")
    emb, init, text_meta = text_embeddings(bb, classnames, prompts, dev)
    write_text_embeddings(out_dir / "text.parquet", classnames, emb,
                          {**base_meta, "split": "text", **text_meta}, init_embeddings=init,
                          projection=bb.projection(feature) if emb is not None else None)
    for split in splits:
        shutil.rmtree(shard_dir_for(out_dir / f"{split}.parquet"), ignore_errors=True)
    return stats


def _check_lists(split_dir: Path, splits, dataset: str) -> None:
    for split in splits:
        if not (split_dir / f"{split}.txt").is_file():
            raise MissingInputError(f"split list {split_dir / f'{split}.txt'} not found; "
                                    f"run the prepare stage for dataset {dataset!r} first")


def _inputs_sha256(split_dir: Path, splits) -> dict[str, str | None]:
    """Every file of the folder names all the lists it was extracted with, so a reader can
    tell a val/test file of another extraction (``store.check_folder``)."""
    classnames = split_dir / "classnames.txt"
    return {**{s: sha256_file(split_dir / f"{s}.txt") for s in splits},
            "classnames": sha256_file(classnames) if classnames.is_file() else None}
