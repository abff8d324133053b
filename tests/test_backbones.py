"""The backbone catalog and the one loader, checked offline (no weights are downloaded).

Real architectures are built on the ``meta`` device (shapes only, no memory, no compute),
so the check that a registered name, tag, activation and feature dimension agree costs
well under a second per model.
"""

from __future__ import annotations

import os
import re

import numpy as np
import pytest
import torch

from lt_bench.backbones import BACKBONES, BackboneSpec, LoadedBackbone, load_backbone
from lt_bench.backbones.base import open_clip_tag_preprocess
from lt_bench.backbones.declared import resolve_spec
from lt_bench.backbones.prompts import class_text_embeddings, templates_for
from lt_bench.backbones.spec import ensure_model_configs

OPEN_CLIP_REAL = [n for n, s in BACKBONES.items() if s.library == "open_clip"]
TIMM = [n for n, s in BACKBONES.items() if s.library == "timm"]


def test_paper_backbones_are_the_three_vit_b16_clips_of_design():
    # the paper's backdoor ensemble (M = 3), listed once, in config.yaml's paper suite
    import yaml
    from conftest import REPO

    paper = yaml.safe_load((REPO / "config.yaml").read_text())["suites"]["paper"]["backbones"]
    got = {n: (BACKBONES.get(n).model, BACKBONES.get(n).pretrained) for n in paper}
    assert got == {
        "clip_vit_b16": ("ViT-B-16-quickgelu", "openai"),
        "openclip_vit_b16": ("ViT-B-16", "laion2b_s34b_b88k"),
        "metaclip_vit_b16": ("ViT-B-16-quickgelu", "metaclip_400m"),
    }
    assert {"clip_vit_l14", "openclip_vit_l14", "metaclip_vit_l14"} <= set(OPEN_CLIP_REAL)
    assert TIMM, "at least one non-CLIP (timm) backbone"


@pytest.mark.parametrize("name", OPEN_CLIP_REAL)
def test_open_clip_tag_exists_and_activation_matches_the_weights(name):
    import open_clip
    from open_clip.pretrained import get_pretrained_cfg

    spec = BACKBONES.get(name)
    assert (spec.model, spec.pretrained) in open_clip.list_pretrained()
    tag_quick_gelu = bool(get_pretrained_cfg(spec.model, spec.pretrained).get("quick_gelu"))
    model_quick_gelu = bool(open_clip.get_model_config(spec.model).get("quick_gelu"))
    assert model_quick_gelu == tag_quick_gelu, (
        f"{name}: weights trained with quick_gelu={tag_quick_gelu} but config "
        f"{spec.model} has quick_gelu={model_quick_gelu}")
    # OpenAI and MetaCLIP weights are QuickGELU, LAION OpenCLIP weights are GELU
    assert tag_quick_gelu == (spec.pretrained in ("openai", "metaclip_400m"))


@pytest.mark.parametrize("name", OPEN_CLIP_REAL)
def test_open_clip_architecture_output_dim_and_activation(name):
    import open_clip
    from open_clip.transformer import QuickGELU

    spec = BACKBONES.get(name)
    with torch.device("meta"):
        model = open_clip.create_model(spec.model, pretrained=None, device="meta")
        size = model.visual.image_size
        f = model.encode_image(torch.empty(1, 3, *size))
        t = model.encode_text(torch.zeros(1, model.context_length, dtype=torch.long))
        bb = LoadedBackbone(spec, model, None, None, None)
        cached = bb.encode_feature(torch.empty(1, 3, *size))
    assert f.shape[1] == t.shape[1] == spec.embed_dim
    # the stored feature is the pre-projection ln_post CLS token (LIFT's head input)
    assert bb.feature_kind() == "pre_projection"
    assert cached.shape[1] == model.visual.proj.shape[0] == spec.feature_dim
    assert model.visual.proj.shape[1] == spec.embed_dim
    act = type(model.visual.transformer.resblocks[0].mlp.gelu)
    assert (act is QuickGELU) == bool(open_clip.get_model_config(spec.model).get("quick_gelu"))


@pytest.mark.parametrize("name", TIMM)
def test_timm_name_exists_and_feature_dim(name):
    import timm

    spec = BACKBONES.get(name)
    assert spec.timm_name in timm.list_models(pretrained=True)
    assert not spec.has_text
    with torch.device("meta"):
        model = timm.create_model(spec.timm_name, pretrained=False, num_classes=0)
        f = model(torch.empty(1, 3, *model.pretrained_cfg["input_size"][1:]))
    assert f.shape[1] == model.num_features == spec.feature_dim


def test_tag_preprocessing_is_kept_for_a_local_checkpoint():
    # LAION ViT-L/14 weights expect mean 0.5, not open_clip's (OpenAI) default
    pp = open_clip_tag_preprocess("ViT-L-14", "laion2b_s32b_b82k")
    assert pp["image_mean"] == (0.5, 0.5, 0.5) and pp["image_std"] == (0.5, 0.5, 0.5)
    assert open_clip_tag_preprocess("ViT-B-16", "/path/to/file.pt") == {}


def test_unknown_backbone_lists_the_valid_names():
    with pytest.raises(KeyError, match="valid backbones: .*clip_vit_b16"):
        resolve_spec("no_such_backbone")


@pytest.fixture
def toy_checkpoint(tmp_path):
    import open_clip

    ensure_model_configs()
    torch.manual_seed(0)
    model = open_clip.create_model("lt-toy-vit-p8")
    path = tmp_path / "toy.pt"
    torch.save(model.state_dict(), path)
    return path, model.eval()


def _declared(path) -> str:
    from lt_bench.backbones.declared import declare_backbone

    return declare_backbone("my_toy_clip", {"library": "open_clip", "model": "lt-toy-vit-p8",
                                            "pretrained": str(path)})


def test_declared_open_clip_checkpoint_loads_the_same_weights(toy_checkpoint):
    path, ref = toy_checkpoint
    bb = load_backbone(_declared(path))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(bb.encode_image(x), ref.encode_image(x))
        # cached pre-projection feature @ stored projection == encode_image
        f = bb.encode_feature(x)
        torch.testing.assert_close(f @ torch.from_numpy(bb.projection()), ref.encode_image(x))
    assert bb.logit_scale == pytest.approx(float(ref.logit_scale.detach().exp()))
    with pytest.raises(FileNotFoundError, match="not found: .*missing.pt"):
        load_backbone(_declared(path.parent / "missing.pt"))


def test_toy_backbone_needs_its_checkpoint():
    with pytest.raises(ValueError, match="toy CLIP: pass its checkpoint"):
        load_backbone("toyclip0")


@pytest.fixture
def tiny_timm(monkeypatch):
    """A registered timm backbone with a tiny random architecture (timm's ``test_vit``)."""
    spec = BackboneSpec(name="tiny_timm", library="timm", model="test_vit", pretrained=None,
                        has_text=False, templates="none", feature_dim=64)
    monkeypatch.setitem(BACKBONES._entries, "tiny_timm", spec)
    return spec


def test_timm_loader_random_and_from_checkpoint(tiny_timm, tmp_path):
    import timm

    torch.manual_seed(0)
    ref = timm.create_model("test_vit", pretrained=False).eval()  # with its 1000-class head
    torch.save(ref.state_dict(), tmp_path / "w.pth")
    bb = load_backbone("tiny_timm", checkpoint=tmp_path / "w.pth")
    x = torch.randn(2, 3, 160, 160)
    with torch.no_grad():
        want = ref.forward_head(ref.forward_features(x), pre_logits=True)
        got = bb.encode_image(x)
    assert got.shape == (2, tiny_timm.feature_dim)
    torch.testing.assert_close(got, want)  # the head is dropped, the features are the file's
    assert bb.tokenizer is None and bb.logit_scale is None
    assert bb.feature_kind() == "timm_pooled" and bb.projection() is None
    torch.testing.assert_close(bb.encode_feature(x), want)
    assert not bb.model.training
    # the preprocessing is timm's eval transform of the architecture
    assert "CenterCrop(size=(160, 160))" in str(bb.preprocess)
    random = load_backbone("tiny_timm")  # pretrained=None: random weights, no download
    assert random.encode_image(x).shape == (2, 64)
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        load_backbone("tiny_timm", checkpoint=tmp_path / "nope.pth")


def test_imagenet_templates_are_clips_80():
    t = templates_for("imagenet")
    assert len(t) == 80 == len(set(t))
    assert all(s.count("{}") == 1 for s in t)
    assert "a bad photo of a {}." in t and "itap of a {}." in t
    with pytest.raises(ValueError, match="valid: imagenet80, imagenet, toy, single, classname"):
        templates_for("klingon")
    assert templates_for("single") == ("a photo of a {}.",)  # LIFT's head-init prompt


def test_text_embeddings_match_open_clips_zero_shot_classifier(toy_checkpoint):
    import open_clip
    from open_clip.zero_shot_classifier import build_zero_shot_classifier

    _, model = toy_checkpoint
    tok = open_clip.get_tokenizer("lt-toy-vit-p8")
    names = ["red striped circle", "blue dotted square", "green ring"]
    templates = templates_for("imagenet")
    # "_" becomes a space where text is built (LIFT, GLA): same embeddings as the clean name
    ours = class_text_embeddings(model, tok, [n.replace(" ", "_") for n in names], templates,
                                 batch_size=37)  # odd batches
    ref = build_zero_shot_classifier(model, tok, names, templates, num_classes_per_batch=2,
                                     use_tqdm=False).T
    np.testing.assert_allclose(ours.numpy(), ref.numpy(), atol=1e-5)
    np.testing.assert_allclose(ours.norm(dim=1).numpy(), 1.0, atol=1e-5)


def test_offline_download_failure_says_how_to_get_the_weights(tmp_path):
    """The real open_clip download, offline, into an empty Hugging Face cache: a
    WeightsUnavailableError (a UserError: the CLI prints it as one line, exit 2)."""
    import subprocess
    import sys

    code = ("from lt_bench.backbones import load_backbone\n"
            "from lt_bench.errors import WeightsUnavailableError\n"
            "try:\n    load_backbone('clip_vit_b16')\n"
            "except WeightsUnavailableError as e:\n    print('CAUGHT', e)\n")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"),
           "XDG_CACHE_HOME": str(tmp_path / "cache")}
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                       timeout=300, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert re.search(r"(?s)CAUGHT backbone 'clip_vit_b16'.*fetch-weights.*--checkpoint.*"
                     r"backbones:", r.stdout), r.stdout
