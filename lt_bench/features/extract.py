"""Image features and class text embeddings of one (dataset, backbone) into Parquet.

Throughput: a multi-worker DataLoader decodes and preprocesses while the model runs;
on GPU the forward pass runs under fp16 autocast with pinned host memory. Row order is
the split list's order (no shuffling, in-order loader), so logits files line up with
split lists. Resumable: each shard of ``shard_size`` rows is written atomically to
``{split}.parquet.shards/``; a restarted job re-uses finished shards, and the final file
appears (atomically) only when every shard is there.
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from lt_bench.backbones.base import LoadedBackbone
from lt_bench.data.splits import read_split
from lt_bench.features.store import features_table, read_meta, write_table
from lt_bench.io import read_json, sha256_file, write_json

log = logging.getLogger(__name__)


class ImageListDataset(Dataset):
    def __init__(self, root: Path, paths: list[str], labels: np.ndarray, transform):
        self.root, self.paths, self.labels, self.transform = Path(root), paths, labels, transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        path = self.root / self.paths[i]
        try:
            with Image.open(path) as im:
                img = im.convert("RGB")
        except (OSError, ValueError) as e:
            raise RuntimeError(f"cannot read image {path} (row {i}): {e}") from e
        return self.transform(img), int(self.labels[i])


def library_versions() -> dict[str, str]:
    import open_clip
    import timm

    return {"torch": torch.__version__, "open_clip": open_clip.__version__,
            "timm": timm.__version__, "pyarrow": pa.__version__}


def _shard_manifest(split_file: Path, backbone: LoadedBackbone, shard_size: int) -> dict:
    return {"split_sha256": sha256_file(split_file), "backbone": backbone.spec.name,
            "pretrained": str(backbone.pretrained), "shard_size": shard_size}


@torch.no_grad()
def extract_split(backbone: LoadedBackbone, split_file: Path, image_root: Path, out: Path,
                  meta: dict[str, Any], batch_size: int = 256, num_workers: int = 2,
                  shard_size: int = 8192, device: str | torch.device = "cpu",
                  amp: bool | None = None) -> dict[str, float]:
    """Encode every image of ``split_file`` into ``out``; return throughput stats."""
    paths, labels = read_split(split_file)
    labels = np.asarray(labels, dtype=np.int64)
    device = torch.device(device)
    amp = device.type == "cuda" if amp is None else amp
    shard_dir = out.with_name(out.name + ".shards")
    manifest = _shard_manifest(split_file, backbone, shard_size)
    if shard_dir.exists():
        old = read_json(shard_dir / "manifest.json") if (shard_dir / "manifest.json").exists() else {}
        if old != manifest:  # split list, weights or shard size changed: shards are stale
            log.warning("discarding stale shards in %s", shard_dir)
            shutil.rmtree(shard_dir)
    shard_dir.mkdir(parents=True, exist_ok=True)
    write_json(shard_dir / "manifest.json", manifest)

    n_shards = max(1, -(-len(paths) // shard_size))
    done = {i for i in range(n_shards) if _shard_ok(shard_dir / f"shard-{i:05d}.parquet")}
    if done:
        log.info("%s: resuming, %d/%d shards already done", out.name, len(done), n_shards)
    todo = [i for i in range(n_shards) if i not in done]
    bar = tqdm(total=len(paths), initial=sum(_shard_len(i, shard_size, len(paths)) for i in done),
               desc=f"extract {out.stem}", unit="img", mininterval=2)
    t0, n_new = time.time(), 0
    for i in todo:
        lo, hi = i * shard_size, min((i + 1) * shard_size, len(paths))
        ds = ImageListDataset(image_root, paths[lo:hi], labels[lo:hi], backbone.preprocess)
        loader = DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                            pin_memory=device.type == "cuda",
                            persistent_workers=False)
        feats = []
        for x, _ in loader:
            x = x.to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=torch.float16, enabled=amp):
                f = backbone.encode_image(x)
            feats.append(f.float().cpu().numpy())
            bar.update(len(x))
            n_new += len(x)
        write_table(features_table(paths[lo:hi], labels[lo:hi], np.concatenate(feats), meta),
                    shard_dir / f"shard-{i:05d}.parquet")
    bar.close()
    elapsed = time.time() - t0

    tables = [pq.read_table(shard_dir / f"shard-{i:05d}.parquet") for i in range(n_shards)]
    table = pa.concat_tables(tables)
    total_meta = {**meta, "dim": table.schema.field("feature").type.list_size,
                  "dtype": "float16", "rows": table.num_rows}
    import json

    from lt_bench.features.store import META_KEY
    write_table(table.replace_schema_metadata({META_KEY: json.dumps(total_meta, sort_keys=True)}),
                out)
    shutil.rmtree(shard_dir)
    ips = n_new / elapsed if elapsed > 0 and n_new else float("nan")
    log.info("%s: %d images, %.1f img/s", out.name, len(paths), ips)
    return {"images": len(paths), "encoded": n_new, "seconds": elapsed, "images_per_second": ips}


def _shard_len(i: int, shard_size: int, n: int) -> int:
    return min((i + 1) * shard_size, n) - i * shard_size


def _shard_ok(path: Path) -> bool:
    if not path.exists():
        return False
    try:
        read_meta(path)
        return True
    except Exception:  # a torn shard cannot exist (atomic rename), but be safe
        path.unlink(missing_ok=True)
        return False


def extract_all(dataset: str, split_dir: Path, image_root: Path, backbone_name: str,
                out_dir: Path, checkpoint: Path | None = None, splits=("train", "val", "test"),
                batch_size: int = 256, num_workers: int = 2, device: str | None = None,
                shard_size: int = 8192) -> dict[str, Any]:
    """Features of every split plus ``text.parquet`` for one (dataset, backbone)."""
    from lt_bench.backbones.base import load_backbone
    from lt_bench.backbones.prompts import class_text_embeddings, templates_for
    from lt_bench.data.splits import read_classnames
    from lt_bench.features.device import pick_device
    from lt_bench.features.store import write_text_embeddings

    split_dir, out_dir = Path(split_dir), Path(out_dir)
    for split in splits:
        if not (split_dir / f"{split}.txt").is_file():
            raise FileNotFoundError(f"split list {split_dir / f'{split}.txt'} not found; "
                                    f"run the prepare stage for dataset {dataset!r} first")
    dev = torch.device(device) if device else pick_device()
    bb = load_backbone(backbone_name, checkpoint=checkpoint, device=dev)
    base_meta = {"backbone": backbone_name, "pretrained": str(bb.pretrained),
                 "model": bb.spec.model, "dataset": dataset,
                 "preprocessing": str(bb.preprocess).replace("\n", " "),
                 "versions": library_versions(), "amp": dev.type == "cuda"}
    stats = {}
    for split in splits:
        split_file = split_dir / f"{split}.txt"
        meta = {**base_meta, "split": split, "split_sha256": sha256_file(split_file)}
        stats[split] = extract_split(bb, split_file, image_root, out_dir / f"{split}.parquet",
                                     meta, batch_size=batch_size, num_workers=num_workers,
                                     shard_size=shard_size, device=dev)
    classnames = read_classnames(split_dir / "classnames.txt")
    emb, text_meta = None, {**base_meta, "split": "text"}
    if bb.spec.has_text:
        templates = templates_for(bb.spec.templates)
        emb = class_text_embeddings(bb.model, bb.tokenizer, classnames, templates,
                                    device=dev).cpu().numpy()
        text_meta.update(logit_scale=bb.logit_scale, templates=list(templates))
    write_text_embeddings(out_dir / "text.parquet", classnames, emb, text_meta)
    return stats
