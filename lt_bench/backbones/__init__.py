"""Backbone registry: real open_clip / timm models and the pipeline's toy CLIPs."""

from lt_bench.backbones.base import BACKBONES, BackboneSpec, LoadedBackbone, load_backbone

# Registration side effects.
from lt_bench.backbones import catalog  # noqa: E402,F401  isort: skip

__all__ = ["BACKBONES", "BackboneSpec", "LoadedBackbone", "load_backbone"]
