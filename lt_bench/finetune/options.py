"""The fine-tuning recipe's options (lt_bench/finetune/loop.py has the loop): the defaults
(LIFT's), their validation, the test-time views, precision (autocast and the GradScaler)
and the image loader's workers."""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field
from typing import Any

from lt_bench.errors import InputValidationError, UserError

log = logging.getLogger(__name__)

#: the PEFT modules lt_bench.finetune.peft injects (here: checking a config imports no torch)
PEFT_KINDS = ("adaptformer", "vpt", "lora")
#: LIFT's recipe; every value is JSON-able (the run's config.yaml holds them)
FINETUNE_DEFAULTS: dict[str, Any] = {
    "peft": "adaptformer",   # one of PEFT_KINDS
    "bottleneck": None,      # AdaptFormer width; None = 2^max(0, floor(log2(K / 2L)))
    "vpt_length": 10,        # VPT-deep prompts per block
    "lora_rank": None,       # LoRA rank on q and v; None = the bottleneck formula (LIFT)
    "lr": 0.01,
    "momentum": 0.9,
    "weight_decay": 5e-4,
    "epochs": 10,            # LIFT uses 20 on iNaturalist 2018
    "batch_size": 128,       # effective batch of one optimiser step
    "micro_batch_size": None,  # None = batch_size; must divide batch_size
    "scale": 25.0,           # cosine head scale (LIFT utils/config.py)
    "amp": "auto",           # auto (fp16 + GradScaler on CUDA as LIFT, off on CPU) | bf16 | fp16 | off
    "num_workers": "auto",   # image-loader workers; auto = this job's CPU share on CUDA, 0 on CPU
    "crop_scale": [0.08, 1.0],  # RandomResizedCrop area range (torchvision's, as LIFT)
    # five-crop test-time ensembling of the final val/test logits: false (centre view),
    # true (five crops), both (both views stored from one fine-tuning; the run reports the
    # centre view, a `*_tte` run the five crops)
    "tte": False,
    "test_transform": "lift",  # lift: Resize(size*8//7)+CenterCrop; open_clip: Resize(size)+CenterCrop
    "eval_batch_size": 256,
    "val_every_epoch": True,   # val top-1 in the history after every epoch
}
#: knobs that change memory or speed, not the maths: a checkpoint resumes across them
NOT_FINGERPRINTED = ("num_workers", "micro_batch_size", "eval_batch_size", "val_every_epoch")
AMP_MODES = ("auto", "bf16", "fp16", "off")


class FinetuneConfigError(InputValidationError):
    """A fine-tuning hyper-parameter or input has a wrong value."""


class FinetuneDivergedError(UserError):
    """The training loss became NaN or infinite."""


@dataclass
class FinetuneResult:
    #: split -> (labels int64 (N,), logits float32 (N, K)) of the view the run reports
    #: (``tte`` true: the five crops), computed by the float32 head from ``features``
    logits: dict[str, tuple[Any, Any]]
    info: dict[str, Any]
    #: split -> view -> float32 (N, D): "centre" the pre-head feature of the test
    #: transform, "tte" the mean of the five crops' unit-normalised pre-head features
    features: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: one record per epoch: epoch (1-based), train_loss, val_top1 (None without val), lr, seconds
    history: list[dict] = field(default_factory=list)
    #: trained parameters by name ("visual.<...>" PEFT, "head.weight"), float32 arrays
    trainable: dict[str, Any] = field(default_factory=dict)


def _positive_int(hp: dict, key: str) -> int:
    v = hp[key]
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise FinetuneConfigError(f"finetune.{key} must be a positive integer, got {v!r}")
    return v


def resolve_hparams(hparams: dict[str, Any]) -> dict[str, Any]:
    """Defaults merged with ``hparams``; unknown keys and bad values are refused."""
    unknown = set(hparams) - set(FINETUNE_DEFAULTS)
    if unknown:
        raise FinetuneConfigError(f"unknown fine-tuning option(s) {sorted(unknown)}; "
                                  f"valid: {sorted(FINETUNE_DEFAULTS)}")
    hp = {**FINETUNE_DEFAULTS, **hparams}
    if hp["peft"] not in PEFT_KINDS:
        raise FinetuneConfigError(f"finetune.peft must be one of {list(PEFT_KINDS)}, "
                                  f"got {hp['peft']!r}")
    for key in ("epochs", "batch_size", "eval_batch_size"):
        _positive_int(hp, key)
    if hp["micro_batch_size"] is None:
        hp["micro_batch_size"] = hp["batch_size"]
    micro = _positive_int(hp, "micro_batch_size")
    if hp["batch_size"] % micro:
        raise FinetuneConfigError(
            f"finetune.micro_batch_size ({micro}) must divide batch_size ({hp['batch_size']}) "
            "so every optimiser step sees the same effective batch")
    for key, lo in (("lr", 0.0), ("momentum", 0.0), ("weight_decay", 0.0), ("scale", 0.0)):
        v = hp[key]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not v >= lo:
            raise FinetuneConfigError(f"finetune.{key} must be a number >= {lo}, got {v!r}")
    if hp["lr"] <= 0 or hp["scale"] <= 0:
        raise FinetuneConfigError("finetune.lr and finetune.scale must be > 0")
    if hp["amp"] is False:
        hp["amp"] = "off"
    if hp["amp"] not in AMP_MODES:
        raise FinetuneConfigError(f"finetune.amp must be one of {list(AMP_MODES)}, got {hp['amp']!r}")
    nw = hp["num_workers"]
    if nw != "auto" and (isinstance(nw, bool) or not isinstance(nw, int) or nw < 0):
        raise FinetuneConfigError(f"finetune.num_workers must be 'auto' or an integer >= 0, got {nw!r}")
    if hp["test_transform"] not in ("lift", "open_clip"):
        raise FinetuneConfigError(f"finetune.test_transform must be 'lift' or 'open_clip', "
                                  f"got {hp['test_transform']!r}")
    cs = hp["crop_scale"]
    if (not isinstance(cs, (list, tuple)) or len(cs) != 2
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in cs)
            or not 0 < cs[0] <= cs[1] <= 1):
        raise FinetuneConfigError(f"finetune.crop_scale must be [min, max] with "
                                  f"0 < min <= max <= 1, got {cs!r}")
    hp["crop_scale"] = [float(cs[0]), float(cs[1])]
    if not isinstance(hp["val_every_epoch"], bool):
        raise FinetuneConfigError(f"finetune.val_every_epoch must be true or false, got "
                                  f"{hp['val_every_epoch']!r}")
    if not (isinstance(hp["tte"], bool) or hp["tte"] == "both"):
        raise FinetuneConfigError(f"finetune.tte must be false, true or 'both', got {hp['tte']!r}")
    return hp


def tte_views(tte) -> tuple[str, ...]:
    """The eval views a fine-tuning computes for ``tte``: centre, tte, or both."""
    if tte == "both":
        return ("centre", "tte")
    return ("tte",) if tte is True else ("centre",)


def reported_view(tte) -> str:
    """The view a fine-tuned run's own metrics are from (``both``: the centre view)."""
    return "tte" if tte is True else "centre"


def resolve_amp(amp: str, device) -> str:
    """``bf16`` / ``fp16`` / ``off`` for this device. ``auto`` is LIFT's choice: fp16 (with a
    GradScaler) on CUDA, as ``prec: "amp"`` in LIFT's configs and ``trainer.py``; off on CPU."""
    if device.type != "cuda":
        if amp == "fp16":
            raise FinetuneConfigError("finetune.amp 'fp16' needs a CUDA device; use bf16 or off on CPU")
        return "bf16" if amp == "bf16" else "off"
    if amp == "auto":
        return "fp16"
    return amp


def make_grad_scaler(amp: str, device):
    """A ``GradScaler`` for fp16 (LIFT: ``GradScaler() if cfg.prec == "amp"``), else None:
    bf16 has float32's exponent range, so its gradients do not underflow."""
    import torch

    return torch.amp.GradScaler(device.type) if amp == "fp16" else None


def precision_record(amp: str, scaler) -> dict[str, Any]:
    """What a run's config.json records of its arithmetic (``precision``)."""
    return {"train_autocast": {"bf16": "bfloat16", "fp16": "float16"}.get(amp, "off"),
            "grad_scaler": scaler is not None, "head": "float32", "eval": "float32",
            "stored_features": "float16", "logits_from_stored": "float32"}


def resolve_workers(num_workers, device) -> int:
    if num_workers != "auto":
        return int(num_workers)
    if device.type == "cuda":
        from lt_bench.features.extract import auto_num_workers

        return auto_num_workers(cap=12)
    return 0  # on CPU the model needs every core; decoding inline costs less than workers


def autocast(amp: str, device):
    import torch

    if amp == "off":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if amp == "bf16" else torch.float16)
