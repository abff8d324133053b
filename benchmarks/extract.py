"""Extraction overhead: end-to-end throughput / bare model forward throughput.

End to end is what ``lt-bench extract`` does for one split: JPEG files -> decode +
preprocess in DataLoader workers -> model (fp16 autocast on GPU) -> fp16 Parquet shards ->
the assembled file. The bare forward runs the same model on the same batches, already
preprocessed and on the device, in the same process. The ratio says how much of the
model's speed the pipeline keeps (1.0 = the loader and the writer are free); the target
is >= 0.9.

    python benchmarks/extract.py                      # CPU: random-weight ViT-B-16 at 224 px
    python benchmarks/extract.py --model ViT-B-16 --device cuda --amp \\
        --images 8192 --batch-size 256 --num-workers 12   # a GPU box

Why ViT-B/16 by default (the paper's model): decoding and preprocessing a 500x375 JPEG
costs ~10-15 ms of one core, so on a 2-core CPU no pipeline can keep 0.9 of a model that
needs less than ~130 core-ms per image (ViT-B/32 needs ~110: its bound is ~0.88; ViT-B/16
needs ~500). On a GPU the same arithmetic says the loader needs ~15 ms x images/s of CPU:
give it workers (``--num-workers``, ``extract.num_workers``).

Synthetic JPEGs (500x375, ImageNet's typical size) are written to a temporary folder;
the model has random weights (``--pretrained TAG`` loads real ones, needs the network),
saved as a checkpoint and loaded as a declared backbone (config.yaml's ``backbones:``), i.e. through
the same loader as the real backbones. Prints images/s of both and the ratio.

``--device-decode`` (CUDA only; skipped with a message otherwise) also times the same
extraction with JPEGs decoded on the device (``extract.decode: gpu``: batched nvJPEG,
``lt_bench/features/decode.py``) and prints its images/s over the CPU-decode path's.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image


def write_images(root: Path, n: int, size=(500, 375), seed: int = 0) -> Path:
    """n photo-like JPEGs (smooth colour fields + noise, so they compress like photos)."""
    rng = np.random.default_rng(seed)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    lines = []
    for i in range(n):
        a, b, c = rng.uniform(0.002, 0.03, 3)
        base = np.stack([np.sin(a * xx + b * yy + k * c * 50) for k in range(3)], -1)
        img = (127 + 100 * base + rng.normal(0, 12, base.shape)).clip(0, 255).astype(np.uint8)
        rel = f"images/{i % 10}/{i:06d}.jpg"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(root / rel, quality=90)
        lines.append(f"{rel} {i % 10}\n")
    (root / "train.txt").write_text("".join(lines))
    return root / "train.txt"


def bare_forward(bb, batches: list[torch.Tensor], device: torch.device, amp: bool) -> float:
    """Images/s of the model alone on preprocessed batches already on the device."""
    n = sum(len(b) for b in batches)
    with torch.no_grad():
        _sync(device)
        t0 = time.perf_counter()
        for x in batches:
            with torch.autocast(device.type, dtype=torch.float16, enabled=amp):
                f = bb.encode_feature(x)  # what extraction stores
            f.float().cpu()  # the pipeline copies every batch back too
        _sync(device)
    return n / (time.perf_counter() - t0)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="ViT-B-16", help="open_clip model config (default: ViT-B-16)")
    p.add_argument("--pretrained", default=None, help="open_clip tag (default: random weights)")
    p.add_argument("--images", type=int, default=48, help="number of images (default: 48)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--num-workers", type=int, default=1)
    p.add_argument("--shard-size", type=int, default=8192)
    p.add_argument("--device", default="cpu")
    p.add_argument("--amp", action="store_true", help="fp16 autocast (what extraction does on GPU)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--repeats", type=int, default=3, help="alternating rounds (medians reported)")
    p.add_argument("--device-decode", action="store_true",
                   help="also time decode on the device (nvJPEG); needs CUDA")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    if a.threads:
        torch.set_num_threads(a.threads)

    import open_clip

    from lt_bench.backbones.base import load_backbone
    from lt_bench.backbones.declared import declare_backbone
    from lt_bench.data.splits import read_split
    from lt_bench.features.encode import extract_split

    device = torch.device(a.device)
    with tempfile.TemporaryDirectory(prefix="lt-bench-extract-bench-") as tmp:
        tmp = Path(tmp)
        split = write_images(tmp, a.images)
        torch.manual_seed(0)
        model = open_clip.create_model(a.model, pretrained=a.pretrained)
        torch.save(model.state_dict(), tmp / "model.pt")
        del model
        name = declare_backbone("bench", {"library": "open_clip", "model": a.model,
                                          "pretrained": str(tmp / "model.pt")})
        bb = load_backbone(name, device=device)
        paths, _ = read_split(split)
        xs = torch.stack([bb.preprocess(Image.open(tmp / q).convert("RGB")) for q in paths])
        batches = [xs[i:i + a.batch_size].to(device) for i in range(0, len(xs), a.batch_size)]
        bare_forward(bb, batches[:2], device, a.amp)  # warm-up (kernels, allocator)

        # bare, e2e, bare, e2e, ..., bare: each round's ratio uses the bare forward measured
        # right before and after it, so a machine whose load drifts biases no side
        bare = [bare_forward(bb, batches, device, a.amp)]
        e2e, ratios = [], []
        for r in range(a.repeats):
            out = tmp / f"train{r}.parquet"
            _sync(device)
            t0 = time.perf_counter()
            extract_split(bb, split, tmp, out, {"benchmark": True}, batch_size=a.batch_size,
                          num_workers=a.num_workers, shard_size=a.shard_size, device=device,
                          amp=a.amp)
            _sync(device)
            e2e.append(len(paths) / (time.perf_counter() - t0))
            bare.append(bare_forward(bb, batches, device, a.amp))
            ratios.append(e2e[-1] / statistics.mean(bare[-2:]))
            print(f"round {r + 1}: end-to-end {e2e[-1]:.2f} images/s, bare forward "
                  f"{bare[-2]:.2f} / {bare[-1]:.2f} images/s, ratio {ratios[-1]:.3f}",
                  file=sys.stderr)

        gpu_e2e = _device_decode(a, bb, split, tmp, device) if a.device_decode else None

    e, b, ratio = statistics.median(e2e), statistics.median(bare), statistics.median(ratios)
    print(f"model {a.model} ({'random weights' if not a.pretrained else a.pretrained}), "
          f"{a.images} JPEGs 500x375, batch {a.batch_size}, {a.num_workers} workers, "
          f"device {device}, amp {a.amp}, torch threads {torch.get_num_threads()}, "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    print(f"end-to-end (files -> decode -> model -> Parquet): {e:.2f} images/s")
    print(f"bare model forward (same batches):              {b:.2f} images/s")
    print(f"ratio end-to-end / bare: {ratio:.3f}  (median over {a.repeats} rounds; target >= 0.9)")
    if gpu_e2e:
        print(f"end-to-end, decode on the device:               {gpu_e2e:.2f} images/s")
        print(f"ratio device decode / CPU decode: {gpu_e2e / e:.3f}")
    return 0


def _device_decode(a, bb, split: Path, tmp: Path, device: torch.device) -> float | None:
    """Median images/s of extraction with ``decode="gpu"``; None (and a note) without CUDA."""
    from lt_bench.features.encode import extract_split
    from lt_bench.features.protocol import device_transforms, eval_transforms

    if device.type != "cuda":
        print("device decode: skipped (needs --device cuda and a GPU)", file=sys.stderr)
        return None
    _, _, info = eval_transforms(bb, "open_clip")  # the transform bb.preprocess applies
    tfs = device_transforms(info)
    rates = []
    for r in range(a.repeats):
        _sync(device)
        t0 = time.perf_counter()
        st = extract_split(bb, split, tmp, tmp / f"gpu{r}.parquet", {"benchmark": True},
                           batch_size=a.batch_size, num_workers=a.num_workers,
                           shard_size=a.shard_size, device=device, amp=a.amp, decode="gpu",
                           device_transforms=(tfs[0], None))
        _sync(device)
        rates.append(st["images"] / (time.perf_counter() - t0))
        print(f"device-decode round {r + 1}: {rates[-1]:.2f} images/s, decode {st['decode']}",
              file=sys.stderr)
    return statistics.median(rates)


if __name__ == "__main__":
    sys.exit(main())
