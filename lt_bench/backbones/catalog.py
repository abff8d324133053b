"""The built-in backbones (one line each; add yours here or register from a plugin)."""

from lt_bench.backbones.base import BACKBONES, BackboneSpec

TOY_MODEL = "lt-toy-vit-p8"
MAX_TOY_BACKBONES = 6

# Toy CLIPs: identical architecture, each pre-trained on its own long-tailed class prior.
for _i in range(MAX_TOY_BACKBONES):
    BACKBONES.add(f"toyclip{_i}", BackboneSpec(
        name=f"toyclip{_i}", library="toy", model=TOY_MODEL, templates="toy", toy_index=_i,
        description=f"toy open_clip ViT (patch 8) pre-trained by the pipeline, prior order #{_i}"))

# The paper's three ViT-B/16 CLIPs (DESIGN §1). Activation matters: OpenAI and MetaCLIP
# weights were trained with QuickGELU, LAION-2B OpenCLIP with GELU.
_REAL = [
    ("clip_vit_b16", "ViT-B-16-quickgelu", "openai", "OpenAI CLIP ViT-B/16 (WIT-400M)"),
    ("openclip_vit_b16", "ViT-B-16", "laion2b_s34b_b88k", "OpenCLIP ViT-B/16, LAION-2B"),
    ("metaclip_vit_b16", "ViT-B-16-quickgelu", "metaclip_400m", "MetaCLIP ViT-B/16, 400M"),
    ("clip_vit_l14", "ViT-L-14-quickgelu", "openai", "OpenAI CLIP ViT-L/14"),
    ("openclip_vit_l14", "ViT-L-14", "laion2b_s32b_b82k", "OpenCLIP ViT-L/14, LAION-2B"),
    ("metaclip_vit_l14", "ViT-L-14-quickgelu", "metaclip_400m", "MetaCLIP ViT-L/14, 400M"),
]
for _name, _model, _tag, _desc in _REAL:
    BACKBONES.add(_name, BackboneSpec(name=_name, library="open_clip", model=_model,
                                      pretrained=_tag, description=_desc))

# A non-CLIP backbone: no text tower, so no zero-shot; heads start from class means.
BACKBONES.add("vit_b16_in21k", BackboneSpec(
    name="vit_b16_in21k", library="timm", model="vit_base_patch16_224.augreg_in21k",
    pretrained="augreg_in21k", has_text=False, templates="none",
    description="timm ViT-B/16 supervised on ImageNet-21k (non-CLIP)"))
