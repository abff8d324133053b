"""The protocol options of extraction: config keys, CLI flags, and ``extract_all`` kwargs.

Light on purpose (no torch): the workflow imports it to build the rule's command line,
and the CLI to declare the flags. ``extract:`` keys and their flags:

=================  ======================  ==========  =======================================
config key         flag                    default     meaning
=================  ======================  ==========  =======================================
feature            ``--feature``           auto        auto: pre-projection for open_clip ViTs
test_transform     ``--test-transform``    auto        lift: Resize(S*8/7)+CenterCrop; open_clip; auto: lift, toy CLIPs open_clip
tte                ``--tte``               none        fivecrop: ``crops`` column on val/test; both: same, centre read by default
train_views        ``--train-views``       0           V augmented views -> train_views.parquet
view_seed          ``--view-seed``         0           seed of the views
decode             ``--decode``            cpu         gpu: batched nvJPEG (CPU fallback)
=================  ======================  ==========  =======================================

``prompts:`` -> ``--zero-shot-prompts`` (auto) and ``--head-init-prompts`` (single).
"""

from __future__ import annotations

EXTRACT_OPTIONS = {
    "feature": ("--feature", "auto", str),
    "test_transform": ("--test-transform", "auto", str),
    "tte": ("--tte", "none", str),
    "train_views": ("--train-views", 0, int),
    "view_seed": ("--view-seed", 0, int),
    "decode": ("--decode", "cpu", str),
}
PROMPT_OPTIONS = {
    "zero_shot": ("--zero-shot-prompts", "auto", str),
    "head_init": ("--head-init-prompts", "single", str),
}
CHOICES = {"feature": ("auto", "pre_projection", "encode_image"),
           "test_transform": ("auto", "lift", "open_clip"), "tte": ("none", "fivecrop", "both"),
           "decode": ("cpu", "gpu")}


def cli_flags(extract_cfg: dict | None, prompts_cfg: dict | None = None) -> list[str]:
    """The flags (argv) for the non-default options (so a default config yields ``[]``);
    the rule quotes them with ``{params.protocol:q}`` like every other value."""
    out = []
    for table, cfg in ((EXTRACT_OPTIONS, extract_cfg or {}), (PROMPT_OPTIONS, prompts_cfg or {})):
        for key, (flag, default, _) in table.items():
            if key in cfg and cfg[key] != default:
                out += [flag, str(cfg[key])]
    return out


def add_extract_arguments(parser) -> None:
    """Declare the protocol flags on an argparse (sub)parser."""
    for table in (EXTRACT_OPTIONS, PROMPT_OPTIONS):
        for key, (flag, default, typ) in table.items():
            parser.add_argument(flag, dest=f"opt_{key}", type=typ, default=default,
                                choices=CHOICES.get(key), help=f"(default: {default})")


def extract_kwargs(args) -> dict:
    """``extract_all`` keyword arguments from parsed flags."""
    kw = {key: getattr(args, f"opt_{key}") for key in EXTRACT_OPTIONS}
    kw["prompts"] = {key: getattr(args, f"opt_{key}") for key in PROMPT_OPTIONS}
    return kw
