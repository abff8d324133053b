"""``toyclip_example``: one more toy CLIP, pre-trained by the pipeline like lt-bench's own
(so the example runs offline), with its own long-tailed pre-training prior (order #7).

A plugin backbone is one ``BACKBONES.add`` line, as in lt_bench/backbones/catalog.py; a real
CLIP would be ``BackboneSpec(name=..., library="open_clip", model="ViT-B-16",
pretrained="<tag>")``. (A user's own checkpoint needs no plugin: declare it in config.yaml's
``backbones:``.)
"""

from lt_bench.backbones.base import BACKBONES, BackboneSpec
from lt_bench.backbones.catalog import TOY_MODEL

BACKBONES.add("toyclip_example", BackboneSpec(
    name="toyclip_example", library="toy", model=TOY_MODEL, templates="toy", toy_index=7,
    feature_dim=64, embed_dim=128,
    description="example plugin: toy open_clip ViT pre-trained by the pipeline, prior order #7"))
