"""Fine-tuning step overhead: the loop's training throughput / a bare forward+backward.

The fine-tuning step is :meth:`lt_bench.finetune.loop.Trainer.train_epoch`, what
``finetune`` runs each epoch: micro-batches with accumulation weights, AMP (bf16, or fp16
with a GradScaler), the SGD step over the PEFT parameters and the head, the loss kept on
the device. The bare forward+backward runs the same PEFT-injected model and cosine head on
the same batches (already preprocessed, on the device): loss, backward, nothing else. The
ratio says how much of the model's speed the loop keeps (target >= 0.9).

    python benchmarks/finetune.py                          # CPU: random ViT-B/16, 224 px
    python benchmarks/finetune.py --model lt-toy-vit-p8 --images 512 --batch-size 128
    python benchmarks/finetune.py --device cuda --images 2048 --batch-size 128 \\
        --e2e --num-workers 12                              # a GPU box: ViT-B/16 images/s

``--e2e`` also times one epoch of ``finetune`` itself on synthetic 500x375 JPEGs (decode,
RandomResizedCrop and flip in the loader workers; the per-epoch checkpoint; no val pass),
against the same bare forward+backward.
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

import torch
import torch.nn.functional as F


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bare_forward_backward(trainer, batches, device) -> float:
    """Images/s of loss + backward alone (gradients dropped, no optimiser)."""
    params = [p for g in trainer.optimizer.param_groups for p in g["params"]]
    n = sum(len(y) for _, y in batches)
    _sync(device)
    t0 = time.perf_counter()
    for x, y in batches:
        loss = F.cross_entropy(trainer.forward(x), y)
        (trainer.scaler.scale(loss) if trainer.scaler is not None else loss).backward()
        for p in params:
            p.grad = None
    _sync(device)
    return n / (time.perf_counter() - t0)


def finetune_step(trainer, batches, device) -> float:
    n = sum(len(y) for _, y in batches)
    _sync(device)
    t0 = time.perf_counter()
    trainer.train_epoch(batches, n, epoch=0)
    _sync(device)
    return n / (time.perf_counter() - t0)


def build(a, device):
    import open_clip

    from lt_bench.backbones.spec import ensure_model_configs
    from lt_bench.finetune.loop import Trainer, resolve_amp
    from lt_bench.finetune.peft import CosineHead, inject_peft

    ensure_model_configs()
    torch.manual_seed(0)
    model = open_clip.create_model(a.model)
    for p in model.parameters():
        p.requires_grad_(False)
    params = inject_peft(model.visual, a.peft, a.classes, seed=0)
    model.visual.to(device).eval()
    width = model.visual.positional_embedding.shape[-1]
    head = CosineHead(torch.randn(a.classes, width), 25.0).to(device)
    opt = torch.optim.SGD([{"params": params}, {"params": list(head.parameters())}], lr=0.01,
                          momentum=0.9, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, 10)
    amp = resolve_amp(a.amp, device)
    scaler = torch.amp.GradScaler("cuda") if amp == "fp16" else None
    trainer = Trainer(model.visual, head, opt, sched, scaler,
                      lambda z, y, e: F.cross_entropy(z, y), amp, device, a.batch_size,
                      a.micro_batch_size or a.batch_size)
    return model, trainer, sum(p.numel() for p in params)


def e2e_epoch(a, model, device, tmp: Path) -> float:
    """Images/s of one ``finetune`` epoch on JPEG files (``info['images_per_second']``)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from extract import write_images

    from lt_bench.backbones.transforms import CLIP_MEAN, CLIP_STD
    from lt_bench.data.splits import read_split
    from lt_bench.finetune.loop import finetune

    split = write_images(tmp, a.images)
    paths, labels = read_split(split)
    labels = [y % a.classes for y in labels]
    width = model.visual.positional_embedding.shape[-1]
    r = finetune(model=model, train_items=list(zip(paths, labels, strict=True)),
                 eval_items={}, image_root=tmp, num_classes=a.classes,
                 head_init=torch.randn(a.classes, width).numpy(),
                 loss_fn=lambda z, y, e: F.cross_entropy(z, y),
                 hparams={"peft": a.peft, "epochs": 1, "batch_size": a.batch_size,
                          "micro_batch_size": a.micro_batch_size, "amp": a.amp,
                          "num_workers": a.num_workers},
                 seed=0, device=str(device), work_dir=tmp / "work", mean=CLIP_MEAN,
                 std=CLIP_STD, image_size=a.image_size)
    return r.info["images_per_second"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="ViT-B-16", help="open_clip model config (random weights)")
    p.add_argument("--peft", default="adaptformer", help="adaptformer | vpt | lora")
    p.add_argument("--classes", type=int, default=1000, help="K (sets the bottleneck; 1000)")
    p.add_argument("--images", type=int, default=32, help="images per round (default: 32)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--micro-batch-size", type=int, default=None)
    p.add_argument("--device", default="cpu")
    p.add_argument("--amp", default="auto", help="auto | bf16 | fp16 | off (default: auto)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--repeats", type=int, default=3, help="alternating rounds (medians reported)")
    p.add_argument("--e2e", action="store_true", help="also one finetune() epoch on JPEG files")
    p.add_argument("--num-workers", default="auto", help="loader workers for --e2e")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    if a.threads:
        torch.set_num_threads(a.threads)
    if a.num_workers != "auto":
        a.num_workers = int(a.num_workers)

    device = torch.device(a.device)
    model, trainer, n_peft = build(a, device)
    a.image_size = model.visual.image_size[0]
    g = torch.Generator().manual_seed(0)
    xs = torch.randn(a.images, 3, a.image_size, a.image_size, generator=g)
    ys = torch.randint(0, a.classes, (a.images,), generator=g)
    mb = a.micro_batch_size or a.batch_size
    batches = [(xs[i:i + mb].to(device), ys[i:i + mb].to(device))
               for i in range(0, a.images, mb)]
    bare_forward_backward(trainer, batches[:2], device)  # warm-up (kernels, allocator)
    finetune_step(trainer, batches[:2], device)

    # bare, step, bare, step, ..., bare: each round's ratio uses the bare pass measured
    # right before and after it, so a machine whose load drifts biases neither side
    bare, step, ratios = [bare_forward_backward(trainer, batches, device)], [], []
    for r in range(a.repeats):
        step.append(finetune_step(trainer, batches, device))
        bare.append(bare_forward_backward(trainer, batches, device))
        ratios.append(step[-1] / statistics.mean(bare[-2:]))
        print(f"round {r + 1}: fine-tuning step {step[-1]:.2f} images/s, bare forward+backward "
              f"{bare[-2]:.2f} / {bare[-1]:.2f} images/s, ratio {ratios[-1]:.3f}", file=sys.stderr)
    e2e, amp = None, trainer.amp
    if a.e2e:
        import open_clip

        del trainer, model, batches  # finetune() injects PEFT itself: give it a fresh CLIP
        if device.type == "cuda":
            torch.cuda.empty_cache()
        torch.manual_seed(0)
        fresh = open_clip.create_model(a.model)
        with tempfile.TemporaryDirectory(prefix="lt-bench-finetune-bench-") as tmp:
            e2e = e2e_epoch(a, fresh, device, Path(tmp))

    s, b, ratio = statistics.median(step), statistics.median(bare), statistics.median(ratios)
    mem = (f", peak GPU memory {torch.cuda.max_memory_allocated(device) / 2**30:.1f} GiB"
           if device.type == "cuda" else "")
    print(f"model {a.model} (random weights), {a.peft} ({n_peft:,} PEFT params, K={a.classes}),"
          f" {a.images} images {a.image_size}px, batch {a.batch_size} (micro {mb}), device "
          f"{device}, amp {amp}, torch threads {torch.get_num_threads()}, load average "
          f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs{mem}")
    print(f"fine-tuning step (Trainer.train_epoch):   {s:.2f} images/s")
    print(f"bare forward+backward (same batches):     {b:.2f} images/s")
    print(f"ratio step / bare: {ratio:.3f}  (median over {a.repeats} rounds; target >= 0.9)")
    if e2e is not None:
        print(f"finetune() epoch on JPEGs (loader {a.num_workers} workers): {e2e:.2f} images/s, "
              f"ratio to bare {e2e / b:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
