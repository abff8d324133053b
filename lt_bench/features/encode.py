"""Encoding the images of one split list into a features file (``{split}.parquet``).

Throughput
    One multi-worker DataLoader per split decodes and preprocesses while the model runs
    (workers start once per split, not once per shard); on GPU the forward pass runs under
    fp16 autocast and batches come from pinned host memory. ``benchmarks/extract.py``
    measures end-to-end throughput against the bare forward pass.
Determinism
    Row order is the split list's order (in-order loader, no shuffling), so features and
    logits line up with split lists.
Resumability
    In shards with a manifest of their inputs (``shards.py``).
Finiteness
    Every batch is checked after the cast to fp16 (what is stored): a NaN/inf feature stops
    the job with the output file, the rows, their images and the backbone.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from lt_bench.backbones.base import LoadedBackbone
from lt_bench.backbones.weights import weights_id
from lt_bench.data.splits import read_split
from lt_bench.errors import InputValidationError, UserError
from lt_bench.features.images import (
    ImageListDataset,
    ImageReadError,
    clean_worker_error,
    yield_to_model,
)
from lt_bench.features.shards import Shards, shard_dir_for
from lt_bench.features.store import NonFiniteFeatureError, features_table, first_bad_rows
from lt_bench.io import sha256_file

log = logging.getLogger(__name__)

DECODES = ("cpu", "gpu", "torchvision")


def describe_transform(t) -> str | None:
    """A transform as one line of the files' metadata."""
    return None if t is None else str(t).replace("\n", " ")


def progress_bar(total: int, initial: int, desc: str):
    import sys

    from tqdm import tqdm

    tty = sys.stderr.isatty()
    # In a rule's log file (not a terminal) a line every 30 s, not a carriage-return storm.
    return tqdm(total=total, initial=initial, desc=desc, unit="img", file=sys.stderr,
                mininterval=2 if tty else 30, dynamic_ncols=tty, ascii=not tty)


def _check_decode(decode: str, device: torch.device, device_transforms) -> bool:
    """Whether batches are decoded on the device (after checking the option fits)."""
    if decode not in DECODES:
        raise UserError(f"decode {decode!r}: expected one of {', '.join(DECODES[:2])}")
    if decode == "gpu" and device.type != "cuda":
        raise UserError(f"decode: gpu needs a CUDA device, but extraction runs on {device}; "
                        "use decode: cpu")
    on_device = decode != "cpu"
    if on_device and device_transforms is None:
        raise AssertionError("decode on the device needs device_transforms (the caller "
                             "builds them from the backbone's transforms)")
    return on_device


@dataclass
class _Encoder:
    """The backbone's forward pass on a batch, cast to what is stored (fp16) and checked
    finite (a NaN/inf names the output file, the rows and their images)."""

    backbone: LoadedBackbone
    feature: str
    device: torch.device
    amp: bool
    out: Path
    paths: list[str]

    def _forward(self, x: torch.Tensor) -> np.ndarray:
        x = x.to(self.device, non_blocking=True)
        with torch.autocast(self.device.type, dtype=torch.float16, enabled=self.amp):
            f = self.backbone.encode_feature(x, self.feature)
        return f.float().cpu().numpy().astype(np.float16)  # what is stored

    def __call__(self, x: torch.Tensor, rows: list[int]) -> np.ndarray:
        """(B, 3, S, S) images of the split's rows ``rows`` → (B, D) features."""
        return self._checked(self._forward(x), rows)

    def crops(self, c: torch.Tensor, rows: list[int]) -> np.ndarray:
        """(B, C, 3, S, S) crops → (B, C, D) features."""
        b, nc = c.shape[:2]
        return self._checked(self._forward(c.reshape(b * nc, *c.shape[2:])).reshape(b, nc, -1),
                             rows)

    def _checked(self, f16: np.ndarray, rows: list[int]) -> np.ndarray:
        if np.isfinite(f16).all():
            return f16
        bad = first_bad_rows(f16)
        raise NonFiniteFeatureError(
            f"{self.out}: backbone {self.backbone.spec.name!r} produced NaN/inf features for "
            f"row(s) {[rows[b] for b in bad]} (0-based), image(s) "
            f"{[self.paths[rows[b]] for b in bad]}; expected finite values (fp16 overflow "
            "under AMP, or broken weights: try --device cpu, or check the checkpoint)")


@dataclass
class _Source:
    """Where a batch's model inputs come from: PIL on CPU workers (``transform``,
    ``crops_transform``), or file bytes decoded on the device (``device_transforms``)."""

    image_root: Path
    split_file: Path
    transform: Any
    crops_transform: Any
    seed: int | None
    device_transforms: tuple | None  # set: decode on the device

    @property
    def with_crops(self) -> bool:
        if self.device_transforms is not None:
            return self.device_transforms[1] is not None
        return self.crops_transform is not None

    def loader(self, paths, labels, batches, num_workers: int, device: torch.device):
        """(DataLoader over ``batches``, the device decoder or None)."""
        if self.device_transforms is not None:
            from lt_bench.features.decode import BatchDecoder, RawImageDataset, collate_raw

            ds = RawImageDataset(self.image_root, paths, labels, self.split_file)
            decoder, collate = BatchDecoder(device), collate_raw
        else:
            ds = ImageListDataset(self.image_root, paths, labels, self.transform,
                                  self.split_file, self.crops_transform, self.seed)
            decoder, collate = None, None
        loader = DataLoader(ds, batch_sampler=batches, num_workers=num_workers,
                            pin_memory=device.type == "cuda" and decoder is None,
                            prefetch_factor=4 if num_workers > 0 else None, collate_fn=collate,
                            worker_init_fn=yield_to_model if device.type == "cpu" else None)
        return loader, decoder

    def inputs(self, item, decoder) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(images, crops or None) of one loader item."""
        if decoder is None:
            return item[0], (item[1] if self.with_crops else None)
        imgs = decoder(item[0], item[2])
        main, crops = self.device_transforms
        x = torch.stack([main(im) for im in imgs])
        return x, (torch.stack([crops(im) for im in imgs]) if self.with_crops else None)


def _encode_shards(shards: Shards, todo: list[int], n_done: int, source: _Source,
                   encoder: _Encoder, labels: np.ndarray, meta: dict[str, Any],
                   batch_size: int, num_workers: int) -> tuple[int, Any]:
    """Encode the shards ``todo``, writing each as it completes; (rows encoded, decoder)."""
    paths, out, t0 = encoder.paths, encoder.out, time.perf_counter()
    batches = shards.batches(todo, batch_size)
    loader, decoder = source.loader(paths, labels, batches, num_workers, encoder.device)
    bar = progress_bar(shards.rows, n_done, f"extract {out.stem}")
    pending: dict[int, list[tuple]] = {}
    n_new, batch_iter = 0, iter(loader)
    try:
        for batch in batches:
            try:
                item = next(batch_iter)
            except ImageReadError as e:
                raise ImageReadError(clean_worker_error(e)) from None
            x, c = source.inputs(item, decoder)
            shard = batch[0] // shards.size
            pending.setdefault(shard, []).append(
                (encoder(x, batch), encoder.crops(c, batch) if c is not None else None))
            n_new += len(batch)
            bar.update(len(batch))
            lo, hi = shards.bounds(shard)
            if batch[-1] + 1 == hi:  # the shard is complete
                parts = pending.pop(shard)
                crops = np.concatenate([p[1] for p in parts]) if source.with_crops else None
                shards.write(shard, features_table(
                    paths[lo:hi], labels[lo:hi], np.concatenate([p[0] for p in parts]),
                    {**meta, "shard": shard}, crops=crops))
                rate = n_new / max(time.perf_counter() - t0, 1e-9)
                bar.set_postfix_str(f"{rate:.1f} images/s", refresh=False)
                log.info("%s: shard %d/%d written (%d rows), %.1f images/s",
                         out.name, shard + 1, shards.count, hi - lo, rate)
    finally:
        bar.close()
    return n_new, decoder  # the loader goes with this frame: its workers stop before assembly


def _manifest(split_file: Path, backbone: LoadedBackbone, shard_size: int, n_rows: int,
              amp: bool, weights: str, how: dict) -> dict:
    return {"split_sha256": sha256_file(split_file), "rows": n_rows,
            "backbone": backbone.spec.name, "weights": weights,
            "shard_size": shard_size, "amp": bool(amp), **how}


def _how(kind: str, decode: str, seed: int | None, source: _Source) -> dict[str, Any]:
    """What the manifest records of the preprocessing (a change discards the shards)."""
    if source.device_transforms is not None:
        pre = "device:" + str([getattr(t, "__qualname__", str(t))
                               for t in source.device_transforms])
        crops = None
    else:
        pre = describe_transform(source.transform)
        crops = describe_transform(source.crops_transform)
    return {"feature": kind, "decode": decode, "seed": seed, "preprocessing": pre,
            "crops_preprocessing": crops}


def _read_list(split_file: Path) -> tuple[list[str], np.ndarray]:
    paths, labels = read_split(split_file)
    if not paths:
        raise InputValidationError(f"{split_file}: the split list is empty; expected one "
                                   "'<image path> <label>' line per image")
    return paths, np.asarray(labels, dtype=np.int64)


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
    (``features/decode.py``). Finished shards of an interrupted run are re-used
    (``shards.py``); with ``keep_shards`` the shard folder stays after ``out`` is written.
    """
    split_file, out = Path(split_file), Path(out)
    paths, labels = _read_list(split_file)
    n = len(paths)
    device = torch.device(device)
    on_device = _check_decode(decode, device, device_transforms)
    source = _Source(Path(image_root), split_file,
                     backbone.preprocess if transform is None else transform, crops_transform,
                     seed, device_transforms if on_device else None)
    amp = device.type == "cuda" if amp is None else amp
    weights = weights if weights is not None else weights_id(backbone)
    kind = backbone.feature_kind(feature)
    manifest = _manifest(split_file, backbone, shard_size, n, amp, weights,
                         _how(kind, decode, seed, source))
    shards = Shards(shard_dir_for(out), n, shard_size)
    shards.open(manifest)
    done = shards.finished()
    todo = [i for i in range(shards.count) if i not in done]
    n_done = sum(shards.rows_of(i) for i in done)
    if done:
        log.info("%s: resuming: %d of %d shards (%d of %d images) already encoded",
                 out.name, len(done), shards.count, n_done, n)
    log.info("%s: encoding %d images on %s (amp=%s, batch %d, %d workers, shards of %d, "
             "feature %s, decode %s)", out.name, n - n_done, device, amp, batch_size,
             num_workers, shard_size, kind, decode)

    t0, n_new, decoder = time.perf_counter(), 0, None
    if todo:
        n_new, decoder = _encode_shards(shards, todo, n_done, source,
                                        _Encoder(backbone, feature, device, amp, out, paths),
                                        labels, meta, batch_size, num_workers)
    elapsed = time.perf_counter() - t0
    shards.assemble(out, {**meta, "feature": kind, "extraction": manifest})
    if not keep_shards:
        import shutil

        shutil.rmtree(shards.dir, ignore_errors=True)
    return _stats(out, n, n_new, elapsed, decoder, device)


def _stats(out: Path, n: int, n_new: int, elapsed: float, decoder, device) -> dict[str, Any]:
    if decoder is not None:
        st = decoder.stats()
        log.info("%s: decoded %d images on %s, %d on the CPU instead (%d refused by header: "
                 "PNG/progressive/CMYK/..., %d by the decoder)", out.name, st["images"],
                 device, st["cpu_fallbacks"], st["refused_by_header"], st["refused_by_decoder"])
    ips = n_new / elapsed if elapsed > 0 and n_new else float("nan")
    log.info("%s: %d images (%d encoded now), %.1f images/s", out.name, n, n_new, ips)
    stats = {"images": n, "encoded": n_new, "seconds": round(elapsed, 3),
             "images_per_second": round(ips, 2) if n_new else None}
    if decoder is not None:
        stats["decode"] = decoder.stats()
    return stats
