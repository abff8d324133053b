"""One loader for every kind of backbone (the spec and the registry: :mod:`.spec`; a name's
spec, registered or declared: :func:`.declared.resolve_spec`).

Three kinds, one loader (:func:`load_backbone`):

``open_clip``
    A real CLIP: an open_clip model config plus a pretrained tag, downloaded by open_clip
    on the user's machine (``ViT-B-16-quickgelu`` + ``openai``), or a local checkpoint of
    an open_clip architecture declared in config.yaml's ``backbones:``
    (:mod:`lt_bench.backbones.declared`; the one way to bring your own weights).
``toy``
    The pipeline's toy CLIPs: open_clip models with a custom config (``model_configs/``)
    whose checkpoint the pipeline pre-trains. They load through the same
    ``open_clip.create_model_and_transforms(..., pretrained=<path>)`` call as a real CLIP
    with a local checkpoint, so the toy world exercises the real code path.
``timm``
    A non-CLIP image model (``timm.create_model(f"{model}.{pretrained}", num_classes=0)``):
    its pooled pre-logits features; no text tower, so no zero-shot and heads start from
    class means.

A checkpoint given to :func:`load_backbone` replaces the download of a registered real
backbone (an offline machine, a mirror); the preprocessing is still the tag's.

The cached feature (:meth:`LoadedBackbone.encode_feature`; docs/protocol.md, head feature)
    ``pre_projection`` for open_clip ViTs (real and toy CLIPs): the pooled ``ln_post`` CLS
    token *before* ``visual.proj`` (768-d for ViT-B/16), the feature LIFT's head acts on
    (``models/peft_vit.py``: ``x = self.ln_post(x[:, 0, :])``, ``# x = x @ self.proj``);
    :attr:`LoadedBackbone.projection` is ``visual.proj`` (D x E), so
    ``encode_image(x) == encode_feature(x) @ projection`` and zero-shot stays exact.
    ``encode_image`` for other open_clip towers (ResNets, timm trunks: no plain ``proj``)
    or on request; ``timm_pooled`` for timm models (pooled pre-logits).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from lt_bench.backbones.declared import check_architecture, resolve_spec
from lt_bench.backbones.spec import (  # noqa: F401  (re-exported: config, plan, plugins)
    BACKBONES,
    BackboneSpec,
    ensure_model_configs,
    looks_like_file,
)
from lt_bench.backbones.weights import (
    WeightsError,
    check_pinned,
    locate_weights,
    lock_path,
    read_lock,
    weights_source,
)
from lt_bench.errors import (
    InputValidationError,
    MissingInputError,
    UserError,
    WeightsUnavailableError,
)

if TYPE_CHECKING:  # torch is imported lazily: this module is on the CLI start-up path
    import torch

log = logging.getLogger(__name__)


class RefusedCheckpointError(UserError):
    """A checkpoint that is not a plain state dict (loading it could run code)."""


#: ``extract.feature``: auto = pre_projection where the tower allows it
FEATURE_KINDS = ("auto", "pre_projection", "encode_image")


@contextlib.contextmanager
def _without_projection(visual):
    saved = visual.proj
    visual.proj = None
    try:
        yield
    finally:
        visual.proj = saved


@dataclass
class LoadedBackbone:
    spec: BackboneSpec
    model: torch.nn.Module
    preprocess: Callable
    tokenizer: Callable | None
    pretrained: str | None  # what was actually loaded (tag or checkpoint path)

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        if self.spec.library == "timm":
            return self.model(images)
        return self.model.encode_image(images)

    def _proj(self):
        visual = getattr(self.model, "visual", None)
        proj = getattr(visual, "proj", None)
        import torch

        ok = (visual is not None and type(visual).__name__ == "VisionTransformer"
              and isinstance(proj, torch.Tensor) and proj.ndim == 2)
        return proj if ok else None

    def feature_kind(self, requested: str = "auto") -> str:
        """The feature :meth:`encode_feature` caches: ``pre_projection`` (open_clip ViTs),
        ``encode_image`` (other open_clip towers, or ``requested="encode_image"``),
        ``timm_pooled`` (timm)."""
        if requested not in FEATURE_KINDS:
            raise InputValidationError(f"unknown feature {requested!r}; "
                                       f"valid: {', '.join(FEATURE_KINDS)}")
        if self.spec.library == "timm":
            return "timm_pooled"
        if requested == "encode_image" or self._proj() is None:
            return "encode_image"
        return "pre_projection"

    def encode_feature(self, images: torch.Tensor, kind: str = "auto") -> torch.Tensor:
        """The feature the heads train on (see the module docstring)."""
        kind = self.feature_kind(kind)
        if kind != "pre_projection":
            return self.encode_image(images)
        with _without_projection(self.model.visual):
            # open_clip's own forward with proj=None: exactly the pooled token it would
            # project (robust to pool type / final_ln_after_pool), no re-implementation
            return self.model.visual(images)

    def projection(self, kind: str = "auto"):
        """``visual.proj`` (D x E float32 numpy) when the feature is pre-projection, else None."""
        if self.feature_kind(kind) != "pre_projection":
            return None
        return self._proj().detach().float().cpu().numpy().copy()

    def preprocess_cfg(self) -> dict:
        """This backbone's mean, std, size, interpolation (:func:`transforms.preprocess_cfg`)."""
        from lt_bench.backbones.transforms import preprocess_cfg

        return preprocess_cfg(self)

    @property
    def logit_scale(self) -> float | None:
        if not self.spec.has_text:
            return None
        ls = getattr(self.model, "logit_scale", None)
        return float(ls.detach().float().exp().item()) if ls is not None else None


def open_clip_tag_preprocess(model: str, tag: str | None) -> dict:
    """Preprocessing of an open_clip pretrained tag (mean, std, interpolation, resize mode).

    Used when a local checkpoint replaces the tag's download, so the images are
    preprocessed as the weights expect (open_clip's defaults are OpenAI's otherwise).
    """
    if not tag or looks_like_file(tag):
        return {}
    from open_clip.pretrained import get_pretrained_cfg

    cfg = get_pretrained_cfg(model, tag) or {}
    keys = {"mean": "image_mean", "std": "image_std", "interpolation": "image_interpolation",
            "resize_mode": "image_resize_mode"}
    return {arg: cfg[k] for k, arg in keys.items() if cfg.get(k) is not None}


def _load_open_clip(spec: BackboneSpec, checkpoint: str | Path | None,
                    device: torch.device) -> LoadedBackbone:
    import open_clip

    ensure_model_configs()
    if spec.library == "toy" and checkpoint is None:
        raise InputValidationError(f"backbone {spec.name!r} is a toy CLIP: pass its checkpoint "
                                   f"(results/backbones/{spec.name}/checkpoint.pt, made by "
                                   "`lt-bench pretrain`)")
    pretrained = str(checkpoint) if checkpoint is not None else spec.pretrained
    # weights from a file are preprocessed as their tag's (a registered backbone's download
    # replaced by a file; a declared file's finetuned_from), else as the model config says
    from_file = checkpoint is not None or looks_like_file(spec.pretrained)
    kwargs = open_clip_tag_preprocess(spec.model, spec.preprocess_tag) if from_file else {}
    if from_file and not Path(pretrained).is_file():
        raise MissingInputError(f"checkpoint for backbone {spec.name!r} not found: {pretrained}")
    import pickle

    try:
        model, _, preprocess = open_clip.create_model_and_transforms(
            spec.model, pretrained=pretrained, device=device, **kwargs)
    except pickle.UnpicklingError:  # torch's weights_only refusal
        raise RefusedCheckpointError(
            f"checkpoint {pretrained} for backbone {spec.name!r} is refused: it is not a plain "
            "state dict of tensors (it holds pickled Python objects, which could run code "
            "when loaded). Save the model's state_dict() with torch.save and pass that file."
        ) from None
    except RuntimeError as e:
        if "Failed to download" not in str(e):
            raise
        raise WeightsUnavailableError(
            f"backbone {spec.name!r}: could not get the weights of open_clip "
            f"{spec.model!r} / {pretrained!r} ({e}). open_clip downloads them on first use "
            "(Hugging Face Hub or the publisher's URL) into ~/.cache; on a machine without "
            "network, download them elsewhere into the same cache (HF_HOME) with `lt-bench "
            "fetch-weights`, or pass the file as --checkpoint (or declare it in config.yaml's "
            "backbones:).") from e
    tokenizer = open_clip.get_tokenizer(spec.model)
    return LoadedBackbone(spec, model, preprocess, tokenizer, pretrained)


def _load_timm(spec: BackboneSpec, checkpoint: str | Path | None,
               device: torch.device) -> LoadedBackbone:
    import timm
    from timm.data import create_transform, resolve_model_data_config

    if checkpoint is not None and not Path(checkpoint).is_file():
        raise MissingInputError(f"checkpoint for backbone {spec.name!r} not found: {checkpoint}")
    name = spec.timm_name
    # With a local file timm loads it through its pretrained machinery (the classifier of
    # the file is dropped for num_classes=0), so the tag's preprocessing still applies.
    load = checkpoint is not None or bool(spec.pretrained)
    # (custom_load is timm's .npz reader, which some tags use for their URL; a state dict
    # file given here is read as one)
    overlay = ({"file": str(checkpoint), "custom_load": Path(checkpoint).suffix == ".npz"}
               if checkpoint is not None else None)
    try:
        model = timm.create_model(name, pretrained=load, num_classes=0,
                                  pretrained_cfg_overlay=overlay)
    except RuntimeError as e:
        if checkpoint is not None:
            raise
        raise WeightsUnavailableError(
            f"backbone {spec.name!r}: could not get the weights of timm {name!r} ({e}); on a "
            "machine without network pass a local file as --checkpoint") from e
    preprocess = create_transform(**resolve_model_data_config(model), is_training=False)
    return LoadedBackbone(spec, model.to(device), preprocess, None,
                          str(checkpoint) if checkpoint is not None else name)


def _pinned_checkpoint(spec: BackboneSpec, checkpoint: str | Path | None):
    """The file to load. Where ``resources/weights.lock`` or the declaration's ``sha256``
    pins ``spec``: found offline and checked by sha256 (a changed file is an error naming
    both hashes), so a pinned backbone never reaches the network and always loads the
    weights pinned. A declared local file is the checkpoint itself."""
    lock = read_lock()
    if spec.name not in lock and not spec.sha256:
        if checkpoint is None and looks_like_file(spec.pretrained):
            return Path(spec.pretrained).expanduser()
        return checkpoint
    path = locate_weights(spec, checkpoint)
    if path is None:
        where = (f"is pinned in {lock_path()}" if spec.name in lock
                 else "has a sha256 in its declaration")
        raise WeightsError(
            f"backbone {spec.name!r} {where} but its weights ({weights_source(spec)}"
            f"{': ' + str(spec.pretrained) if looks_like_file(spec.pretrained) else ''}) are "
            "not on this machine; run `lt-bench fetch-weights` where there is network, with "
            "the same cache (HF_HOME) or --cache-dir (a declared file: put it there)")
    check_pinned(spec, path, lock)
    return path


def load_backbone(name: str, checkpoint: str | Path | None = None,
                  device: str | torch.device = "cpu") -> LoadedBackbone:
    """Build a backbone in eval mode on ``device``.

    ``checkpoint`` is required for toy backbones (the pipeline's pre-trained file) and
    replaces the download of a registered open_clip or timm backbone otherwise. ``name``
    is registered (built-in, plugin) or declared (``declared.declare_backbone``).
    """
    import torch

    spec = resolve_spec(name)
    if spec.library != "toy":  # the model, the tag and their activation agree (declared.py)
        check_architecture(spec)
    checkpoint = _pinned_checkpoint(spec, checkpoint)
    device = torch.device(device)
    if spec.library == "timm":
        loaded = _load_timm(spec, checkpoint, device)
    elif spec.library in ("open_clip", "toy"):
        loaded = _load_open_clip(spec, checkpoint, device)
    else:
        raise InputValidationError(f"backbone {name!r}: unknown library {spec.library!r}; "
                                   "valid: open_clip, toy, timm")
    loaded.model.eval().to(device)
    return loaded
