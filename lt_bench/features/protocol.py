"""Which transforms extraction applies (LIFT's protocol, ``backbones/transforms.py``).

The size, mean and std are the backbone's own (:func:`preprocess_cfg`: 224 and OpenAI's
mean/std for the CLIP ViT-B/16s, 32 for the toy CLIPs, timm's config for timm models, as
LIFT uses CLIP's mean/std for CLIPs and 0.5/0.5 for its ImageNet-21k ViTs).
"""

from __future__ import annotations

from lt_bench.errors import UserError

TEST_TRANSFORMS = ("auto", "lift", "open_clip")


def resolve_test_transform(bb, test_transform: str) -> str:
    """``auto``: LIFT's for real backbones; the toy CLIPs' own (no crop) for toy CLIPs, which
    were pre-trained on whole 32-px renders — LIFT's Resize(36)+CenterCrop(32) cuts their
    border and the signal q̂ is estimated from (measured on the 30-class test world:
    ρ(q̂, true prior) 0.64 uncropped vs 0.50 cropped). A named deviation, docs/protocol.md."""
    if test_transform != "auto":
        return test_transform
    return "open_clip" if bb.spec.library == "toy" else "lift"
#: ``fivecrop``: the crops (runs read them by default); ``both``: the same columns, runs
#: read the centre view by default and the crops with ``view: fivecrop`` (eval_views.split_view)
TTE_MODES = ("none", "fivecrop", "both")


def eval_transforms(bb, test_transform: str = "lift", tte: str = "none"):
    """(transform, crops transform or None, their metadata) of the non-random splits."""
    from lt_bench.backbones.transforms import (
        five_crop_transform,
        lift_test_transform,
        transform_meta,
    )

    if test_transform not in TEST_TRANSFORMS:
        raise UserError(f"extract.test_transform {test_transform!r}: expected one of "
                        f"{', '.join(TEST_TRANSFORMS)}")
    test_transform = resolve_test_transform(bb, test_transform)
    if tte not in TTE_MODES:
        raise UserError(f"extract.tte {tte!r}: expected one of {', '.join(TTE_MODES)}")
    cfg = bb.preprocess_cfg()
    size, mean, std = cfg["size"], cfg["mean"], cfg["std"]
    # LIFT's kinds are bilinear (torchvision's default, trainer.py); open_clip's uses the
    # backbone's own interpolation
    interp = cfg["interpolation"] if test_transform == "open_clip" else "bilinear"
    if test_transform == "open_clip":  # the backbone's own eval transform, exactly
        tf = bb.preprocess
    else:
        tf = lift_test_transform(size, mean, std, kind=test_transform, interpolation=interp)
    info = {"test": transform_meta(test_transform, size, mean, std, interp)}
    crops = None
    if tte in ("fivecrop", "both"):  # one pass: both transforms of each decoded image
        crops = five_crop_transform(size, mean, std)
        info["tte"] = transform_meta("fivecrop", size, mean, std)
    return tf, crops, info



def device_transforms(info: dict):
    """The tensor twins (``features/decode.py``) of :func:`eval_transforms`' metadata."""
    from lt_bench.features.decode import tensor_transform

    t = info["test"]
    main = tensor_transform(t["kind"], t["size"], t["mean"], t["std"], t["interpolation"])
    crops = None
    if "tte" in info:
        c = info["tte"]
        crops = tensor_transform("fivecrop", c["size"], c["mean"], c["std"], c["interpolation"])
    return main, crops




def train_view_transform(bb):
    """LIFT's training view (RandomResizedCrop + flip) at the backbone's size/mean/std."""
    from lt_bench.backbones.transforms import lift_train_transform, transform_meta

    cfg = bb.preprocess_cfg()
    return (lift_train_transform(cfg["size"], cfg["mean"], cfg["std"]),
            transform_meta("lift_train", cfg["size"], cfg["mean"], cfg["std"]))
