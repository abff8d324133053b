"""Images of the real datasets: verification, downloads, and both together.

Real datasets that read ``data_root`` (``Dataset.needs_data_root``) need their images
there; :func:`verify_images` checks that every listed image exists and that a sample
decodes. ImageNet is never downloaded (licence). Places365-Standard and iNat2018 archives
are downloaded by :func:`download_images` only when the config asks for it
(``download_images: true``); both resume and are extracted with
:func:`lt_bench.data.archives.safe_extract_tar`, which never deletes or overwrites a file
it did not create. :func:`ensure_images` (``lt-bench verify-images``, the workflow's
``verify_images`` rule) verifies and, when allowed, downloads what is missing first.
"""

from __future__ import annotations

import json
import logging
import os
import random
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from lt_bench.data.archives import is_extracted, safe_extract_tar
from lt_bench.data.base import DATASETS, DataRootError, Dataset, get_dataset
from lt_bench.data.download import download, file_hash
from lt_bench.data.lift import IMAGENET_LAYOUT
from lt_bench.data.splits import read_split
from lt_bench.errors import InputValidationError, UserError
from lt_bench.io import write_text

log = logging.getLogger(__name__)


class NoImageArchiveError(UserError, ValueError):
    """Images of this dataset are not downloaded by lt-bench; the message says why."""


class ImageVerificationError(UserError, RuntimeError):
    """Listed images are missing or unreadable; ``.report`` holds the details."""

    def __init__(self, message: str, report: dict):
        super().__init__(message)
        self.report = report


@dataclass(frozen=True)
class ImageArchive:
    """An image archive that :func:`download_images` may fetch."""

    url: str
    #: ``"alg:hex"``; None where the publisher gives no checksum
    known_hash: str | None
    size_note: str


IMAGE_ARCHIVES = {
    # Places365 publishes no checksum for this archive: we check the length the server
    # announces and record the sha256 we computed beside the archive (trust on first use).
    "places_lt": ImageArchive(
        "http://data.csail.mit.edu/places/places365/places365standard_easyformat.tar",
        None, "about 105 GB"),
    "inat2018": ImageArchive(
        "https://ml-inat-competition-datasets.s3.amazonaws.com/2018/train_val2018.tar.gz",
        "md5:b1c6952ce38f31868cc50ea72d066cc3", "about 120 GB"),
}

# --------------------------------------------------------------------- image checks


class _DirListing:
    """File names per directory, listed once with ``os.scandir`` (ImageNet-LT: ~186k paths)."""

    def __init__(self, root: Path):
        self.root = root
        self._cache: dict[str, frozenset[str]] = {}

    def _names(self, rel_dir: str) -> frozenset[str]:
        if rel_dir not in self._cache:
            try:
                with os.scandir(self.root / rel_dir) as it:
                    self._cache[rel_dir] = frozenset(e.name for e in it if e.is_file())
            except (FileNotFoundError, NotADirectoryError):
                self._cache[rel_dir] = frozenset()
        return self._cache[rel_dir]

    def exists(self, rel: str) -> bool:
        rel_dir, _, name = rel.rpartition("/")
        return name in self._names(rel_dir)


#: integer modes wider than 8 bits (a 16-bit grayscale PNG opens as "I;16", or "I" in
#: older Pillow): PIL's convert("RGB") clips them at 255, a white image
WIDE_INT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")


def to_rgb(im):
    """An opened PIL image as 8-bit RGB, the one conversion every image reader uses
    (extraction, GPU-decode fallback, fine-tuning, ``verify-images``). 16-bit pixels are
    scaled to 8 bits by ``>> 8``, as torchvision's ``convert_image_dtype`` does for
    uint16 -> uint8 (PIL's own ``convert("RGB")`` clips them: a white image); float
    images (mode "F") and integers beyond 16 bits are refused (ValueError, one line)."""
    from PIL import Image

    if im.mode in WIDE_INT_MODES:
        import numpy as np

        a = np.asarray(im).astype(np.int64)
        if a.size and (a.min() < 0 or a.max() > 0xFFFF):
            raise InputValidationError(f"{im.mode} image with pixel values {a.min()}..{a.max()}; "
                                       "expected 8- or 16-bit unsigned pixels")
        im = Image.fromarray((a >> 8).astype(np.uint8), "L")
    elif im.mode == "F":
        raise InputValidationError("32-bit float image (mode F); expected 8- or 16-bit integer pixels")
    return im.convert("RGB")  # a loaded copy even where im is RGB already


def decode_error(path: Path) -> str | None:
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.load()  # full decode: catches truncated files, which verify() does not
            to_rgb(im)  # what the readers will do with it (16-bit: scaled, float: refused)
    except Exception as err:  # noqa: BLE001 - any decoder failure means "unreadable"
        return f"{type(err).__name__}: {err}"
    return None


def verify_images(dataset_name: str, split_dir: str | os.PathLike,
                  data_root: str | os.PathLike | None, sample: int = 200, *,
                  seed: int = 0, strict: bool = False, params: dict | None = None) -> dict:
    """Check that every image in the split lists exists and that a sample decodes.

    Returns a report: ``ok``, ``image_root``, per-split ``n_listed``/``n_missing``, totals,
    ``missing_examples`` and ``corrupt_examples`` (at most 10 each) and ``error`` (a
    message naming the problems and the expected layout, or None). With ``strict`` a
    failed check raises :class:`ImageVerificationError` carrying the report.
    """
    ds = get_dataset(dataset_name, **(params or {}))
    split_dir = Path(split_dir)
    root = ds.image_root(split_dir, None if data_root is None else str(data_root))
    listing = _DirListing(root)
    report: dict[str, Any] = {"dataset": dataset_name, "image_root": str(root),
                              "split_dir": str(split_dir), "splits": {}}
    present: list[str] = []
    missing: list[str] = []
    for split in ds.splits:
        paths, _ = read_split(split_dir / f"{split}.txt")
        gone = [p for p in paths if not listing.exists(p)]
        report["splits"][split] = {"n_listed": len(paths), "n_missing": len(gone)}
        missing += gone
        present += [p for p in paths if listing.exists(p)]
    present = sorted(set(present))  # iNat's default val is a subset of train
    chosen = random.Random(seed).sample(present, min(sample, len(present)))
    corrupt = [(p, err) for p in chosen if (err := decode_error(root / p))]
    report.update({
        "n_listed": sum(s["n_listed"] for s in report["splits"].values()),
        "n_missing": len(missing), "missing_examples": missing[:10],
        "n_sampled": len(chosen), "n_corrupt": len(corrupt),
        "corrupt_examples": [{"path": p, "error": e} for p, e in corrupt[:10]],
    })
    report["ok"] = not missing and not corrupt
    report["error"] = None if report["ok"] else _image_problem_message(ds, report)
    if strict and not report["ok"]:
        raise ImageVerificationError(report["error"], report)
    return report


def _image_problem_message(ds: Dataset, report: dict) -> str:
    lines = [f"dataset {report['dataset']!r}: images under {report['image_root']} failed checks:"]
    if report["n_missing"]:
        lines.append(f"  {report['n_missing']} of {report['n_listed']} listed images are missing, e.g.:")
        lines += [f"    {p}" for p in report["missing_examples"]]
    if report["n_corrupt"]:
        lines.append(f"  {report['n_corrupt']} of {report['n_sampled']} sampled images "
                     "could not be decoded:")
        lines += [f"    {c['path']}: {c['error']}" for c in report["corrupt_examples"]]
    layout = getattr(ds, "layout", None)
    if layout:
        lines.append(layout)
    return "\n".join(lines)


# --------------------------------------------------------------------- image downloads


def download_images(dataset: str, data_root: str | os.PathLike, *,
                    download_dir: str | os.PathLike | None = None, keep_archive: bool = True,
                    progress: bool = True) -> dict:
    """Download and safely extract a dataset's image archive into ``data_root``.

    Only for datasets in :data:`IMAGE_ARCHIVES` (Places-LT, iNat2018), and only to be
    called when the config asks for it (``download_images: true``). Resumable; the archive is
    verified (md5 for iNat2018; Places365 publishes no checksum, so its length is checked
    and the sha256 we compute is recorded in ``<archive>.sha256`` and checked on later
    runs). Returns what was done, with the archive's digest.
    """
    if dataset not in IMAGE_ARCHIVES:
        raise NoImageArchiveError(_no_download_message(dataset))
    spec = IMAGE_ARCHIVES[dataset]
    data_root = Path(data_root).expanduser()
    archive = Path(download_dir or data_root / ".downloads") / PurePosixPath(spec.url).name
    result = {"dataset": dataset, "data_root": str(data_root), "archive": str(archive),
              "url": spec.url}
    if is_extracted(archive, data_root):
        return {**result, "status": "already extracted"}
    log.info("downloading %s (%s) to %s", spec.url, spec.size_note, archive)
    if spec.known_hash is not None:
        download(spec.url, archive, spec.known_hash, progress=progress)
        result["checksum"] = spec.known_hash
    else:
        result.update(_download_unchecksummed(spec.url, archive, progress))
    safe_extract_tar(archive, data_root)
    if not keep_archive:
        archive.unlink()
    return {**result, "status": "extracted"}


def _download_unchecksummed(url: str, archive: Path, progress: bool) -> dict:
    record = archive.with_name(archive.name + ".sha256")
    recorded = record.read_text().split()[0] if record.exists() else None
    download(url, archive, f"sha256:{recorded}" if recorded else None, progress=progress)
    if recorded:
        return {"checksum": f"sha256:{recorded}", "checksum_source": str(record)}
    digest = file_hash(archive, "sha256")
    write_text(record, f"{digest}  {archive.name}\n")
    log.warning("%s: the publisher gives no checksum; verified the length only. "
                "Computed sha256 %s, recorded in %s", url, digest, record)
    return {"checksum": f"sha256:{digest}", "checksum_source": "computed (none published)"}


def ensure_images(dataset: str, split_dir: str | os.PathLike,
                  data_root: str | os.PathLike | None, *, params: dict | None = None,
                  download: bool = False, sample: int = 200, seed: int = 0) -> dict:
    """Verify a dataset's images; with ``download``, fetch missing Places/iNat images first.

    Returns the :func:`verify_images` report (plus ``download`` when something was
    downloaded). Raises :class:`DataRootError` (no or wrong ``data_root``) or
    :class:`ImageVerificationError` (missing or unreadable images) with a message saying
    what is missing, where it was looked for and how to get it.
    """
    try:
        report = verify_images(dataset, split_dir, data_root, sample=sample, seed=seed,
                               params=params)
        if report["ok"]:
            return report
        problem: Exception = ImageVerificationError(report["error"], report)
    except DataRootError as err:
        if data_root in (None, ""):
            raise  # nowhere to put a download either
        problem = err
    if not download or dataset not in IMAGE_ARCHIVES:
        if dataset in IMAGE_ARCHIVES:
            hint = (f"\nlt-bench can download them: set the config key download_images: true "
                    f"(or run `lt-bench download-images {dataset} --data-root {data_root}`).")
            if isinstance(problem, ImageVerificationError):
                raise ImageVerificationError(str(problem) + hint, problem.report) from None
            raise DataRootError(str(problem) + hint) from None
        raise problem
    log.warning("images of %s are missing under %s (%s); downloading them", dataset,
                data_root, str(problem).splitlines()[0])
    Path(data_root).expanduser().mkdir(parents=True, exist_ok=True)
    fetched = download_images(dataset, data_root)
    report = verify_images(dataset, split_dir, data_root, sample=sample, seed=seed,
                           params=params, strict=True)
    return {**report, "download": fetched}


def _no_download_message(dataset: str) -> str:
    if dataset == "imagenet_lt":
        return ("imagenet_lt: ImageNet is never downloaded by lt-bench (licence); "
                "set data_root to your copy.\n" + IMAGENET_LAYOUT)
    if dataset in DATASETS and not DATASETS.get(dataset).needs_data_root:
        return (f"{dataset}: its images are written by `lt-bench prepare` beside the split "
                f"lists (CIFAR-100-LT from torchvision's CIFAR-100 download); nothing to download")
    return (f"dataset {dataset!r} has no image archive to download; datasets with one: "
            f"{', '.join(sorted(IMAGE_ARCHIVES))}")


def image_root_of(ds, split_dir: Path, data_root: str | None,
                  verified_report: str | os.PathLike | None = None) -> Path:
    """Where a dataset's split-list paths are relative to: the root an image check verified
    (``verify-images --out`` report, so moving data_root re-checks but does not re-extract),
    else the dataset's own rule (``Dataset.image_root``)."""
    if verified_report:
        return Path(json.loads(Path(verified_report).read_text())["image_root"])
    return ds.image_root(Path(split_dir), data_root)
