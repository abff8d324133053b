"""Backbones declared in config.yaml's ``backbones:`` (lt_bench/backbones/declared.py): the
declaration's checks, the activation checks against open_clip's own pretrained table, the
weights pinned by a declared sha256, and the flow into the plan, the config checks and the
smoke run."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch
import yaml
from conftest import REPO, save_random_toy_checkpoint

from lt_bench.backbones import BACKBONES, load_backbone
from lt_bench.backbones.base import open_clip_tag_preprocess
from lt_bench.backbones.declared import (
    BackboneDeclarationError,
    check_architecture,
    declare_backbone,
    resolve_spec,
    spec_from_declaration,
)
from lt_bench.backbones.weights import WeightsError, fetch_weights, read_lock
from lt_bench.config import ConfigError, resolve_suite
from lt_bench.plan import Plan
from lt_bench.smoke import smoke_config

TOY = {"library": "open_clip", "model": "lt-toy-vit-p8"}


@pytest.fixture(scope="module")
def toy_file(tmp_path_factory) -> Path:
    """A user's checkpoint: the toy architecture with random weights, saved as a state dict."""
    return save_random_toy_checkpoint(tmp_path_factory.mktemp("decl") / "my_clip.pt")


def test_a_declaration_becomes_a_spec():
    spec = spec_from_declaration("my_clip", {"library": "open_clip", "model": "ViT-L-14",
                                             "pretrained": "/models/my_clip.pt",
                                             "sha256": "AB" * 32,
                                             "finetuned_from": "laion2b_s32b_b82k"})
    assert (spec.library, spec.model, spec.pretrained) == ("open_clip", "ViT-L-14",
                                                           "/models/my_clip.pt")
    assert spec.has_text and spec.templates == "imagenet" and spec.sha256 == "ab" * 32
    # preprocessing follows the weights: the tag the file descends from (LAION: mean 0.5)
    assert spec.preprocess_tag == "laion2b_s32b_b82k"
    assert open_clip_tag_preprocess(spec.model, spec.preprocess_tag)["image_mean"] == \
        (0.5, 0.5, 0.5)
    bare = spec_from_declaration("b", {"library": "open_clip", "model": "ViT-B-16",
                                       "pretrained": "weights/x.safetensors"})
    assert bare.preprocess_tag is None  # a file alone: the model config's defaults
    vit = spec_from_declaration("my_vit", {"library": "timm", "model": "vit_base_patch16_224",
                                           "pretrained": "augreg_in21k"})
    assert not vit.has_text and vit.templates == "none"
    assert vit.timm_name == "vit_base_patch16_224.augreg_in21k"


@pytest.mark.parametrize("name,entry,says", [
    ("x", {"library": "open_clip", "model": "ViT-B-16"}, "backbones.x: pretrained is required"),
    ("x", {**TOY, "pretrained": "a.pt", "wieghts": 1}, "unknown key(s) wieghts; valid: library"),
    ("x", {"library": "toy", "model": "m", "pretrained": "a.pt"},
     "library 'toy' is not one of open_clip, timm"),
    ("x", {**TOY, "pretrained": "a.pt", "sha256": "abc"}, "sha256 'abc' is not 64 hexadecimal"),
    ("x", {**TOY, "pretrained": "openai", "finetuned_from": "openai"},
     "finetuned_from goes with a local file"),
    ("x", {"library": "timm", "model": "m", "pretrained": "t", "templates": "toy"},
     "open_clip only"),
    ("ensemble", {**TOY, "pretrained": "a.pt"}, "'ensemble' is not a usable backbone name"),
    ("a b", {**TOY, "pretrained": "a.pt"}, "'a b' is not a usable backbone name"),
    ("toyclip0", {**TOY, "pretrained": "a.pt"},
     "backbones.toyclip0: the name clashes with the built-in backbone 'toyclip0'"),
])
def test_a_bad_declaration_is_one_line_naming_the_key(name, entry, says):
    with pytest.raises(BackboneDeclarationError) as e:
        spec_from_declaration(name, entry)
    assert says in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("model,tag,says", [
    # OpenAI's weights were trained with QuickGELU (open_clip's cfg quick_gelu: True)
    ("ViT-B-16", "openai", "trained with QuickGELU but model config 'ViT-B-16' uses GELU "
                           "(the features would be silently wrong); use model ViT-B-16-quickgelu"),
    ("ViT-B-16", "metaclip_400m", "use model ViT-B-16-quickgelu"),
    # LAION-2B weights are published for the GELU config only
    ("ViT-B-16-quickgelu", "laion2b_s34b_b88k",
     "is published for open_clip model 'ViT-B-16' (trained with GELU), not "
     "'ViT-B-16-quickgelu' (QuickGELU); use model ViT-B-16"),
    ("ViT-B-16", "laion9000", "open_clip has no pretrained tag 'laion9000' for model "
                              "'ViT-B-16'; its tags: openai"),
    ("ViT-B-61", "openai", "open_clip has no model config 'ViT-B-61' (close: ViT-B-16"),
])
def test_a_detectable_activation_mismatch_is_refused(model, tag, says):
    from open_clip.pretrained import get_pretrained_cfg

    spec = spec_from_declaration("mine", {"library": "open_clip", "model": model,
                                          "pretrained": tag})
    with pytest.raises(BackboneDeclarationError, match=None) as e:
        check_architecture(spec)
    assert says in str(e.value), str(e.value)
    if "QuickGELU but" in says:  # independent of our message: the table says so
        assert get_pretrained_cfg(model, tag)["quick_gelu"] is True


def test_finetuned_from_is_checked_like_a_tag():
    spec = spec_from_declaration("mine", {"library": "open_clip", "model": "ViT-B-16",
                                          "pretrained": "/m/x.pt", "finetuned_from": "openai"})
    with pytest.raises(BackboneDeclarationError, match="finetuned_from|QuickGELU"):
        check_architecture(spec)
    ok = spec_from_declaration("mine", {"library": "open_clip", "model": "ViT-B-16-quickgelu",
                                        "pretrained": "/m/x.pt", "finetuned_from": "openai"})
    check_architecture(ok)


def test_every_built_in_passes_the_architecture_check():
    for _, spec in BACKBONES.items():
        if spec.library != "toy":
            check_architecture(spec)


def test_timm_tags_are_checked():
    check_architecture(spec_from_declaration("v", {"library": "timm",
                                                   "model": "vit_base_patch16_224",
                                                   "pretrained": "augreg_in21k"}))
    with pytest.raises(BackboneDeclarationError, match="timm has no pretrained tag 'nope'"):
        check_architecture(spec_from_declaration("v", {"library": "timm",
                                                       "model": "vit_base_patch16_224",
                                                       "pretrained": "nope"}))


def test_a_declared_file_loads_checked_against_its_sha256(toy_file):
    import open_clip

    want = hashlib.sha256(toy_file.read_bytes()).hexdigest()
    name = declare_backbone("decl_clip", {**TOY, "pretrained": str(toy_file), "sha256": want})
    bb = load_backbone(name)
    ref = open_clip.create_model("lt-toy-vit-p8", pretrained=str(toy_file)).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(bb.encode_image(x), ref.encode_image(x))
    assert BACKBONES.origin("decl_clip") == "config"
    declare_backbone("decl_clip", {**TOY, "pretrained": str(toy_file), "sha256": "0" * 64})
    with pytest.raises(WeightsError) as e:
        load_backbone("decl_clip")
    assert f"sha256 {want} differs from {'0' * 64} declared in config.yaml" in str(e.value)


def test_fetch_weights_pins_a_declared_file(toy_file, tmp_path):
    declared = {"mine": {**TOY, "pretrained": str(toy_file)}}
    lock = tmp_path / "weights.lock"
    fetch_weights(["mine", "toyclip0"], lock, download=False, declared=declared)
    entry = read_lock(lock)["mine"]
    assert entry.sha256 == hashlib.sha256(toy_file.read_bytes()).hexdigest()
    assert entry.source == "file" and Path(entry.file) == toy_file.resolve()
    declared["mine"]["sha256"] = "1" * 64
    with pytest.raises(WeightsError, match="differs from 1{64} declared"):
        fetch_weights(["mine"], tmp_path / "other.lock", download=False, declared=declared)
    assert not (tmp_path / "other.lock").exists()


def _config(**backbones) -> dict:
    cfg = yaml.safe_load((REPO / "tests/data/tiny_config.yaml").read_text())
    cfg["backbones"] = backbones
    cfg["suites"]["tiny"]["backbones"] = ["toyclip0", *backbones]
    return cfg


def test_the_plan_reads_declared_backbones_without_heavy_imports():
    cfg = _config(my_clip={**TOY, "pretrained": "models/my_clip.pt"},
                  my_vit={"library": "timm", "model": "vit_base_patch16_224",
                          "pretrained": "augreg_in21k"})
    plan = Plan(cfg)
    assert plan.suite.backbones == ["toyclip0", "my_clip", "my_vit"]
    assert not plan.is_toy_backbone("my_clip") and plan.has_text("my_clip")
    assert not plan.has_text("my_vit")
    assert plan.weights_file("my_clip") == "models/my_clip.pt"
    assert plan.weights_file("my_vit") is None and plan.weights_file("toyclip0") is None
    assert plan.backbone_declaration("my_clip") == cfg["backbones"]["my_clip"]
    assert plan.backbone_declaration("toyclip0") is None
    assert "my_clip" not in BACKBONES  # planning declares nothing process-wide
    runs = {b for _, b, _, _ in plan.per_backbone_runs()}
    assert runs == {"toyclip0", "my_clip", "my_vit"}


def test_config_errors_name_the_declaration():
    with pytest.raises(ConfigError, match="backbones.toyclip1: the name clashes with the "
                                          "built-in backbone"):
        resolve_suite(_config(toyclip1={**TOY, "pretrained": "a.pt"}))
    cfg = _config(my_clip={**TOY, "pretrained": "a.pt"})
    cfg["suites"]["tiny"]["backbones"].append("my_clipp")
    with pytest.raises(ConfigError, match="unknown backbone 'my_clipp'; valid backbones: .*"
                                          "my_clip"):
        resolve_suite(cfg)


def test_the_smoke_run_takes_declared_files_from_the_project(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = _config(my_clip={**TOY, "pretrained": "models/my_clip.pt"},
                  tagged={"library": "timm", "model": "vit_base_patch16_224",
                          "pretrained": "augreg_in21k"})
    smoke = smoke_config(cfg)
    assert smoke["backbones"]["my_clip"]["pretrained"] == str(tmp_path / "models/my_clip.pt")
    assert smoke["backbones"]["tagged"]["pretrained"] == "augreg_in21k"
    assert cfg["backbones"]["my_clip"]["pretrained"] == "models/my_clip.pt"  # untouched
    assert Plan(smoke).per_backbone_runs() == Plan(cfg).per_backbone_runs()


def test_resolve_spec_reads_the_declarations_then_the_registry():
    declared = {"mine": {**TOY, "pretrained": "a.pt"}}
    assert resolve_spec("toyclip0", declared) is BACKBONES.get("toyclip0")
    assert resolve_spec("mine", declared).pretrained == "a.pt"
    with pytest.raises(KeyError, match="unknown backbone 'mine'"):
        resolve_spec("mine")  # nothing declared in this process under that name
