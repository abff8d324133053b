"""The toy CLIPs behave like real ones: useful zero-shot, and parameter imbalance.

Uses the session fixture ``small_toy_world`` (30 classes, one toy CLIP pre-trained for
a few minutes at most), so the thresholds are those the issue sets for the demo world.
"""

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image
from scipy.stats import spearmanr

from lt_bench.backbones import load_backbone
from lt_bench.data.splits import read_split
from lt_bench.features.store import read_features, read_text_embeddings
from lt_bench.prior import read_true_prior

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
    prior = read_true_prior(small_toy_world["backbone_dir"] / "prior.parquet")
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


def test_pretrain_json_records_the_ground_truths(small_toy_world):
    """The rho's in pretrain.json recompute from its own per-class numbers and the prior."""
    import json

    s = json.loads((small_toy_world["backbone_dir"] / "pretrain.json").read_text())
    prior = read_true_prior(small_toy_world["backbone_dir"] / "prior.parquet")
    probe = np.asarray(s["probe_per_class_accuracy"])
    assert len(probe) == len(prior) and s["probe_top1"] == pytest.approx(probe.mean())
    assert s["rho_probe_vs_prior"] == pytest.approx(spearmanr(probe, prior).statistic)
    acc = np.asarray(s["zero_shot_per_class_accuracy"])
    assert s["zero_shot_top1"] == pytest.approx(acc.mean())
    assert s["rho_acc_vs_prior"] == pytest.approx(spearmanr(acc, prior).statistic)
    assert s["rho_qhat_vs_prior"] == pytest.approx(spearmanr(s["q_hat"], prior).statistic)
    assert sum(s["q_hat"]) == pytest.approx(1.0) and s["regime"] == "compositional"


def test_the_toy_clips_prior_file_is_in_the_one_schema(small_toy_world):
    """prior.parquet of a toy CLIP: its true prior (the one it was pre-trained on) and GLA's
    q̂ (the one pretrain.json judges), read by the prior files' one reader."""
    import json

    from conftest import SMALL_PRETRAIN, SMALL_TOY

    from lt_bench.pretrain import PRETRAIN_DEFAULTS, pretrain_prior
    from lt_bench.prior import read_prior

    bb = small_toy_world["backbone_dir"]
    pf = read_prior(bb / "prior.parquet", SMALL_TOY["num_classes"], backbone="toyclip0")
    imbalance = {**PRETRAIN_DEFAULTS, **SMALL_PRETRAIN}["imbalance"]
    np.testing.assert_array_equal(pf.q_true,
                                  pretrain_prior(SMALL_TOY["num_classes"], 0, imbalance))
    s = json.loads((bb / "pretrain.json").read_text())
    np.testing.assert_array_equal(pf.q_hat, s["q_hat"])
    assert pf.temperature > 0 and pf.meta["backbone"] == "toyclip0"
    assert pf.meta["spearman"] == pytest.approx(s["rho_qhat_vs_prior"])


def test_linear_probe_ground_truth_on_a_hand_made_case():
    """Classes 2, 3 are separable; 0 and 1 have identical test features, so a probe's
    accuracy on them sums to one (every such test point gets one label for both)."""
    from lt_bench.pretrain.evaluate import linear_probe_accuracy, probe_vs_prior

    rng = np.random.default_rng(0)
    centres = np.array([[1.0, 0, 0], [1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0]])
    y_tr, y_te = np.repeat(np.arange(4), 30), np.repeat(np.arange(4), 25)
    x_tr = centres[y_tr] + 0.05 * rng.standard_normal((len(y_tr), 3))
    x_te = centres[y_te] + 0.05 * rng.standard_normal((len(y_te), 3))
    x_te[y_te == 1] = x_te[y_te == 0]
    acc = linear_probe_accuracy(torch.tensor(x_tr), torch.tensor(y_tr), torch.tensor(x_te),
                                torch.tensor(y_te), 4)
    assert acc[2] == acc[3] == 1.0
    assert acc[0] + acc[1] == pytest.approx(1.0)
    # rho against a prior: ranks by hand. prior ranks 1 2 3 4; acc (a, 1 - a, 1, 1)
    prior = np.array([0.05, 0.15, 0.3, 0.5])
    out = probe_vs_prior(x_tr, y_tr, x_te, y_te, prior)
    assert out["rho_probe_vs_prior"] == pytest.approx(spearmanr(acc, prior).statistic)
    assert out["probe_top1"] == pytest.approx(acc.mean()) == pytest.approx(0.75)
    if acc[0] < acc[1]:  # acc ranks 1, 2, 3.5, 3.5: Pearson of the ranks by hand
        r_acc, r_p = np.array([1, 2, 3.5, 3.5]), np.array([1, 2, 3, 4])
        hand = np.corrcoef(r_acc, r_p)[0, 1]
        assert out["rho_probe_vs_prior"] == pytest.approx(hand)


def test_one_template_step_gives_the_per_pair_loss_and_gradients(toy_clip):
    """Encoding each class caption of the step's template once, and gathering it for the
    pairs, gives the loss and gradients of encoding every pair's caption separately."""
    from lt_bench.data.toy import class_names
    from lt_bench.pretrain.model import (
        CaptionBank,
        compact_token_embedding,
        contrastive_loss,
    )

    model = toy_clip
    model.zero_grad()
    tok = open_clip.get_tokenizer("lt-toy-vit-p8")
    bank = CaptionBank(tok, class_names(6))
    x = torch.randn(12, 3, 32, 32)
    y = torch.tensor([0, 0, 1, 2, 2, 2, 3, 4, 5, 5, 1, 0])
    t = 3
    clip_loss = open_clip.ClipLoss()
    norm = torch.nn.functional.normalize
    img = norm(model.encode_image(x), dim=-1)
    pair_caps = tok([f"a drawing of a {class_names(6)[i]}." for i in y])  # template 3
    txt = norm(model.encode_text(pair_caps), dim=-1)
    cls = norm(model.encode_text(tok([f"a drawing of a {n}." for n in class_names(6)])), dim=-1)
    s = model.logit_scale.exp()
    ref = 0.5 * clip_loss(img, txt, s) + 0.5 * torch.nn.functional.cross_entropy(
        s * img @ cls.T, y)
    ref.backward()
    ref_emb = model.token_embedding.weight.grad.clone()
    ref_vis = model.visual.conv1.weight.grad.clone()
    model.zero_grad()
    with compact_token_embedding(model, bank.tokens):
        got = contrastive_loss(model, bank, x, y, t, 0.5, clip_loss)
        got.backward()
        used = torch.unique(bank.tokens)
        np.testing.assert_allclose(model.token_embedding.weight.grad.numpy(),
                                   ref_emb[used].numpy(), rtol=1e-4, atol=1e-5)
    assert got.item() == pytest.approx(ref.item(), rel=1e-5)
    np.testing.assert_allclose(model.visual.conv1.weight.grad.numpy(), ref_vis.numpy(),
                               rtol=1e-4, atol=1e-5)
    assert isinstance(model.token_embedding, torch.nn.Embedding)  # the full table is back
    model.zero_grad()


def test_bad_pretraining_inputs_are_named(tmp_path, capsys):
    from lt_bench.cli import main
    from lt_bench.errors import UserError
    from lt_bench.pretrain import pretrain_toy_clip

    with pytest.raises(UserError, match=r"toy regime must be one of compositional, "
                                        r"representation; got 'rep'"):
        pretrain_toy_clip(tmp_path, num_classes=4, index=0, regime="rep")
    with pytest.raises(UserError, match=r"unknown toy pre-training parameter\(s\) \['lrr'\]"):
        pretrain_toy_clip(tmp_path, num_classes=4, index=0, lrr=1)
    (tmp_path / "classnames.txt").write_text("a\nb\n")
    assert main(["pretrain", "toyclip0", "--dataset-dir", str(tmp_path),
                 "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "toy_meta.json not found" in err and "lt-bench prepare toy" in err
    assert not (tmp_path / "o").exists()
