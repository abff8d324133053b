"""Backbone weights pinned by hash: where a backbone's file is, and ``resources/weights.lock``.

One owner of the lock file (:func:`read_lock`, :func:`write_lock`) and of the decision
"which file holds this backbone's weights" (:func:`locate_weights`), used by
``lt-bench fetch-weights`` (writes the lock on a machine with network), ``lt-bench doctor``
(checks it offline) and :func:`lt_bench.backbones.base.load_backbone` (extraction and
fine-tuning load exactly the locked file, offline, and refuse a changed one).

The lock is JSON (``{"version": 1, "weights": [{backbone, source, file, sha256}, ...]}``):
``source`` says what the weights are (``open_clip:<model>/<tag>``, ``timm:<name>``,
``file``), ``file`` where they were on the machine that wrote the lock — the hub cache
moves between machines, so a locked entry is found again by its source and compared by
sha256; the path is informative.

Files are located without downloading unless asked (``download=True``): the Hugging Face
hub is asked with ``local_files_only``, so a GPU node without network either finds the
cached file or gets one line saying how to fetch it.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from lt_bench.backbones.declared import check_architecture, resolve_spec
from lt_bench.backbones.spec import looks_like_file
from lt_bench.errors import UserError
from lt_bench.io import atomic_path, sha256_cached

LOCK_VERSION = 1
#: default lock location, relative to the workflow's working directory
DEFAULT_LOCK = "resources/weights.lock"
# open_clip's hub file names (open_clip/constants.py): the safetensors file is preferred,
# as open_clip.pretrained.download_pretrained_from_hf does
_OPEN_CLIP_BIN = "open_clip_pytorch_model.bin"
_OPEN_CLIP_SAFE = "open_clip_model.safetensors"
# timm's hub files, in the order timm's load_pretrained tries them
_TIMM_FILES = ("model.safetensors", "pytorch_model.bin")


class WeightsError(UserError):
    """Weights that cannot be found offline, or that differ from the lock."""


@dataclass(frozen=True)
class LockEntry:
    backbone: str
    source: str
    file: str
    sha256: str


def lock_path() -> Path:
    """``$LT_BENCH_WEIGHTS_LOCK`` or ``resources/weights.lock`` (relative to the cwd)."""
    return Path(os.environ.get("LT_BENCH_WEIGHTS_LOCK") or DEFAULT_LOCK)


def read_lock(path: str | os.PathLike | None = None) -> dict[str, LockEntry]:
    """The lock's entries by backbone; {} when there is no lock file."""
    path = Path(path) if path is not None else lock_path()
    if not path.is_file():
        return {}
    def refused(why: object) -> WeightsError:
        return WeightsError(f"{path}: not a weights lock written by `lt-bench fetch-weights` "
                            f"({why}); expected JSON with version {LOCK_VERSION} and "
                            "weights: [{backbone, source, file, sha256}]")

    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        version = doc.get("version")
        entries = [LockEntry(**{k: str(e[k]) for k in ("backbone", "source", "file",
                                                         "sha256")})
                   for e in doc["weights"]] if version == LOCK_VERSION else []
    except (ValueError, KeyError, TypeError, AttributeError) as e:  # bad JSON, a missing key
        raise refused(e) from None
    if version != LOCK_VERSION:
        raise refused(f"version {version!r}, expected {LOCK_VERSION}")
    return {e.backbone: e for e in entries}


def write_lock(path: str | os.PathLike, entries: dict[str, LockEntry]) -> None:
    doc = {"version": LOCK_VERSION,
           "weights": [asdict(entries[b]) for b in sorted(entries)]}
    with atomic_path(Path(path)) as tmp:
        Path(tmp).write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")


def weights_source(spec) -> str:
    """What the weights are, independent of where they sit on this machine."""
    if spec.library == "timm":
        return f"timm:{spec.timm_name}"
    if spec.library == "toy" or looks_like_file(spec.pretrained):
        return "file"
    return f"open_clip:{spec.model}/{spec.pretrained}"


def _hub_file(repo_id: str, filenames: tuple[str, ...], download: bool,
              cache_dir: str | None) -> Path | None:
    from huggingface_hub import hf_hub_download

    for name in filenames:
        try:
            return Path(hf_hub_download(repo_id=repo_id, filename=name, cache_dir=cache_dir,
                                        local_files_only=not download))
        except Exception:  # noqa: BLE001  (not cached / not on the hub: try the next name)
            continue
    return None


def _open_clip_file(spec, download: bool, cache_dir: str | None) -> Path | None:
    from open_clip.pretrained import download_pretrained_from_url, get_pretrained_cfg

    cfg = get_pretrained_cfg(spec.model, spec.pretrained) or {}
    hub = cfg.get("hf_hub", "")
    if hub:
        repo_id, filename = os.path.split(hub)
        names = (filename,) if filename else (_OPEN_CLIP_SAFE, _OPEN_CLIP_BIN)
        if filename.endswith((".bin", ".pth", ".pt")):
            names = (str(Path(filename).with_suffix(".safetensors")), filename)
        return _hub_file(repo_id, names, download, cache_dir)
    url = cfg.get("url", "")
    if not url:
        return None
    target = Path(cache_dir or os.path.expanduser("~/.cache/clip")) / os.path.basename(url)
    if target.is_file() or not download:
        return target if target.is_file() else None
    return Path(download_pretrained_from_url(url, cache_dir=cache_dir))


def _timm_file(spec, download: bool, cache_dir: str | None) -> Path | None:
    import timm

    cfg = timm.models.get_pretrained_cfg(spec.timm_name)
    repo_id = getattr(cfg, "hf_hub_id", None) if cfg is not None else None
    if not repo_id:
        return None
    return _hub_file(repo_id, _TIMM_FILES, download, cache_dir)


def locate_weights(spec, checkpoint: str | os.PathLike | None = None, *,
                   download: bool = False, cache_dir: str | None = None) -> Path | None:
    """The file holding ``spec``'s weights on this machine, or None when it is not here.

    ``checkpoint`` (a local file given for this load) wins; a toy CLIP has no file until
    the pipeline pre-trains it. Nothing is downloaded unless ``download``.
    """
    if checkpoint is not None:
        p = Path(checkpoint)
        return p if p.is_file() else None
    if spec.library == "toy":
        return None
    if looks_like_file(spec.pretrained):
        p = Path(spec.pretrained).expanduser()
        return p if p.is_file() else None
    if spec.library == "timm":
        return _timm_file(spec, download, cache_dir)
    return _open_clip_file(spec, download, cache_dir)


def weights_id(backbone) -> str:
    """What identifies a loaded backbone's weights (features' metadata, run configs, MLflow):
    ``sha256:<hex>`` of the loaded file, else the pretrained tag."""
    p = backbone.pretrained
    if p and Path(p).is_file():
        return "sha256:" + sha256_cached(p)
    return str(p)


def check_pinned(spec, path: Path, lock: dict[str, LockEntry] | None = None,
                 lock_file: Path | None = None) -> str | None:
    """sha256 of ``path``, refused where the declaration's ``sha256`` or the lock pins
    another (the message names both hashes); None when nothing pins ``spec``."""
    lock_file = lock_file or lock_path()
    lock = read_lock(lock_file) if lock is None else lock
    entry = lock.get(spec.name)
    if entry is None and not spec.sha256:
        return None
    actual = sha256_cached(path)
    if spec.sha256 and actual != spec.sha256.lower():
        raise WeightsError(
            f"weights of backbone {spec.name!r} ({path}): sha256 {actual} differs from "
            f"{spec.sha256.lower()} declared in config.yaml (backbones.{spec.name}.sha256); "
            "restore the declared file, or update the sha256 if the change is intended")
    if entry is not None and actual != entry.sha256:
        raise WeightsError(
            f"weights of backbone {spec.name!r} ({path}): sha256 {actual} differs from "
            f"{entry.sha256} pinned in {lock_file}; restore the locked file, or run "
            "`lt-bench fetch-weights` again if the change is intended")
    return actual


def fetch_weights(backbones: list[str], lock_file: str | os.PathLike, *,
                  cache_dir: str | None = None, download: bool = True,
                  declared: dict | None = None) -> dict[str, LockEntry]:
    """Put every backbone's weights in the cache (downloading them) and write the lock.

    ``declared`` is config.yaml's ``backbones:`` (a declared file is pinned as it is, and
    must match its declared sha256). Toy CLIPs are skipped (the pipeline pre-trains them).
    A backbone that cannot be fetched is one line naming it and what was tried.
    """
    lock_file = Path(lock_file)
    entries: dict[str, LockEntry] = {}  # the lock of exactly these backbones
    for name in backbones:
        spec = resolve_spec(name, declared)
        if spec.library == "toy":
            continue
        check_architecture(spec)
        path = locate_weights(spec, download=download, cache_dir=cache_dir)
        if path is None:
            file = f" {spec.pretrained}" if looks_like_file(spec.pretrained) else ""
            raise WeightsError(
                f"backbone {name!r} ({weights_source(spec)}{file}): weights not found"
                f"{'' if download else ' in the local cache'}; run `lt-bench fetch-weights` "
                "on a machine with network (a declared file: put it there)")
        sha = check_pinned(spec, path, {}, lock_file)  # a declared sha256; the lock is rewritten
        entries[name] = LockEntry(name, weights_source(spec), str(path.resolve()),
                                  sha or sha256_cached(path))
    write_lock(lock_file, entries)
    return entries
