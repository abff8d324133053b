"""``lt-bench doctor``: check a machine before the first real run of a suite.

One table, a line per check, each passed (✓), failed (✗, with the fix) or a warning (!),
in well under a minute on a login node: it opens files, asks the hub cache (never the
network), reads the GPU's properties and asks SLURM and the tracking store — it runs no
model and writes nothing (the tracking check opens a write transaction and rolls it back).

Areas (README, "Before your first full run"):
- ``data``: per dataset of the suite, the split lists (prepared, or their source), the
  image root, and a sample of listed images per split (spread over classes) that must exist
  and decode;
- ``weights``: per backbone, its weights found offline (hub cache or declared file) and,
  where ``resources/weights.lock`` exists, equal to the locked sha256;
- ``gpu``: count, memory, torch's CUDA build against the driver, the fine-tuning batch
  against the memory (an estimate, a warning only);
- ``disk``: free space under ``results/`` against :func:`estimate_bytes` of the plan;
- ``slurm`` (with a SLURM profile): the partitions, account and GPUs the profile names;
- ``tracking``: the MLflow store reachable and writable.

Exit 0 when nothing failed, 2 otherwise (warnings do not fail).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

from lt_bench.backbones.spec import looks_like_file
from lt_bench.doctor.check import FAIL, OK, WARN, Check
from lt_bench.doctor.check import read_yaml as _yaml
from lt_bench.doctor.disk import check_disk, estimate_bytes, run_bytes  # noqa: F401
from lt_bench.doctor.services import check_slurm, check_tracking

#: images decoded per split (spread over classes)
DEFAULT_SAMPLE = 50


# --- data -----------------------------------------------------------------------------------

def _split_sources(ds, split_dir: Path) -> tuple[dict[str, Path], str]:
    """The split lists to sample from: the prepared ones, else the local sources (a user's
    oltr_lists folder, LIFT's lists in split_dir_local)."""
    prepared = {s: split_dir / f"{s}.txt" for s in ds.splits}
    if all(p.is_file() for p in prepared.values()):
        return prepared, f"prepared in {split_dir}"
    if hasattr(ds, "list_sources"):
        lists = ds.list_sources()
        if "train" in lists and "test" in lists:
            return lists, f"from split_dir {ds.source_dir}"
        return {}, (f"split_dir {ds.source_dir} has no train.txt and test.txt (datasets."
                    f"{ds.name}.split_dir)")
    sources = getattr(ds, "sources", None)
    local = ds.params.get("split_dir_local") if sources else None
    if sources and local:
        from lt_bench.data.lift import find_local_source

        return ({s: find_local_source(sources[s], Path(local)) for s in ds.splits if s in sources},
                f"from split_dir_local {local}")
    return {}, ""


def _sample_lines(path: Path, n: int) -> list[tuple[str, int]]:
    """Up to ``n`` (path, label) of a list, one class after another (round robin)."""
    from lt_bench.data.splits import read_split

    paths, labels = read_split(path)
    by_class: dict[int, list[str]] = {}
    for p, y in zip(paths, labels, strict=True):
        by_class.setdefault(int(y), []).append(p)
    classes = sorted(by_class)
    out: list[tuple[str, int]] = []
    depth = 0
    while len(out) < n and any(depth < len(by_class[c]) for c in classes):
        for c in classes:
            if depth < len(by_class[c]) and len(out) < n:
                out.append((by_class[c][depth], c))
        depth += 1
    return out


def check_data(plan, dataset: str, results: Path, sample: int) -> list[Check]:
    from lt_bench.data.images import decode_error
    from lt_bench.errors import UserError

    out: list[Check] = []
    try:
        ds = plan.dataset(dataset)
    except UserError as e:
        return [Check("data", dataset, FAIL, str(e), f"fix datasets.{dataset} in the config")]
    split_dir = Path("resources/data") / dataset
    if not plan.reads_data_root(dataset):
        return [Check("data", dataset, OK, "images are generated or downloaded by "
                      "`lt-bench prepare` (no data_root needed)")]
    try:
        lists, where = _split_sources(ds, split_dir)
    except UserError as e:
        lists, where = {}, str(e)
    if lists:
        out.append(Check("data", f"{dataset} split lists", OK, where))
    elif hasattr(ds, "list_sources"):  # a user's lists: nothing to download
        out.append(Check("data", f"{dataset} split lists", FAIL, where,
                         f"point datasets.{dataset}.split_dir at the folder with train.txt, "
                         "test.txt, classnames.txt (val.txt optional)"))
    else:
        out.append(Check("data", f"{dataset} split lists", WARN,
                         where or "not prepared; `lt-bench prepare` downloads LIFT's pinned "
                         "lists (needs network on the machine that runs it)",
                         f"offline: set datasets.{dataset}.split_dir_local to a copy of "
                         "LIFT's datasets/ folder"))
    image_dir = plan.image_dir(dataset)
    try:
        root = ds.image_root(split_dir, image_dir)
    except UserError as e:
        out.append(Check("data", f"{dataset} images", FAIL, str(e).splitlines()[0],
                         f"set datasets.{dataset}.image_root to where the images are"
                         if hasattr(ds, "list_sources") else
                         "set data_root (and data_dirs) to where the images are: "
                         f"--config data_root=/datasets; layout in `lt-bench prepare {dataset}`"
                         " errors and README"))
        return out
    out.append(Check("data", f"{dataset} image root", OK, str(root)))
    for split, path in lists.items():
        items = _sample_lines(path, sample)
        missing = [p for p, _ in items if not (root / p).is_file()]
        bad = [(p, e) for p, _ in items if (root / p).is_file()
               for e in [decode_error(root / p)] if e]
        name = f"{dataset} {split} images"
        classes = len({y for _, y in items})
        if missing:
            out.append(Check("data", name, FAIL,
                             f"{len(missing)} of {len(items)} sampled images missing, e.g. "
                             f"{root / missing[0]}",
                             "the image root's layout must match the split lists' paths"))
        elif bad:
            out.append(Check("data", name, FAIL,
                             f"{len(bad)} of {len(items)} sampled images do not decode, e.g. "
                             f"{root / bad[0][0]}: {bad[0][1]}",
                             f"re-download the images; `lt-bench verify-images {dataset}` "
                             "checks every one"))
        else:
            out.append(Check("data", name, OK,
                             f"{len(items)} sampled images over {classes} classes decode"))
    return out


# --- weights --------------------------------------------------------------------------------

def check_weights(backbones: list[str], lock_file: Path,
                  declared: dict | None = None) -> list[Check]:
    """Per backbone (``declared``: config.yaml's ``backbones:``): its model, tag and
    activation agree, its weights are here offline and match the declared sha256 and the
    lock."""
    from lt_bench.backbones.declared import check_architecture, resolve_spec
    from lt_bench.backbones.weights import (
        WeightsError,
        check_pinned,
        locate_weights,
        read_lock,
        weights_source,
    )
    from lt_bench.errors import UserError

    out: list[Check] = []
    try:
        lock = read_lock(lock_file)
    except WeightsError as e:
        return [Check("weights", str(lock_file), FAIL, str(e),
                      "rewrite it with `lt-bench fetch-weights --suite S`")]
    for name in backbones:
        spec = resolve_spec(name, declared)
        if spec.library == "toy":
            out.append(Check("weights", name, OK, "toy CLIP: pre-trained by the pipeline"))
            continue
        try:
            check_architecture(spec)
        except UserError as e:
            out.append(Check("weights", name, FAIL, str(e), f"fix backbones.{name} in the "
                             "config" if declared and name in declared else ""))
            continue
        path = locate_weights(spec)
        if path is None:
            file = spec.pretrained if looks_like_file(spec.pretrained) else None
            out.append(Check("weights", name, FAIL,
                             f"{file or weights_source(spec)} not found offline "
                             f"({'declared file' if file else 'hub cache'})",
                             f"put the file there, or fix backbones.{name}.pretrained" if file
                             else "`lt-bench fetch-weights --suite S` on a machine with "
                             "network, with the same HF_HOME as the GPU nodes"))
            continue
        try:
            sha = check_pinned(spec, path, lock, lock_file)
        except WeightsError as e:
            out.append(Check("weights", name, FAIL, str(e),
                             "restore the locked file or re-run `lt-bench fetch-weights`"))
            continue
        if sha is None:
            out.append(Check("weights", name, WARN, f"{path} (not pinned)",
                             "`lt-bench fetch-weights --suite S` writes resources/weights.lock"))
        else:
            pins = " and ".join(w for w, on in (("its declared sha256", spec.sha256),
                                                ("the lock", name in lock)) if on)
            out.append(Check("weights", name, OK, f"{path} matches {pins} ({sha[:12]}…)"))
    unused = sorted(set(lock) - set(backbones))
    if unused:  # a lock written for another suite: its pins would not protect this one
        out.append(Check("weights", str(lock_file), FAIL,
                         f"pins {', '.join(unused)}, not a backbone of this suite",
                         "`lt-bench fetch-weights --suite S` writes the lock of suite S"))
    return out


# --- GPU ------------------------------------------------------------------------------------

def finetune_gib(batch: int, *, width: int = 768, layers: int = 12, tokens: int = 197) -> float:
    """Estimated GPU memory of one fine-tuning step (ViT, AMP): activations kept for the
    backward pass ≈ batch × layers × tokens × width × 2 bytes × 24 (the tensors a ViT block
    saves, LayerNorms, attention, MLP at 4× width) + 1 GiB for weights, optimiser and CUDA
    context. An estimate to warn with, not a measurement."""
    return (batch * layers * tokens * width * 2 * 24) / 2**30 + 1.0


def _driver_version() -> str | None:
    exe = shutil.which("nvidia-smi")
    if not exe:
        return None
    try:
        r = subprocess.run([exe, "--query-gpu=driver_version", "--format=csv,noheader"],
                           capture_output=True, text=True, timeout=20, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return r.stdout.strip().splitlines()[0] if r.returncode == 0 and r.stdout.strip() else None


def check_gpu(needs_gpu: bool, on_slurm: bool, batch: int) -> list[Check]:
    import torch

    driver = _driver_version()
    cuda = torch.version.cuda
    if not torch.cuda.is_available():
        if driver:
            return [Check("gpu", "CUDA", FAIL,
                          f"driver {driver} present but torch (CUDA build {cuda}) sees no GPU",
                          "install a torch build for this driver's CUDA version "
                          "(pip install torch==<version> --index-url <the matching CUDA index>)")]
        # A warning, not a failure: doctor runs on login nodes, and CPU runs are possible
        where = ("the GPU nodes are checked by the smoke run" if on_slurm
                 else "the suite's extraction and fine-tuning need one" if needs_gpu
                 else "the toy world runs on CPUs")
        return [Check("gpu", "GPUs", WARN, f"no GPU visible here (torch {torch.__version__}); "
                      f"{where}", "" if on_slurm or not needs_gpu else
                      "run the suite on a GPU machine, or with a SLURM profile")]
    out = []
    n = torch.cuda.device_count()
    mems = [torch.cuda.get_device_properties(i).total_memory / 2**30 for i in range(n)]
    out.append(Check("gpu", "GPUs", OK,
                     f"{n} × {torch.cuda.get_device_name(0)}, {min(mems):.0f} GiB; torch CUDA "
                     f"{cuda}, driver {driver or '?'}"))
    need = finetune_gib(batch)
    if need > min(mems):
        out.append(Check("gpu", "fine-tuning batch", WARN,
                         f"batch {batch} needs ~{need:.0f} GiB (estimate) > {min(mems):.0f} GiB",
                         "lower methods.<fine-tuned method>.batch_size or use a larger GPU"))
    return out


# --- the whole check ------------------------------------------------------------------------

def run_doctor(config: dict[str, Any], *, profile: Path | None = None,
               results: Path = Path("results"), lock_file: Path | None = None,
               tracking_uri: str | None = None, sample: int = DEFAULT_SAMPLE) -> list[Check]:
    from lt_bench.backbones.weights import lock_path
    from lt_bench.plan import Plan
    from lt_bench.tracking.records import default_tracking_uri

    plan = Plan(config)
    suite = plan.suite
    checks: list[Check] = []
    for d in suite.datasets:
        checks += check_data(plan, d, results, sample)
    checks += check_weights(suite.backbones, lock_file or lock_path(),
                            config.get("backbones"))
    needs_gpu = any(not plan.is_toy_backbone(b) for b in suite.backbones)
    on_slurm = profile is not None and (profile / "config.yaml").is_file() and \
        _yaml(profile / "config.yaml").get("executor") == "slurm"
    ft = [m for m in suite.methods if plan.consumes(m) == "images"]
    batch = max((int(plan.hparams(m, d).get("batch_size", 0) or 0)
                 for m in ft for d in suite.datasets), default=0)
    checks += check_gpu(needs_gpu, on_slurm, batch)
    checks += check_disk(plan, results)
    if profile is not None:
        checks += check_slurm(profile)
    checks += check_tracking(tracking_uri or default_tracking_uri())
    return checks


def format_table(checks: list[Check]) -> str:
    from tabulate import tabulate

    rows = [(c.status, c.area, c.name, c.detail + (f"\n  fix: {c.fix}" if c.fix else ""))
            for c in checks]
    return tabulate(rows, headers=["", "area", "check", "result"], tablefmt="simple")


def failed(checks: list[Check]) -> bool:
    return any(c.status == FAIL for c in checks)
