"""The toy CLIPs behave like real ones: useful zero-shot, and parameter imbalance.

Uses the session fixture ``small_toy_world`` (30 classes, one toy CLIP pre-trained for
a few minutes at most), so the thresholds are those the issue sets for the demo world.
"""

import numpy as np
import open_clip
import pandas as pd
import pytest
import torch
from PIL import Image
from scipy.stats import spearmanr

from lt_bench.backbones import load_backbone
from lt_bench.data.splits import read_split
from lt_bench.features.store import read_features, read_text_embeddings

pytestmark = pytest.mark.slow


def zero_shot(world, split="test"):
    feats = read_features(world["features_dir"] / f"{split}.parquet")
    text = read_text_embeddings(world["features_dir"] / "text.parquet")
    # the cached feature is pre-projection (LIFT's head input): zero-shot maps it first
    return feats.labels, text.zero_shot_logits(feats.features)


def test_zero_shot_is_useful(small_toy_world):
    labels, logits = zero_shot(small_toy_world)
    top1 = (logits.argmax(1) == labels).mean()
    assert top1 >= 0.40, f"toy CLIP zero-shot top-1 {top1:.3f} < 0.40"


def test_parameter_imbalance_exists_by_construction(small_toy_world):
    labels, logits = zero_shot(small_toy_world)
    k = logits.shape[1]
    prior = pd.read_parquet(small_toy_world["backbone_dir"] / "prior.parquet")["prior"].to_numpy()
    acc = np.bincount(labels, weights=logits.argmax(1) == labels, minlength=k) / np.bincount(labels)
    rho_acc = spearmanr(acc, prior).statistic
    assert rho_acc >= 0.5, f"rho(per-class zero-shot accuracy, pre-training prior) = {rho_acc:.2f}"
    # The logits themselves carry the prior: on a balanced test set, the average predicted
    # probability of a class grows with its pre-training frequency.
    p = torch.softmax(torch.from_numpy(logits), dim=1).numpy().mean(0)
    rho_p = spearmanr(p, prior).statistic
    assert rho_p >= 0.5, f"rho(mean predicted probability, pre-training prior) = {rho_p:.2f}"


def test_stored_features_reproduce_open_clip(small_toy_world):
    """Features + text.parquet give open_clip's own encode_image (through the stored
    projection: the cached feature is the pre-projection CLS token) and zero-shot logits."""
    world = small_toy_world
    ckpt = world["backbone_dir"] / "checkpoint.pt"
    model, _, preprocess = open_clip.create_model_and_transforms("lt-toy-vit-p8",
                                                                 pretrained=str(ckpt))
    model.eval()
    paths, labels = read_split(world["split_dir"] / "test.txt")
    idx = np.arange(0, len(paths), max(1, len(paths) // 40))
    images = torch.stack([preprocess(Image.open(world["split_dir"] / paths[i]).convert("RGB"))
                          for i in idx])
    tok = open_clip.get_tokenizer("lt-toy-vit-p8")
    with torch.no_grad():
        ref = model.encode_image(images).numpy()
        text_ref = model.encode_text(tok(["a photo of a x."]))  # smoke: text tower loads
    assert text_ref.shape[1] == ref.shape[1]
    stored = read_features(world["features_dir"] / "test.parquet")
    assert [stored.paths[i] for i in idx] == [paths[i] for i in idx]
    text = read_text_embeddings(world["features_dir"] / "text.parquet")
    assert stored.meta["feature"] == "pre_projection"
    projected = stored.features[idx] @ text.projection
    np.testing.assert_allclose(projected, ref, rtol=2e-3, atol=4e-3 * np.abs(ref).max())

    assert text.logit_scale == pytest.approx(float(model.logit_scale.detach().exp()))
    f = torch.nn.functional.normalize(torch.from_numpy(ref), dim=-1)
    ref_logits = (text.logit_scale * f @ torch.from_numpy(text.embeddings).T).numpy()
    _, logits = zero_shot(world)
    np.testing.assert_allclose(logits[idx], ref_logits, atol=0.05)
    assert (logits[idx].argmax(1) == ref_logits.argmax(1)).mean() >= 0.97


def test_checkpoint_loads_through_the_registry(small_toy_world):
    bb = load_backbone("toyclip0", checkpoint=small_toy_world["backbone_dir"] / "checkpoint.pt")
    assert bb.spec.library == "toy" and bb.logit_scale > 1


def test_missing_checkpoint_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="checkpoint for backbone 'toyclip0' not found"):
        load_backbone("toyclip0", checkpoint=tmp_path / "nope.pt")
    with pytest.raises(ValueError, match="toy CLIP: pass its checkpoint"):
        load_backbone("toyclip0")
