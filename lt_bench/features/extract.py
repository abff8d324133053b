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
Protocol (issue 10, LIFT ``trainer.py``)
    The stored feature is the backbone's :meth:`~LoadedBackbone.encode_feature`
    (pre-projection ``ln_post`` CLS token for open_clip ViTs); images go through LIFT's test
    transform (``Resize(S*8/7)`` + ``CenterCrop(S)``) unless ``test_transform="open_clip"``;
    ``tte="fivecrop"`` adds the ``crops`` column to the non-train splits; ``train_views``
    > 0 writes ``train_views.parquet`` (``features/views.py``). Both are recorded in the
    metadata (``feature``, ``transform``, ``crops``).
Finiteness
    Every batch is checked after the cast to fp16 (what is stored): a NaN/inf feature stops
    the job with the output file, the rows, their images and the backbone.
"""

from __future__ import annotations

import json
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

from lt_bench.backbones.base import LoadedBackbone
from lt_bench.backbones.weights import weights_id
from lt_bench.data.images import to_rgb
from lt_bench.data.splits import read_split
from lt_bench.errors import UserError
from lt_bench.features._util import (  # noqa: F401  (re-exported: the CLI imports them)
    _batches,
    _clean_worker_error,
    _progress,
    _shard_bounds,
    _shard_ok,
    _yield_to_model,
    auto_num_workers,
    library_versions,
)
from lt_bench.features.store import (
    META_KEY,
    NonFiniteFeatureError,
    features_table,
    first_bad_rows,
)
from lt_bench.io import atomic_path, read_json, sha256_file, write_json

log = logging.getLogger(__name__)

SHARD_DIR_SUFFIX = ".shards"


class ImageReadError(RuntimeError):
    """A listed image is missing or cannot be decoded; the message names the file."""


def view_seed(seed: int, i: int) -> int:
    """The torch seed of row ``i``'s random view: independent of workers and batching."""
    return int(np.random.SeedSequence([int(seed), int(i)]).generate_state(1)[0])


class ImageListDataset(Dataset):
    """Images of a split list; item ``i`` is ``(image, label)`` of row ``i``, or
    ``(image, crops, label)`` with a ``crops_transform``. With ``seed`` the (random)
    transform of row ``i`` runs under the torch seed :func:`view_seed` ``(seed, i)``."""

    def __init__(self, root: Path, paths: list[str], labels: np.ndarray, transform,
                 split_file: str | Path | None = None, crops_transform=None,
                 seed: int | None = None):
        self.root, self.paths, self.labels, self.transform = Path(root), paths, labels, transform
        self.split_file, self.crops_transform, self.seed = split_file, crops_transform, seed

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        path = self.root / self.paths[i]
        try:
            with Image.open(path) as im:
                img = to_rgb(im)  # forces a full decode: truncated files fail here
        except (OSError, ValueError, Image.DecompressionBombError) as e:
            where = f"line {i + 1} of {self.split_file}" if self.split_file else f"row {i}"
            what = "missing" if isinstance(e, FileNotFoundError) else "unreadable"
            raise ImageReadError(f"cannot read image {path} ({what}; {where}): "
                                 f"{type(e).__name__}: {e}") from e
        if self.seed is None:
            x = self.transform(img)
        else:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(view_seed(self.seed, i))
                x = self.transform(img)
        if self.crops_transform is None:
            return x, int(self.labels[i])
        return x, self.crops_transform(img), int(self.labels[i])


def shard_dir_for(out: Path) -> Path:
    return out.with_name(out.name + SHARD_DIR_SUFFIX)


def _manifest(split_file: Path, backbone: LoadedBackbone, shard_size: int, n_rows: int,
              amp: bool, weights: str, how: dict) -> dict:
    return {"split_sha256": sha256_file(split_file), "rows": n_rows,
            "backbone": backbone.spec.name, "weights": weights,
            "shard_size": shard_size, "amp": bool(amp), **how}


def _describe(t) -> str | None:
    return None if t is None else str(t).replace("\n", " ")


DECODES = ("cpu", "gpu", "torchvision")


def _check_finite_batch(f16: np.ndarray, rows: list[int], paths: list[str], out: Path,
                        backbone: LoadedBackbone) -> None:
    if np.isfinite(f16).all():
        return
    bad = first_bad_rows(f16)
    raise NonFiniteFeatureError(
        f"{out}: backbone {backbone.spec.name!r} produced NaN/inf features for row(s) "
        f"{[rows[b] for b in bad]} (0-based), image(s) {[paths[rows[b]] for b in bad]}; "
        "expected finite values (fp16 overflow under AMP, or broken weights: try "
        "--device cpu, or check the checkpoint)")


@torch.no_grad()
def extract_split(backbone: LoadedBackbone, split_file: Path, image_root: Path, out: Path,
                  meta: dict[str, Any], batch_size: int = 256, num_workers: int = 2,
                  shard_size: int = 8192, device: str | torch.device = "cpu",
                  amp: bool | None = None, keep_shards: bool = False,
                  weights: str | None = None, *, transform=None, crops_transform=None,
                  feature: str = "auto", decode: str = "cpu", seed: int | None = None,
                  device_transforms: tuple | None = None) -> dict[str, float]:
    """Encode every image of ``split_file`` into ``out``; return throughput stats.

    ``transform`` (default: the backbone's own ``preprocess``) makes the ``feature``
    column; ``crops_transform`` (a (C, 3, S, S) transform) the ``crops`` column; ``seed``
    seeds a random ``transform`` per row (train views). ``decode="gpu"`` (CUDA only) or
    ``"torchvision"`` (any device) decode batches with torchvision on ``device`` and use
    ``device_transforms`` = (tensor transform, tensor crops transform or None) instead
    (``features/decode.py``). Finished shards of an interrupted run are re-used (see the
    module docstring); with ``keep_shards`` the shard folder stays after ``out`` is written.
    """
    split_file, out = Path(split_file), Path(out)
    paths, labels_list = read_split(split_file)
    labels = np.asarray(labels_list, dtype=np.int64)
    n = len(paths)
    if n == 0:
        raise ValueError(f"{split_file}: the split list is empty")
    device = torch.device(device)
    if decode not in DECODES:
        raise UserError(f"decode {decode!r}: expected one of {', '.join(DECODES[:2])}")
    if decode == "gpu" and device.type != "cuda":
        raise UserError(f"decode: gpu needs a CUDA device, but extraction runs on {device}; "
                        "use decode: cpu")
    on_device = decode != "cpu"
    if on_device and device_transforms is None:
        raise ValueError("decode on the device needs device_transforms")
    transform = backbone.preprocess if transform is None else transform
    amp = device.type == "cuda" if amp is None else amp
    weights = weights if weights is not None else weights_id(backbone)
    kind = backbone.feature_kind(feature)
    how = {"feature": kind, "decode": decode, "seed": seed,
           "preprocessing": _describe(transform) if not on_device else "device:" + str(
               [getattr(t, "__qualname__", str(t)) for t in device_transforms]),
           "crops_preprocessing": _describe(crops_transform) if not on_device else None}
    manifest = _manifest(split_file, backbone, shard_size, n, amp, weights, how)
    with_crops = (device_transforms[1] is not None) if on_device else crops_transform is not None

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
    log.info("%s: encoding %d images on %s (amp=%s, batch %d, %d workers, shards of %d, "
             "feature %s, decode %s)", out.name, n - n_done, device, amp, batch_size,
             num_workers, shard_size, kind, decode)

    def encode(x: torch.Tensor) -> np.ndarray:
        x = x.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=torch.float16, enabled=amp):
            f = backbone.encode_feature(x, feature)
        return f.float().cpu().numpy().astype(np.float16)  # what is stored

    t0, n_new = time.perf_counter(), 0
    decoder = None
    if todo:
        if on_device:
            from lt_bench.features.decode import BatchDecoder, RawImageDataset, collate_raw

            ds = RawImageDataset(image_root, paths, labels, split_file)
            decoder, collate = BatchDecoder(device), collate_raw
        else:
            ds = ImageListDataset(image_root, paths, labels, transform, split_file,
                                  crops_transform, seed)
            collate = None
        batches = _batches(todo, shard_size, n, batch_size)
        loader = DataLoader(ds, batch_sampler=batches, num_workers=num_workers,
                            pin_memory=device.type == "cuda" and not on_device,
                            prefetch_factor=4 if num_workers > 0 else None, collate_fn=collate,
                            worker_init_fn=_yield_to_model if device.type == "cpu" else None)
        bar = _progress(n, n_done, f"extract {out.stem}")
        pending: dict[int, list[tuple]] = {}
        batch_iter = iter(loader)
        try:
            for batch in batches:
                try:
                    item = next(batch_iter)
                except ImageReadError as e:
                    raise ImageReadError(_clean_worker_error(e)) from None
                if on_device:
                    imgs = decoder(item[0], item[2])
                    x = torch.stack([device_transforms[0](im) for im in imgs])
                    c = (torch.stack([device_transforms[1](im) for im in imgs])
                         if with_crops else None)
                else:
                    x, c = item[0], (item[1] if with_crops else None)
                shard = batch[0] // shard_size
                f = encode(x)
                _check_finite_batch(f, batch, paths, out, backbone)
                fc = None
                if c is not None:
                    b, nc = c.shape[:2]
                    fc = encode(c.reshape(b * nc, *c.shape[2:])).reshape(b, nc, -1)
                    _check_finite_batch(fc, batch, paths, out, backbone)
                pending.setdefault(shard, []).append((f, fc))
                n_new += len(batch)
                bar.update(len(batch))
                lo, hi = _shard_bounds(shard, shard_size, n)
                if batch[-1] + 1 == hi:  # the shard is complete
                    parts = pending.pop(shard)
                    feats = np.concatenate([p[0] for p in parts])
                    crops = np.concatenate([p[1] for p in parts]) if with_crops else None
                    _write_parquet(features_table(paths[lo:hi], labels[lo:hi], feats,
                                                  {**meta, "shard": shard}, crops=crops),
                                   shard_path(shard))
                    rate = n_new / max(time.perf_counter() - t0, 1e-9)
                    bar.set_postfix_str(f"{rate:.1f} images/s", refresh=False)
                    log.info("%s: shard %d/%d written (%d rows), %.1f images/s",
                             out.name, shard + 1, n_shards, hi - lo, rate)
        finally:
            bar.close()
        del batch_iter, loader  # stop the workers before assembling
    elapsed = time.perf_counter() - t0
    if decoder is not None:
        st = decoder.stats()
        log.info("%s: decoded %d images on %s, %d on the CPU instead (%d refused by header: "
                 "PNG/progressive/CMYK/..., %d by the decoder)", out.name, st["images"],
                 device, st["cpu_fallbacks"], st["refused_by_header"], st["refused_by_decoder"])

    _assemble(out, [shard_path(i) for i in range(n_shards)],
              {**meta, "feature": kind, "extraction": manifest})
    if not keep_shards:
        shutil.rmtree(shard_dir, ignore_errors=True)
    ips = n_new / elapsed if elapsed > 0 and n_new else float("nan")
    log.info("%s: %d images (%d encoded now), %.1f images/s", out.name, n, n_new, ips)
    stats = {"images": n, "encoded": n_new, "seconds": round(elapsed, 3),
             "images_per_second": round(ips, 2) if n_new else None}
    if decoder is not None:
        stats["decode"] = decoder.stats()
    return stats


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
                    if "crops" in t.schema.names:
                        final["crops"] = t.schema.field("crops").type.list_size // dim
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
    for split in splits:
        if not (split_dir / f"{split}.txt").is_file():
            raise FileNotFoundError(f"split list {split_dir / f'{split}.txt'} not found; "
                                    f"run the prepare stage for dataset {dataset!r} first")
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
                 "dataset": dataset, "preprocessing": _describe(tf), "transform": tf_info["test"],
                 "versions": library_versions(), "amp": amp, "device": dev.type,
                 "feature": bb.feature_kind(feature), "decode": decode,
                 # every file of the folder names all the lists it was extracted with, so a
                 # reader can tell a val/test file of another extraction (store.check_folder)
                 "inputs_sha256": {**{s: sha256_file(split_dir / f"{s}.txt") for s in splits},
                                   "classnames": sha256_file(split_dir / "classnames.txt")
                                   if (split_dir / "classnames.txt").is_file() else None}}
    stats: dict[str, Any] = {}
    for split in splits:
        split_file = split_dir / f"{split}.txt"
        with_tte = crops_tf is not None and split != "train"
        meta = {**base_meta, "split": split, "split_sha256": sha256_file(split_file),
                **({"tte": tf_info["tte"]} if with_tte else {})}
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
