"""Image features and class text embeddings of one (dataset, backbone) into Parquet.

Throughput
    One multi-worker DataLoader per split decodes and preprocesses while the model runs
    (workers start once per split, not once per shard); on GPU the forward pass runs under
    fp16 autocast and batches come from pinned host memory. ``benchmarks/extract.py``
    measures end-to-end throughput against the bare forward pass.
Determinism
    Row order is the split list's order (in-order loader, no shuffling), so features and
    logits line up with split lists. Batches never straddle a shard boundary, so a resumed
    extraction runs exactly the batches an uninterrupted one would.
Resumability
    Rows are encoded in shards of ``shard_size``; each finished shard is written atomically
    to ``{split}.parquet.shards/shard-NNNNN.parquet`` with a ``manifest.json`` saying what
    it was made from (split-list hash, backbone, weights, shard size, AMP). A restarted job
    re-uses every finished shard whose manifest matches and encodes only the rest. The final
    ``{split}.parquet`` is assembled from the shards and appears atomically, only when every
    shard is there; shard folders are removed once all splits and ``text.parquet`` are
    written (so a job killed between splits, whose outputs Snakemake deletes, re-assembles
    the finished splits without encoding them again).
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import sys
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
from lt_bench.features.store import META_KEY, features_table, read_meta
from lt_bench.io import atomic_path, read_json, sha256_file, write_json

log = logging.getLogger(__name__)

SHARD_DIR_SUFFIX = ".shards"


class ImageReadError(RuntimeError):
    """A listed image is missing or cannot be decoded; the message names the file."""


class ImageListDataset(Dataset):
    """Images of a split list; item ``i`` is ``(preprocessed image, label)`` of row ``i``."""

    def __init__(self, root: Path, paths: list[str], labels: np.ndarray, transform,
                 split_file: str | Path | None = None):
        self.root, self.paths, self.labels, self.transform = Path(root), paths, labels, transform
        self.split_file = split_file

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        path = self.root / self.paths[i]
        try:
            with Image.open(path) as im:
                img = im.convert("RGB")  # forces a full decode: truncated files fail here
        except (OSError, ValueError, Image.DecompressionBombError) as e:
            where = f"line {i + 1} of {self.split_file}" if self.split_file else f"row {i}"
            what = "missing" if isinstance(e, FileNotFoundError) else "unreadable"
            raise ImageReadError(f"cannot read image {path} ({what}; {where}): "
                                 f"{type(e).__name__}: {e}") from e
        return self.transform(img), int(self.labels[i])


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
    import timm

    return {"torch": torch.__version__, "open_clip": open_clip.__version__,
            "timm": timm.__version__, "pyarrow": pa.__version__}


def weights_id(backbone: LoadedBackbone) -> str:
    """What identifies the weights: a checkpoint file's sha256, else the pretrained tag."""
    p = backbone.pretrained
    if p and Path(p).is_file():
        return "sha256:" + sha256_file(p)
    return str(p)


def shard_dir_for(out: Path) -> Path:
    return out.with_name(out.name + SHARD_DIR_SUFFIX)


def _manifest(split_file: Path, backbone: LoadedBackbone, shard_size: int, n_rows: int,
              amp: bool, weights: str) -> dict:
    return {"split_sha256": sha256_file(split_file), "rows": n_rows,
            "backbone": backbone.spec.name, "weights": weights,
            "preprocessing": str(backbone.preprocess).replace("\n", " "),
            "shard_size": shard_size, "amp": bool(amp)}


def _shard_bounds(i: int, shard_size: int, n: int) -> tuple[int, int]:
    return i * shard_size, min((i + 1) * shard_size, n)


def _shard_ok(path: Path, rows: int) -> bool:
    if not path.exists():
        return False
    try:
        ok = read_meta(path).get("rows") == rows
    except Exception:  # a torn shard cannot exist (atomic rename), but be safe
        ok = False
    if not ok:
        log.warning("discarding unusable shard %s", path)
        path.unlink(missing_ok=True)
    return ok


def _clean_worker_error(e: Exception) -> str:
    """The message of an error re-raised from a DataLoader worker, without its traceback."""
    found = re.findall(r"^(?:\S*ImageReadError: )?(cannot read image .*)$", str(e), re.M)
    return found[-1] if found else str(e)


def _progress(total: int, initial: int, desc: str) -> tqdm:
    tty = sys.stderr.isatty()
    # In a rule's log file (not a terminal) a line every 30 s, not a carriage-return storm.
    return tqdm(total=total, initial=initial, desc=desc, unit="img", file=sys.stderr,
                mininterval=2 if tty else 30, dynamic_ncols=tty, ascii=not tty)


def _yield_to_model(worker_id: int) -> None:
    """On CPU the model is the bottleneck: decode workers run niced, filling the cores'
    idle gaps instead of stalling the model's parallel regions."""
    import os

    try:
        os.nice(10)
    except OSError:
        pass


def _batches(todo: list[int], shard_size: int, n: int, batch_size: int) -> list[list[int]]:
    out = []
    for s in todo:
        lo, hi = _shard_bounds(s, shard_size, n)
        out += [list(range(b, min(b + batch_size, hi))) for b in range(lo, hi, batch_size)]
    return out


@torch.no_grad()
def extract_split(backbone: LoadedBackbone, split_file: Path, image_root: Path, out: Path,
                  meta: dict[str, Any], batch_size: int = 256, num_workers: int = 2,
                  shard_size: int = 8192, device: str | torch.device = "cpu",
                  amp: bool | None = None, keep_shards: bool = False,
                  weights: str | None = None) -> dict[str, float]:
    """Encode every image of ``split_file`` into ``out``; return throughput stats.

    Finished shards of an interrupted run are re-used (see the module docstring); with
    ``keep_shards`` the shard folder stays after ``out`` is written (``extract_all``
    removes it when the whole job is done).
    """
    split_file, out = Path(split_file), Path(out)
    paths, labels_list = read_split(split_file)
    labels = np.asarray(labels_list, dtype=np.int64)
    n = len(paths)
    if n == 0:
        raise ValueError(f"{split_file}: the split list is empty")
    device = torch.device(device)
    amp = device.type == "cuda" if amp is None else amp
    weights = weights if weights is not None else weights_id(backbone)
    manifest = _manifest(split_file, backbone, shard_size, n, amp, weights)

    shard_dir = shard_dir_for(out)
    if shard_dir.exists():
        mpath = shard_dir / "manifest.json"
        old = read_json(mpath) if mpath.exists() else None
        if old != manifest:  # split list, weights, preprocessing or shard size changed
            log.warning("%s: discarding shards made from different inputs", shard_dir)
            shutil.rmtree(shard_dir)
    shard_dir.mkdir(parents=True, exist_ok=True)
    write_json(shard_dir / "manifest.json", manifest)

    n_shards = max(1, -(-n // shard_size))

    def shard_path(i: int) -> Path:
        return shard_dir / f"shard-{i:05d}.parquet"

    def shard_len(i: int) -> int:
        lo, hi = _shard_bounds(i, shard_size, n)
        return hi - lo

    done = {i for i in range(n_shards) if _shard_ok(shard_path(i), shard_len(i))}
    todo = [i for i in range(n_shards) if i not in done]
    n_done = sum(shard_len(i) for i in done)
    if done:
        log.info("%s: resuming: %d of %d shards (%d of %d images) already encoded",
                 out.name, len(done), n_shards, n_done, n)
    log.info("%s: encoding %d images on %s (amp=%s, batch %d, %d workers, shards of %d)",
             out.name, n - n_done, device, amp, batch_size, num_workers, shard_size)

    t0, n_new = time.perf_counter(), 0
    if todo:
        ds = ImageListDataset(image_root, paths, labels, backbone.preprocess, split_file)
        batches = _batches(todo, shard_size, n, batch_size)
        loader = DataLoader(ds, batch_sampler=batches, num_workers=num_workers,
                            pin_memory=device.type == "cuda",
                            prefetch_factor=4 if num_workers > 0 else None,
                            worker_init_fn=_yield_to_model if device.type == "cpu" else None)
        bar = _progress(n, n_done, f"extract {out.stem}")
        pending: dict[int, list[np.ndarray]] = {}
        batch_iter = iter(loader)
        try:
            for batch in batches:
                try:
                    x, _ = next(batch_iter)
                except ImageReadError as e:
                    raise ImageReadError(_clean_worker_error(e)) from None
                shard = batch[0] // shard_size
                x = x.to(device, non_blocking=True)
                with torch.autocast(device.type, dtype=torch.float16, enabled=amp):
                    f = backbone.encode_image(x)
                pending.setdefault(shard, []).append(f.float().cpu().numpy())
                n_new += len(batch)
                bar.update(len(batch))
                lo, hi = _shard_bounds(shard, shard_size, n)
                if batch[-1] + 1 == hi:  # the shard is complete
                    feats = np.concatenate(pending.pop(shard))
                    _write_parquet(features_table(paths[lo:hi], labels[lo:hi], feats,
                                                  {**meta, "shard": shard}), shard_path(shard))
                    rate = n_new / max(time.perf_counter() - t0, 1e-9)
                    bar.set_postfix_str(f"{rate:.1f} images/s", refresh=False)
                    log.info("%s: shard %d/%d written (%d rows), %.1f images/s",
                             out.name, shard + 1, n_shards, hi - lo, rate)
        finally:
            bar.close()
        del batch_iter, loader  # stop the workers before assembling
    elapsed = time.perf_counter() - t0

    _assemble(out, [shard_path(i) for i in range(n_shards)],
              {**meta, "extraction": manifest})
    if not keep_shards:
        shutil.rmtree(shard_dir, ignore_errors=True)
    ips = n_new / elapsed if elapsed > 0 and n_new else float("nan")
    log.info("%s: %d images (%d encoded now), %.1f images/s", out.name, n, n_new, ips)
    return {"images": n, "encoded": n_new, "seconds": round(elapsed, 3),
            "images_per_second": round(ips, 2) if n_new else None}


def _write_parquet(table: pa.Table, path: Path) -> None:
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def _assemble(out: Path, shards: list[Path], meta: dict[str, Any]) -> None:
    """Stream the shards, in order, into ``out`` (atomically; one row group per shard)."""
    rows, schema = 0, None
    with atomic_path(out) as tmp:
        writer = None
        try:
            for p in shards:
                t = pq.read_table(p)
                if schema is None:
                    dim = t.schema.field("feature").type.list_size
                    total = sum(pq.read_metadata(s).num_rows for s in shards)
                    final = {**meta, "dim": dim, "dtype": "float16", "rows": total}
                    schema = t.schema.with_metadata({META_KEY: json.dumps(final, sort_keys=True)})
                    writer = pq.ParquetWriter(tmp, schema)
                writer.write_table(t.replace_schema_metadata(schema.metadata))
                rows += t.num_rows
        finally:
            if writer is not None:
                writer.close()
    log.debug("%s: assembled %d rows from %d shards", out, rows, len(shards))


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
    amp = dev.type == "cuda"
    log.info("extracting %s / %s on %s", dataset, backbone_name, dev)
    bb = load_backbone(backbone_name, checkpoint=checkpoint, device=dev)
    weights = weights_id(bb)
    base_meta = {"backbone": backbone_name, "pretrained": str(bb.pretrained),
                 "weights": weights, "model": bb.spec.model, "library": bb.spec.library,
                 "dataset": dataset, "preprocessing": str(bb.preprocess).replace("\n", " "),
                 "versions": library_versions(), "amp": amp, "device": dev.type}
    stats: dict[str, Any] = {}
    for split in splits:
        split_file = split_dir / f"{split}.txt"
        meta = {**base_meta, "split": split, "split_sha256": sha256_file(split_file)}
        stats[split] = extract_split(bb, split_file, image_root, out_dir / f"{split}.parquet",
                                     meta, batch_size=batch_size, num_workers=num_workers,
                                     shard_size=shard_size, device=dev, amp=amp,
                                     keep_shards=True, weights=weights)
    classnames = read_classnames(split_dir / "classnames.txt")
    emb, text_meta = None, {**base_meta, "split": "text"}
    if bb.spec.has_text:
        templates = templates_for(bb.spec.templates)
        t0 = time.perf_counter()
        emb = class_text_embeddings(bb.model, bb.tokenizer, classnames, templates,
                                    device=dev).numpy()
        log.info("text embeddings: %d classes x %d templates in %.1f s", len(classnames),
                 len(templates), time.perf_counter() - t0)
        text_meta.update(logit_scale=bb.logit_scale, templates=list(templates))
    write_text_embeddings(out_dir / "text.parquet", classnames, emb, text_meta)
    for split in splits:
        shutil.rmtree(shard_dir_for(out_dir / f"{split}.parquet"), ignore_errors=True)
    return stats
