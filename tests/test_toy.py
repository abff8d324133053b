"""The toy world's dataset: files on disk like a real dataset, the LT profile, names."""

import numpy as np
import pytest
from PIL import Image

from lt_bench.data import get_dataset
from lt_bench.data.splits import read_classnames, read_split
from lt_bench.data.toy import class_names, exponential_profile, long_tailed_counts, render
from lt_bench.pretrain import pretrain_prior


def test_exponential_profile_hand_values():
    # LIFT's int(max * IR^(-i/(K-1))): 500 -> 5 over 100 classes
    p = exponential_profile(100, 500, 100)
    assert p[0] == 500 and p[-1] == 5
    assert p[50] == int(500 * 100 ** (-50 / 99))
    assert (np.diff(p) <= 0).all()


def test_long_tailed_counts_are_a_permutation_of_the_profile():
    c = long_tailed_counts(20, 100, 10, order_seed=3)
    assert sorted(c.tolist()) == sorted(exponential_profile(20, 100, 10).tolist())
    assert c.tolist() != sorted(c.tolist(), reverse=True)  # shuffled class order


def test_class_names_read_as_text_and_are_unique():
    names = class_names(100)
    assert len(set(names)) == 100
    assert all(len(n.split()) == 3 for n in names)
    assert "red striped circle" in names


def test_render_is_deterministic_and_depends_on_class():
    a = render(np.array([0, 1]), np.random.default_rng(0), 10)
    b = render(np.array([0, 1]), np.random.default_rng(0), 10)
    assert a.shape == (2, 32, 32, 3) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, b)


def test_pretraining_priors_differ_between_backbones_and_sum_to_one():
    p0, p1 = pretrain_prior(30, 0, 100), pretrain_prior(30, 1, 100)
    assert p0.sum() == pytest.approx(1) and p1.sum() == pytest.approx(1)
    assert p0.max() / p0.min() == pytest.approx(100)
    assert np.argmax(p0) != np.argmax(p1)


def test_prepare_writes_a_dataset_like_a_real_one(tmp_path):
    ds = get_dataset("toy", num_classes=6, max_per_class=20, imbalance=10, val_per_class=2,
                     test_per_class=3, seed=1)
    ds.prepare(tmp_path)
    paths, labels = read_split(tmp_path / "train.txt")
    counts = np.bincount(labels, minlength=6)
    assert counts.tolist() == ds.train_counts().tolist()
    assert counts.max() == 20 and counts.min() == 2
    for split, per in (("val", 2), ("test", 3)):
        _, lab = read_split(tmp_path / f"{split}.txt")
        assert np.bincount(lab).tolist() == [per] * 6
    assert read_classnames(tmp_path / "classnames.txt") == class_names(6)
    with Image.open(tmp_path / paths[0]) as im:
        assert im.size == (32, 32) and im.mode == "RGB"


def test_unknown_toy_parameter_is_named():
    with pytest.raises(ValueError, match=r"unknown toy dataset parameter\(s\) \['num_class'\]"):
        get_dataset("toy", num_class=3)


# --- the regime knob (docs/architecture.md §5, "Two regimes") -------------------------------

def test_representation_regime_families_share_attributes_and_differ_by_a_word():
    from lt_bench.data.toy import FAMILY_SIZE, class_attributes, num_families

    k = 10
    attrs = class_attributes(k, "representation")
    names = class_names(k, "representation")
    fam = num_families(k)
    assert fam == -(-k // FAMILY_SIZE)
    # class c and c + fam share one (colour, texture, shape); a family has <= FAMILY_SIZE
    assert all(attrs[c] == attrs[c + fam] for c in range(k - fam))
    assert len(set(attrs)) == fam and attrs[0] != attrs[1]
    assert max(attrs.count(a) for a in attrs) == FAMILY_SIZE
    assert len(set(names)) == k
    for n, (c, t, s) in zip(names, attrs, strict=True):
        assert n.startswith(f"{c} {t} {s} ") and len(n.split()) == 4
    # the compositional regime is unchanged: unique triples, three words
    assert class_names(k) == [" ".join(a) for a in class_attributes(k)]


def test_every_representation_caption_fits_the_toy_text_context():
    import open_clip

    from lt_bench.backbones.spec import ensure_model_configs
    from lt_bench.data.toy import CAPTION_TEMPLATES, MAX_CLASSES

    ensure_model_configs()
    tok = open_clip.get_tokenizer("lt-toy-vit-p8")
    texts = [t.format(n) for n in class_names(MAX_CLASSES, "representation")
             for t in CAPTION_TEMPLATES]
    ids = tok(texts)
    # truncation would drop the end-of-text token (the text tower pools at it)
    assert (ids.argmax(1) == (ids != 0).sum(1) - 1).all()
    assert (ids.max(1).values == tok.eot_token_id).all()


def test_emblem_codes_are_unique_and_family_mates_differ_in_three_cells():
    from lt_bench.data.toy import GLYPH, MAX_CLASSES, emblem_codes, num_families

    codes = emblem_codes(MAX_CLASSES)
    assert codes.shape == (MAX_CLASSES, GLYPH * GLYPH)
    assert len({c.tobytes() for c in codes}) == MAX_CLASSES
    assert ((codes.sum(1) >= 3) & (codes.sum(1) <= 6)).all()
    fam = num_families(MAX_CLASSES)
    for a in range(MAX_CLASSES):
        for b in range(a + fam, MAX_CLASSES, fam):
            assert (codes[a] != codes[b]).sum() >= 3, (a, b)


def _read_glyphs(images, cx, cy, size):
    """The GLYPH x GLYPH cells at their centres (shape centres cx, cy): on / off / neither."""
    from lt_bench.data.toy import EMBLEM_HALF, GLYPH

    offsets = -EMBLEM_HALF + (np.arange(GLYPH) + 0.5) * 2 * EMBLEM_HALF / GLYPH
    px = np.floor((cx[:, None] + offsets[None] + 1) / 2 * size).astype(int)  # (n, GLYPH)
    py = np.floor((cy[:, None] + offsets[None] + 1) / 2 * size).astype(int)
    n = len(images)
    cells = images[np.arange(n)[:, None, None], py[:, :, None], px[:, None, :]]  # n,G,G,3
    dark, bright = cells.max(-1) < 60, cells.min(-1) > 195  # 20 / 235 +- noise (sd 10)
    return dark, bright


def test_representation_renders_carry_the_class_emblem_deterministically():
    """Every render of a class shows its emblem, read back from the shape centre the rng
    drew; two family mates (same colour, texture, shape) differ exactly by their codes."""
    from lt_bench.data.toy import GLYPH, class_attributes, emblem_codes, num_families

    k, size, n = 40, 32, 30
    fam = num_families(k)
    attrs = class_attributes(k, "representation")
    a, b = 3, 3 + fam
    assert attrs[a] == attrs[b]
    for c in (a, b):
        labels = np.full(n, c)
        images = render(labels, np.random.default_rng(5), k, size, "representation")
        np.testing.assert_array_equal(
            images, render(labels, np.random.default_rng(5), k, size, "representation"))
        cx, cy = np.random.default_rng(5).uniform(-0.3, 0.3, (2, n))  # render's first draw
        dark, bright = _read_glyphs(images, cx, cy, size)
        code = emblem_codes(k)[c].reshape(GLYPH, GLYPH)
        assert (dark == code[None]).all() and (bright == ~code[None]).all()
    ca, cb = emblem_codes(k)[a], emblem_codes(k)[b]
    assert (ca != cb).sum() >= 3
    # the compositional regime draws no emblem: no render of a class shows one
    comp = render(np.full(n, a), np.random.default_rng(5), k, size)
    cx, cy = np.random.default_rng(5).uniform(-0.3, 0.3, (2, n))
    dark, bright = _read_glyphs(comp, cx, cy, size)
    assert not (dark | bright).all(axis=(1, 2)).any()


def test_unknown_regime_is_named():
    from lt_bench.errors import UserError

    with pytest.raises(UserError, match=r"toy regime must be one of compositional, "
                                        r"representation; got 'rep'"):
        get_dataset("toy", regime="rep")
    with pytest.raises(UserError, match=r"one of compositional, representation; got 'x'"):
        render(np.array([0]), np.random.default_rng(0), 10, 32, "x")


def test_prepare_in_the_representation_regime_writes_its_names_and_regime(tmp_path):
    import json

    ds = get_dataset("toy", num_classes=6, max_per_class=4, imbalance=2, val_per_class=1,
                     test_per_class=1, seed=1, regime="representation")
    ds.prepare(tmp_path)
    assert read_classnames(tmp_path / "classnames.txt") == class_names(6, "representation")
    meta = json.loads((tmp_path / "toy_meta.json").read_text())
    assert meta["params"]["regime"] == "representation"
