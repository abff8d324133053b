"""PEFT modules in open_clip's ViT: exact no-op at init, LIFT's placement, parameter counts."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from lt_bench.finetune.peft import (
    PEFT_KINDS,
    PeftConfigError,
    adaptformer_bottleneck,
    inject_peft,
    peft_parameter_count,
    pre_projection_features,
)


@pytest.fixture(scope="module")
def vit_b16_visual():
    """The real open_clip ViT-B/16 image tower, random weights (no download)."""
    import open_clip

    torch.manual_seed(0)
    return open_clip.create_model("ViT-B-16").visual.eval()


def _images(n=3, size=32, seed=1):
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize(("k", "layers", "expected"), [
    (1000, 12, 32),   # ImageNet-LT, ViT-B/16: log2(41.7) = 5.38 -> 2^5
    (365, 12, 8),     # Places-LT: log2(15.2) = 3.93 -> 2^3
    (8142, 12, 256),  # iNaturalist 2018: log2(339.25) = 8.41 -> 2^8
    (100, 12, 4),     # CIFAR-100-LT: log2(4.17) = 2.06 -> 2^2
    (30, 4, 2),       # the small toy world on the toy ViT: log2(3.75) = 1.91 -> 2^1
    (16, 4, 2),       # exactly 2^1: floor keeps it
    (10, 12, 1),      # K < 2L: max(0, .) -> 2^0
])
def test_bottleneck_formula(k, layers, expected):
    assert adaptformer_bottleneck(k, layers) == expected


def test_adaptformer_zero_up_reproduces_frozen_features_exactly(toy_clip):
    frozen = copy.deepcopy(toy_clip)
    tuned = copy.deepcopy(toy_clip)
    inject_peft(tuned.visual, "adaptformer", 30, seed=0)
    x = _images()
    with torch.no_grad():
        assert torch.equal(pre_projection_features(tuned.visual, x),
                           pre_projection_features(frozen.visual, x))
        assert torch.equal(tuned.encode_image(x), frozen.encode_image(x))
        # the module is live: a non-zero up projection changes the features
        tuned.visual.transformer.resblocks[1].peft.adaptformer.up.weight.normal_()
        assert not torch.allclose(tuned.encode_image(x), frozen.encode_image(x))


def test_adaptformer_sits_parallel_to_the_mlp_with_its_own_layernorm(toy_clip):
    model = copy.deepcopy(toy_clip)
    inject_peft(model.visual, "adaptformer", 30, seed=0)
    block = model.visual.transformer.resblocks[0]
    ada = block.peft.adaptformer
    with torch.no_grad():
        ada.up.weight.normal_(std=0.1)
        ada.up.bias.normal_(std=0.1)
        ada.ln.weight.normal_(1.0, 0.2)   # distinct from ln_2: shows which LN is used
        ada.scale.fill_(0.7)
    assert ada.ln is not block.ln_2
    width = model.visual.transformer.width
    x = torch.randn(2, 17, width)
    with torch.no_grad():
        h = x + block.attn(block.ln_1(x), block.ln_1(x), block.ln_1(x), need_weights=False)[0]
        mlp = block.mlp[2](F.gelu(block.mlp[0](block.ln_2(h))))
        z = F.layer_norm(h, (width,), ada.ln.weight, ada.ln.bias)
        adapter = 0.7 * (F.relu(z @ ada.down.weight.T + ada.down.bias) @ ada.up.weight.T
                         + ada.up.bias)
        expected = h + mlp + adapter
        assert torch.allclose(block(x), expected, atol=1e-5)


def test_only_peft_parameters_train(toy_clip):
    model = copy.deepcopy(toy_clip)
    before = {n: p.detach().clone() for n, p in model.visual.named_parameters()}
    params = inject_peft(model.visual, "adaptformer", 30, seed=0)
    trainable = [p for p in model.visual.parameters() if p.requires_grad]
    assert {id(p) for p in trainable} == {id(p) for p in params}
    opt = torch.optim.SGD(params, lr=0.5)
    # two steps: the zero `up` gets a gradient first, then `down` (ReLU path) does too
    for _ in range(2):
        opt.zero_grad()
        model.encode_image(_images()).square().sum().backward()
        opt.step()
    for n, p in model.visual.named_parameters():
        if n in before:
            assert torch.equal(p, before[n]), f"frozen parameter {n} changed"
    assert model.visual.transformer.resblocks[0].peft.adaptformer.up.weight.abs().sum() > 0


def test_vpt_deep_replaces_the_previous_blocks_prompts(toy_clip):
    model = copy.deepcopy(toy_clip)
    inject_peft(model.visual, "vpt", 30, vpt_length=10, seed=0)
    seen = []
    for blk in model.visual.transformer.resblocks:
        blk.register_forward_hook(lambda m, inp, out: seen.append((inp[0].shape, out.shape)))
    with torch.no_grad():
        model.encode_image(_images(n=2))
    seq = model.visual.positional_embedding.shape[0]  # 16 patches + CLS = 17
    w = model.visual.transformer.width
    assert seen[0] == (torch.Size([2, seq, w]), torch.Size([2, seq + 10, w]))
    for shape_in, shape_out in seen[1:]:  # each block drops 10 old prompts, adds 10 new
        assert shape_in[1] == seq + 10 and shape_out[1] == seq + 10
    # the CLS token stays at position 0: the tower's output is the pre-proj CLS feature
    assert pre_projection_features(model.visual, _images(n=2)).shape == (2, w)


def test_lora_matches_merged_query_value_weights(toy_clip):
    model = copy.deepcopy(toy_clip)
    frozen = copy.deepcopy(toy_clip)
    inject_peft(model.visual, "lora", 30, lora_rank=4, seed=0)
    x = _images()
    with torch.no_grad():  # B = 0: the frozen model (up to the attention kernel's rounding)
        assert torch.allclose(model.encode_image(x), frozen.encode_image(x), atol=1e-5)
    block, ref = model.visual.transformer.resblocks[2], frozen.visual.transformer.resblocks[2]
    lq, lv = block.peft.lora_q, block.peft.lora_v
    with torch.no_grad():
        lq.lora_b.normal_()
        lv.lora_b.normal_()
        # independent computation: fold x A B / r into nn.MultiheadAttention's in_proj
        d = block.attn.embed_dim
        ref.attn.in_proj_weight[:d] += (lq.lora_a @ lq.lora_b / 4).T
        ref.attn.in_proj_weight[2 * d:] += (lv.lora_a @ lv.lora_b / 4).T
        h = torch.randn(2, 17, d)
        assert torch.allclose(block(h), ref(h), atol=1e-4)
        assert not torch.allclose(block(h), frozen.visual.transformer.resblocks[3](h))


def test_vit_b16_trainable_counts_match_the_formulas(vit_b16_visual):
    d, layers, k = 768, 12, 1000
    b = 32  # the formula for K = 1000, L = 12 (test_bottleneck_formula)
    hand = {
        # LN (2D) + down (D b + b) + up (b D + D) + scale (1), per block
        "adaptformer": layers * (2 * d + d * b + b + b * d + d + 1),
        "vpt": layers * 10 * d,
        "lora": layers * 2 * (d * b + b * d),  # q and v, A (D x r) and B (r x D), r = b
    }
    for kind in PEFT_KINDS:
        visual = copy.deepcopy(vit_b16_visual)
        params = inject_peft(visual, kind, k)
        n = sum(p.numel() for p in params)
        assert n == hand[kind] == peft_parameter_count(kind, d, layers, k), kind
        assert n == sum(p.numel() for p in visual.parameters() if p.requires_grad)
        del visual
    # LIFT's "0.62M" for AdaptFormer on ViT-B/16, ImageNet-LT is the PEFT part alone: the
    # cosine head (K x D = 768,000) is not included.
    assert round(hand["adaptformer"] / 1e6, 2) == 0.62
    assert round((hand["adaptformer"] + k * d) / 1e6, 2) == 1.39


def test_vit_b16_adaptformer_is_exact_at_224(vit_b16_visual):
    visual = copy.deepcopy(vit_b16_visual)
    inject_peft(visual, "adaptformer", 1000, seed=0)
    x = _images(n=1, size=224)
    with torch.no_grad():
        assert torch.equal(visual(x), vit_b16_visual(x))


def test_bad_requests_are_refused_clearly(toy_clip):
    model = copy.deepcopy(toy_clip)
    with pytest.raises(PeftConfigError, match="unknown PEFT kind 'prefix'.*adaptformer, vpt, lora"):
        inject_peft(model.visual, "prefix", 30)
    with pytest.raises(PeftConfigError, match=r"unknown PEFT option\(s\) \['rank'\]"):
        inject_peft(model.visual, "lora", 30, rank=4)
    with pytest.raises(PeftConfigError, match="bottleneck must be a positive integer"):
        inject_peft(model.visual, "adaptformer", 30, bottleneck=0)
    with pytest.raises(PeftConfigError, match="expects an open_clip VisionTransformer"):
        inject_peft(torch.nn.Linear(2, 2), "vpt", 30)
    inject_peft(model.visual, "vpt", 30)
    with pytest.raises(PeftConfigError, match="already has PEFT modules"):
        inject_peft(model.visual, "adaptformer", 30)


def test_seeded_init_is_reproducible_and_leaves_the_global_generator(toy_clip):
    torch.manual_seed(123)
    expected_next = torch.rand(1)
    torch.manual_seed(123)
    a = inject_peft(copy.deepcopy(toy_clip).visual, "vpt", 30, seed=5)
    b = inject_peft(copy.deepcopy(toy_clip).visual, "vpt", 30, seed=5)
    assert all(torch.equal(p, q) for p, q in zip(a, b, strict=True))
    assert torch.equal(torch.rand(1), expected_next)
