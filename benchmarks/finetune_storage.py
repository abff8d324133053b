"""Disk size of a fine-tuned run folder at iNat2018's shape, before and after storing
pre-head features + the head instead of K-float logits.

A synthetic fine-tuning result (val and test rows, D-dim features, a K x D head and
AdaptFormer's parameters for ViT-B/16 at that K) is written through the real writer,
:func:`lt_bench.runs.finetune.write_finetuned_run` (the seam computes the logits the
metrics see from the stored files). "Before" is the previous format: the same run's
val/test logits as ``logits_{split}.parquet`` (float32, :func:`lt_bench.runs.folder.write_logits`)
plus the trained parameters. Also printed: how many test arg-maxes the float16 storage
of the features changes against float32 features (the precision trade-off).

    python benchmarks/finetune_storage.py                        # iNat2018: 24,426 + 24,426 rows
    python benchmarks/finetune_storage.py --views centre         # without the five-crop view
    python benchmarks/finetune_storage.py --fraction 0.1         # 10 % of the rows, extrapolated
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np


def synthetic_result(n_val: int, n_test: int, d: int, k: int, views: list[str],
                     seed: int = 0):
    """Labels, features by split and view, trainable parameters (with ``head.weight``)."""
    from lt_bench.finetune.peft import peft_parameter_count

    rng = np.random.default_rng(seed)
    head = rng.normal(0, 1, (k, d)).astype(np.float32)
    unit_head = head / np.linalg.norm(head, axis=1, keepdims=True)
    labels, features = {}, {}
    for split, n in (("val", n_val), ("test", n_test)):
        y = np.arange(n) % k
        # features near their class's head row, noisy enough that top-1 is ~70 % and the
        # top-2 margins are as thin as a real head's (the arg-max flips are then honest)
        f = (unit_head[y] + rng.normal(0, 0.25, (n, d))).astype(np.float32)
        f *= rng.uniform(5, 15, (n, 1)).astype(np.float32)  # ln_post outputs are not unit
        labels[split] = y
        features[split] = {"centre": f}
        if "tte" in views:
            crops = f[:, None, :] + rng.normal(0, 0.3, (n, 5, d)).astype(np.float32)
            crops /= np.linalg.norm(crops, axis=2, keepdims=True)
            features[split]["tte"] = crops.mean(1)
    n_peft = peft_parameter_count("adaptformer", d, 12, k)
    trainable = {"visual.peft": rng.normal(0, 0.01, n_peft).astype(np.float32),
                 "head.weight": head}
    return labels, features, trainable


def folder_mb(path: Path) -> dict[str, float]:
    return {p.name: p.stat().st_size / 2**20 for p in sorted(Path(path).iterdir())
            if p.is_file()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--val", type=int, default=24_426)
    ap.add_argument("--test", type=int, default=24_426)
    ap.add_argument("--dim", type=int, default=768)
    ap.add_argument("--classes", type=int, default=8_142)
    ap.add_argument("--views", choices=["centre", "both"], default="both")
    ap.add_argument("--fraction", type=float, default=1.0,
                    help="shrink the rows (not K) and extrapolate the row-proportional files")
    a = ap.parse_args()

    from lt_bench.runs.finetune import write_finetuned_run
    from lt_bench.runs.folder import write_logits
    from lt_bench.runs.predictors import cosine_head_logits, open_run

    views = ["centre", "tte"] if a.views == "both" else ["centre"]
    n_val, n_test = int(a.val * a.fraction), int(a.test * a.fraction)
    labels, features, trainable = synthetic_result(n_val, n_test, a.dim, a.classes, views)
    counts = np.bincount(labels["val"], minlength=a.classes) + 1
    with tempfile.TemporaryDirectory() as tmp:
        new = Path(tmp) / "new"
        t0 = time.perf_counter()
        write_finetuned_run(new, labels=labels, features=features, trainable=trainable,
                            scale=25.0, view="centre", train_counts=counts,
                            config={"method": "adaptformer_la", "dataset": "inat2018",
                                    "backbone": "clip_vit_b16", "seed": 0},
                            info={"train_seconds": 0.0})
        t_new = time.perf_counter() - t0
        after = folder_mb(new)
        # before: the same logits stored as float32 K-vectors beside the parameters
        old = Path(tmp) / "old"
        old.mkdir()
        t0 = time.perf_counter()
        seam = open_run(new)
        flips = {}
        for s in ("val", "test"):
            y, z = seam.split_logits(s)
            write_logits(y, z, old / f"logits_{s}.parquet")
            z32 = cosine_head_logits(features[s]["centre"], trainable["head.weight"], 25.0,
                                     "centre")
            flips[s] = float((z32.argmax(1) != z.argmax(1)).mean())
            flips[s + "_top1"] = float((z.argmax(1) == y).mean())
            del z, z32
        t_old = time.perf_counter() - t0
        before = {**folder_mb(old), "trainable.safetensors": after["trainable.safetensors"]}

    scale = 1.0 / a.fraction
    rows = ("features_val.parquet", "features_test.parquet", "logits_val.parquet",
            "logits_test.parquet")

    def total(files: dict[str, float]) -> float:
        return sum(v * (scale if n in rows else 1.0) for n, v in files.items())

    print(f"shape: val {a.val:,} + test {a.test:,} rows, D = {a.dim}, K = {a.classes:,}, "
          f"views {views}" + (f" (measured at fraction {a.fraction}, rows extrapolated)"
                              if a.fraction != 1 else ""))
    for name, files in (("before (float32 logits)", before), ("after (float16 features "
                                                              "+ head)", after)):
        print(f"{name}: {total(files):8.1f} MB")
        for n, v in files.items():
            print(f"    {n:28s} {v * (scale if n in rows else 1.0):8.1f} MB")
    print(f"write + evaluate: after {t_new:.1f} s; before-format logits write {t_old:.1f} s")
    print(f"float16 feature storage vs float32 features: test arg-max changed on "
          f"{100 * flips['test']:.3f} % of rows (val {100 * flips['val']:.3f} %; synthetic "
          f"test top-1 {flips['test_top1']:.3f})")


if __name__ == "__main__":
    main()
