"""The disk check: the plan's results size, from documented per-file formulas."""

from __future__ import annotations

import shutil
from pathlib import Path

from lt_bench.doctor.check import FAIL, OK, Check

#: headroom over the estimated results size
DISK_MARGIN = 1.2


# --- disk -----------------------------------------------------------------------------------

def dataset_shape(plan, dataset: str) -> tuple[int, dict[str, int]] | None:
    """(K, rows per split): from the prepared lists (or a user's lists, oltr_lists), else
    the dataset's known statistics, else the toy world's parameters; None where unknown
    before ``prepare``."""
    from lt_bench.data import dataset_class

    split_dir = Path("resources/data") / dataset
    cls = dataset_class(dataset, plan.dataset_params(dataset))
    for folder in (split_dir, getattr(plan.dataset(dataset), "source_dir", None)):
        names = folder / "classnames.txt" if folder else None
        lists = [s for s in cls.splits if folder and (folder / f"{s}.txt").is_file()]
        if names and names.is_file() and "train" in lists and "test" in lists:
            k = sum(1 for line in names.read_text(encoding="utf-8").splitlines()
                    if line.strip())
            rows = {s: sum(1 for _ in open(folder / f"{s}.txt", encoding="utf-8"))
                    for s in lists}
            rows.setdefault("val", min(rows["train"], 20 * k))  # carved from train
            return k, rows
    stats = getattr(cls, "expected_stats", None)
    if stats:
        return cls.num_classes, {s: v["n_images"] for s, v in stats.items()}
    if dataset == "toy":
        p = plan.dataset(dataset).params
        k = int(p["num_classes"])
        train = sum(max(1, round(p["max_per_class"] * p["imbalance"] ** (-i / max(k - 1, 1))))
                    for i in range(k))
        return k, {"train": train, "val": p["val_per_class"] * k,
                   "test": p["test_per_class"] * k}
    return None


def run_bytes(consumes: str, n_eval: int, k: int, d: int) -> int:
    """Bytes of one run folder (docs: README "Disk"): a head run keeps its predictor
    (K × D float32) and per-class rows; a fine-tuned run its val/test pre-head features
    (n_eval × D float16, two views: centre and five-crop), its head (K × D float32) and
    adapters (~2.5 MB for ViT-B/16); an ensemble only its per-class rows."""
    small = 16_384 + 48 * k  # JSON files + per_class.parquet
    if consumes == "images":
        return small + n_eval * d * 2 * 2 + k * d * 4 + 2_500_000
    if consumes == "runs":
        return small
    return small + k * d * 4


def estimate_bytes(plan) -> tuple[int, list[str]]:
    """Bytes the suite writes under results/ (features + runs + MLflow), and what is unknown."""
    cfg = plan.extract_options()  # the suite's own extract: over the top-level one
    crops = 6 if cfg.get("tte") in ("fivecrop", "both") else 1
    views = int(cfg.get("train_views") or 0)
    total, unknown, shapes = 0, [], {}
    for d in plan.suite.datasets:
        shape = dataset_shape(plan, d)
        if shape is None:
            unknown.append(d)
            continue
        shapes[d] = shape
        k, rows = shape
        for b in plan.suite.backbones:
            dim = plan.backbone_spec(b).feature_dim or 768
            per_row = dim * 2 + 64  # float16 feature + path and label
            total += rows.get("train", 0) * per_row * (1 + views)
            total += sum(n * per_row * crops for s, n in rows.items() if s != "train")
            total += k * 512 * 4 * 2  # text.parquet
    for d, b, m, _seed in plan.per_backbone_runs() + plan.ensemble_runs():
        if d not in shapes:
            continue
        k, rows = shapes[d]
        dim = 768 if b == "ensemble" else (plan.backbone_spec(b).feature_dim or 768)
        total += run_bytes(plan.consumes(m), rows.get("val", 0) + rows.get("test", 0), k, dim)
        total += 48 * k + 8_192  # MLflow: per-class artifact, params and metrics
    return total, unknown


def _free_bytes(path: Path) -> int:
    p = path.resolve()
    while not p.exists():
        p = p.parent
    return shutil.disk_usage(p).free


def check_disk(plan, results: Path) -> list[Check]:
    need, unknown = estimate_bytes(plan)
    need = int(need * DISK_MARGIN)
    free = _free_bytes(results)
    gib = 2**30
    detail = (f"~{need / gib:.1f} GiB needed (estimate +{round((DISK_MARGIN - 1) * 100)} %), "
              f"{free / gib:.1f} GiB free under {results}")
    if unknown:
        detail += f"; not counted until prepared: {', '.join(unknown)}"
    if free < need:
        return [Check("disk", "results/", FAIL, detail,
                      "free space, or make results/ a link to a larger disk")]
    return [Check("disk", "results/", OK, detail)]


