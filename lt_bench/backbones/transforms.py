"""Image transforms of LIFT's protocol (``shijxcs/LIFT``, ``trainer.py: build_data_loader``).

LIFT builds, at ``resolution`` = 224 with CLIP's mean/std (0.5/0.5 for its non-CLIP ViTs):

train
    ``RandomResizedCrop(224)`` + ``RandomHorizontalFlip()`` + ``ToTensor`` + ``Normalize``.
test (no TTE)
    ``Resize(224 * 8 // 7)`` (= 256, shorter side) + ``CenterCrop(224)``.
test (``tte_mode: fivecrop``)
    ``Resize(224 + expand)`` with ``expand: 24`` (``configs/model/clip_vit_b16.yaml``) +
    ``FiveCrop(224)``; logits are averaged over the five crops.

LIFT's ``Resize``/``RandomResizedCrop`` use torchvision's default interpolation
(bilinear), so the LIFT kinds default to it; open_clip's own eval transform
(``kind="open_clip"``: ``Resize(224)`` shorter side + ``CenterCrop(224)``) uses the
backbone's interpolation (bicubic for CLIPs). :func:`transform_meta` says what each kind
is, for the feature files' metadata.
"""

from __future__ import annotations

from collections.abc import Sequence

from lt_bench.errors import InputValidationError

#: OpenAI CLIP's normalisation (LIFT's ``trainer.py`` and open_clip's ``OPENAI_DATASET_MEAN``)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
#: LIFT's Resize(size + expand) before FiveCrop (configs/model/*.yaml: ``expand: 24``)
TTE_EXPAND = 24
TEST_KINDS = ("lift", "open_clip")
_DEFAULT_INTERP = {"lift": "bilinear", "open_clip": "bicubic"}


class TransformError(InputValidationError):
    """An unknown transform kind or interpolation (``extract.test_transform``, a declared
    backbone's preprocessing)."""


def _interp(name: str):
    from torchvision.transforms import InterpolationMode

    try:
        return InterpolationMode(name)
    except ValueError:
        valid = ", ".join(m.value for m in InterpolationMode)
        raise TransformError(f"unknown interpolation {name!r}; valid: {valid}") from None


def _normalize(mean: Sequence[float], std: Sequence[float]):
    from torchvision import transforms as T

    return T.Normalize(tuple(float(m) for m in mean), tuple(float(s) for s in std))


def lift_train_transform(size: int = 224, mean: Sequence[float] = CLIP_MEAN,
                         std: Sequence[float] = CLIP_STD, *, interpolation: str = "bilinear"):
    """LIFT's training view: RandomResizedCrop(size) + flip + ToTensor + Normalize.

    torchvision's defaults (scale 0.08-1, ratio 3/4-4/3, bilinear), as LIFT calls it. The
    randomness comes from torch's global generator (seed it per image for reproducible views).
    """
    from torchvision import transforms as T

    return T.Compose([
        T.Lambda(_to_rgb),
        T.RandomResizedCrop(size, interpolation=_interp(interpolation)),
        T.RandomHorizontalFlip(),
        T.ToTensor(),
        _normalize(mean, std),
    ])


def _to_rgb(img):
    return img.convert("RGB") if getattr(img, "mode", "RGB") != "RGB" else img


def lift_test_transform(size: int = 224, mean: Sequence[float] = CLIP_MEAN,
                        std: Sequence[float] = CLIP_STD, kind: str = "lift", *,
                        interpolation: str | None = None):
    """The evaluation transform: one (3, size, size) tensor per image.

    ``kind="lift"``: ``Resize(size * 8 // 7)`` + ``CenterCrop(size)`` (LIFT, bilinear);
    ``kind="open_clip"``: ``Resize(size)`` + ``CenterCrop(size)`` (open_clip's eval
    transform; pass the backbone's interpolation, bicubic by default).
    """
    from torchvision import transforms as T

    if kind not in TEST_KINDS:
        raise TransformError(f"unknown test transform {kind!r}; valid: {', '.join(TEST_KINDS)}")
    resize = size * 8 // 7 if kind == "lift" else size
    interp = _interp(interpolation or _DEFAULT_INTERP[kind])
    return T.Compose([
        T.Lambda(_to_rgb),
        T.Resize(resize, interpolation=interp),
        T.CenterCrop(size),
        T.ToTensor(),
        _normalize(mean, std),
    ])


def _stack_crops(crops):
    import torch
    from torchvision.transforms import functional as TF

    return torch.stack([TF.to_tensor(c) for c in crops])


def five_crop_transform(size: int = 224, mean: Sequence[float] = CLIP_MEAN,
                        std: Sequence[float] = CLIP_STD, *, expand: int = TTE_EXPAND,
                        interpolation: str = "bilinear"):
    """LIFT's test-time ensembling: Resize(size + 24) + FiveCrop(size) -> (5, 3, size, size).

    Crop order is torchvision's: top-left, top-right, bottom-left, bottom-right, centre.
    """
    from torchvision import transforms as T

    return T.Compose([
        T.Lambda(_to_rgb),
        T.Resize(size + expand, interpolation=_interp(interpolation)),
        T.FiveCrop(size),
        T.Lambda(_stack_crops),
        _normalize(mean, std),  # Normalize broadcasts over the leading crop dimension
    ])


def transform_meta(kind: str, size: int = 224, mean: Sequence[float] = CLIP_MEAN,
                   std: Sequence[float] = CLIP_STD, interpolation: str | None = None) -> dict:
    """What to record in a feature file's metadata about the transform ``kind``.

    ``kind``: ``lift`` / ``open_clip`` (test), ``fivecrop`` (TTE), ``lift_train`` (views).
    """
    if kind == "lift":
        steps = [f"Resize({size * 8 // 7})", f"CenterCrop({size})"]
        crops = 1
    elif kind == "open_clip":
        steps = [f"Resize({size})", f"CenterCrop({size})"]
        crops = 1
    elif kind == "fivecrop":
        steps = [f"Resize({size + TTE_EXPAND})", f"FiveCrop({size})"]
        crops = 5
    elif kind == "lift_train":
        steps = [f"RandomResizedCrop({size})", "RandomHorizontalFlip()"]
        crops = 1
    else:
        raise TransformError(f"unknown transform kind {kind!r}; valid: lift, open_clip, "
                             "fivecrop, lift_train")
    interp = interpolation or ("bicubic" if kind == "open_clip" else "bilinear")
    return {"kind": kind, "size": int(size), "steps": steps + ["ToTensor()", "Normalize"],
            "interpolation": interp, "mean": [float(m) for m in mean],
            "std": [float(s) for s in std], "crops": crops,
            "source": ("open_clip image_transform(is_train=False)" if kind == "open_clip"
                       else "shijxcs/LIFT trainer.py build_data_loader")}


def preprocess_cfg(loaded_backbone) -> dict:
    """The backbone's own preprocessing: ``dict(mean, std, size, interpolation)``.

    open_clip models carry ``visual.preprocess_cfg`` (the pretrained tag's mean/std and
    interpolation); timm models resolve theirs with ``resolve_model_data_config``. Anything
    else falls back to reading the ``Normalize``/``CenterCrop`` of its ``preprocess``.
    """
    spec, model = loaded_backbone.spec, loaded_backbone.model
    if spec.library == "timm":
        from timm.data import resolve_model_data_config

        cfg = resolve_model_data_config(model)
        return {"mean": tuple(cfg["mean"]), "std": tuple(cfg["std"]),
                "size": int(cfg["input_size"][-1]), "interpolation": str(cfg["interpolation"])}
    visual = getattr(model, "visual", None)
    pcfg = dict(getattr(visual, "preprocess_cfg", None) or {})
    out = {"mean": pcfg.get("mean"), "std": pcfg.get("std"), "size": pcfg.get("size"),
           "interpolation": pcfg.get("interpolation")}
    if out["size"] is None and visual is not None and hasattr(visual, "image_size"):
        out["size"] = visual.image_size
    for t in getattr(loaded_backbone.preprocess, "transforms", []):  # fallback
        name = type(t).__name__
        if name == "Normalize":
            out["mean"] = out["mean"] or tuple(t.mean)
            out["std"] = out["std"] or tuple(t.std)
        elif name == "CenterCrop" and out["size"] is None:
            out["size"] = t.size
        elif name == "Resize" and out["interpolation"] is None:
            out["interpolation"] = getattr(t.interpolation, "value", str(t.interpolation))
    size = out["size"]
    if isinstance(size, (tuple, list)):
        size = size[-1]
    return {"mean": tuple(out["mean"] or CLIP_MEAN), "std": tuple(out["std"] or CLIP_STD),
            "size": int(size or 224), "interpolation": str(out["interpolation"] or "bicubic")}
