"""The built-in backbones (one line each; add yours here or register from a plugin).

Every real entry is checked offline by tests/test_backbones.py: the open_clip tag exists
for its model config (``open_clip.list_pretrained()``), the activation matches the weights
(open_clip's pretrained cfg says ``quick_gelu: True`` for OpenAI and MetaCLIP weights, so
those use the ``-quickgelu`` configs; LAION OpenCLIP weights were trained with plain
GELU), the timm name is in ``timm.list_models(pretrained=True)``, ``feature_dim`` is the
dimension of the stored feature (the pre-projection ``ln_post`` CLS token of open_clip
ViTs, LIFT's head input) and ``embed_dim`` that of ``encode_image``/``encode_text``.
"""

from lt_bench.backbones.spec import BACKBONES, BackboneSpec

TOY_MODEL = "lt-toy-vit-p8"
MAX_TOY_BACKBONES = 6

# Toy CLIPs: identical architecture, each pre-trained on its own long-tailed class prior.
for _i in range(MAX_TOY_BACKBONES):
    BACKBONES.add(f"toyclip{_i}", BackboneSpec(
        name=f"toyclip{_i}", library="toy", model=TOY_MODEL, templates="toy", toy_index=_i,
        feature_dim=64, embed_dim=128,
        description=f"toy open_clip ViT (patch 8) pre-trained by the pipeline, prior order #{_i}"))

# The paper's three ViT-B/16 CLIPs (docs/architecture.md §1), then their ViT-L/14 counterparts.
# (name, open_clip model config, pretrained tag, feature dim, embed dim, description)
_REAL = [
    ("clip_vit_b16", "ViT-B-16-quickgelu", "openai", 768, 512, "OpenAI CLIP ViT-B/16 (WIT-400M)"),
    ("openclip_vit_b16", "ViT-B-16", "laion2b_s34b_b88k", 768, 512,
     "OpenCLIP ViT-B/16, LAION-2B"),
    ("metaclip_vit_b16", "ViT-B-16-quickgelu", "metaclip_400m", 768, 512,
     "MetaCLIP ViT-B/16, 400M curated pairs"),
    ("clip_vit_l14", "ViT-L-14-quickgelu", "openai", 1024, 768,
     "OpenAI CLIP ViT-L/14 (WIT-400M)"),
    ("openclip_vit_l14", "ViT-L-14", "laion2b_s32b_b82k", 1024, 768,
     "OpenCLIP ViT-L/14, LAION-2B"),
    ("metaclip_vit_l14", "ViT-L-14-quickgelu", "metaclip_400m", 1024, 768,
     "MetaCLIP ViT-L/14, 400M curated pairs"),
]
for _name, _model, _tag, _dim, _emb, _desc in _REAL:
    BACKBONES.add(_name, BackboneSpec(name=_name, library="open_clip", model=_model,
                                      pretrained=_tag, feature_dim=_dim, embed_dim=_emb,
                                      description=_desc))


# A non-CLIP backbone (LIFT's ImageNet-21k ViT-B/16): no text tower, so no zero-shot;
# heads start from class means of the train features.
BACKBONES.add("vit_b16_in21k", BackboneSpec(
    name="vit_b16_in21k", library="timm", model="vit_base_patch16_224",
    pretrained="augreg_in21k", has_text=False, templates="none", feature_dim=768,
    description="timm ViT-B/16 supervised on ImageNet-21k (non-CLIP)"))
