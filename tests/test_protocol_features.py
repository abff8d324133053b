"""LIFT's protocol in the feature stage (docs/protocol.md: head feature, zero-shot, prompts,
test transform, TTE, train views), device decoding and unreadable images.

Each check is against an independent computation: a forward hook on open_clip's
``ln_post``, open_clip's own ``encode_image``/``encode_text``, PIL resizing and cropping
written out by hand, and a second extraction with other workers/batches.
"""

from __future__ import annotations

import io
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
from test_extract import CLASSNAMES, MODEL, local_backbone, make_split_dir  # noqa: E402

from lt_bench.backbones import BackboneSpec, LoadedBackbone  # noqa: E402
from lt_bench.backbones.spec import ensure_model_configs  # noqa: E402
from lt_bench.errors import InputValidationError, UserError  # noqa: E402
from lt_bench.features.encode import extract_split  # noqa: E402
from lt_bench.features.extract import extract_all  # noqa: E402
from lt_bench.features.store import (  # noqa: E402
    NonFiniteFeatureError,
    TextEmbeddings,
    features_table,
    read_feature_views,
    read_features,
    read_text_embeddings,
    write_table,
    write_text_embeddings,
)

torch.set_num_threads(1)
PLACES_NAMES = ["airplane_cabin", "airport_terminal", "apartment_building-outdoor",
                "amusement_park", "alley"]  # from LIFT's datasets/Places_LT/classnames.txt


@pytest.fixture(scope="module")
def vit_b16(tmp_path_factory):
    """A random open_clip ViT-B-16 (no weights), its split of two 224x224-ish images."""
    import open_clip

    torch.manual_seed(0)
    model = open_clip.create_model("ViT-B-16", pretrained=None).eval()
    bb = LoadedBackbone(BackboneSpec("vit_b16_random", "open_clip", "ViT-B-16"), model, None,
                        open_clip.get_tokenizer("ViT-B-16"), None)
    d = tmp_path_factory.mktemp("b16")
    rng = np.random.default_rng(0)
    lines = []
    for i in range(2):
        Image.fromarray(rng.integers(0, 256, (240, 260, 3), dtype=np.uint8)).save(d / f"{i}.jpg")
        lines.append(f"{i}.jpg {i}\n")
    (d / "test.txt").write_text("".join(lines))
    return bb, d


def test_vit_b16_cached_feature_is_the_768d_ln_post_cls_token(vit_b16, tmp_path):
    from lt_bench.backbones.transforms import lift_test_transform
    from lt_bench.features.text import text_embeddings

    bb, d = vit_b16
    tf = lift_test_transform(224)
    extract_split(bb, d / "test.txt", d, tmp_path / "test.parquet", {}, batch_size=2,
                  num_workers=0, transform=tf, weights="random")
    got = read_features(tmp_path / "test.parquet")
    assert got.features.shape == (2, 768) and got.meta["feature"] == "pre_projection"
    x = torch.stack([tf(Image.open(d / f"{i}.jpg")) for i in range(2)])
    seen = {}
    hook = bb.model.visual.ln_post.register_forward_hook(lambda m, i, o: seen.update(o=o))
    try:
        with torch.no_grad():
            img = bb.model.encode_image(x)  # open_clip's projected embedding (512-d)
    finally:
        hook.remove()
    cls = seen["o"][:, 0].numpy()  # ln_post output, CLS token
    np.testing.assert_allclose(got.features, cls, atol=2e-3 * np.abs(cls).max())

    # zero-shot logits from the stored projection == open_clip's encode_image-based ones
    emb, init, meta = text_embeddings(bb, ["airplane_cabin", "alley"],
                                      {"zero_shot": "single"}, torch.device("cpu"))
    write_text_embeddings(tmp_path / "text.parquet", ["airplane_cabin", "alley"], emb,
                          meta, init_embeddings=init,
                          projection=bb.projection())
    text = read_text_embeddings(tmp_path / "text.parquet")
    assert text.projection.shape == (768, 512)
    with torch.no_grad():
        t = F.normalize(bb.model.encode_text(bb.tokenizer(["a photo of a airplane cabin.",
                                                           "a photo of a alley."])), dim=-1)
    assert text.logit_scale == pytest.approx(float(bb.model.logit_scale.detach().exp()))  # 1/0.07
    want = (text.logit_scale * F.normalize(img, dim=-1) @ t.T).numpy()
    np.testing.assert_allclose(text.zero_shot_logits(got.features), want, atol=0.05)
    # head init: normalize(normalize(t) @ P.T), LIFT trainer.py init_head_text_feat
    head = F.normalize(t @ bb.model.visual.proj.detach().T, dim=-1).numpy()
    assert text.head_init().shape == (2, 768)
    np.testing.assert_allclose(text.head_init(), head, atol=1e-5)


def test_head_init_and_zero_shot_formulas_by_hand():
    rng = np.random.default_rng(1)
    p = rng.normal(size=(6, 4)).astype(np.float32)
    t = rng.normal(size=(3, 4)).astype(np.float32)
    t /= np.linalg.norm(t, axis=1, keepdims=True)
    ti = rng.normal(size=(3, 4)).astype(np.float32) * 3  # not unit norm: normalised first
    f = rng.normal(size=(5, 6)).astype(np.float32)
    te = TextEmbeddings(["a", "b", "c"], t, {"logit_scale": 7.0}, ti, p)
    z = f @ p
    want = 7.0 * (z / np.linalg.norm(z, axis=1, keepdims=True)) @ t.T
    np.testing.assert_allclose(te.zero_shot_logits(f), want, rtol=1e-5, atol=1e-5)
    h = (ti / np.linalg.norm(ti, axis=1, keepdims=True)) @ p.T
    np.testing.assert_allclose(te.head_init(), h / np.linalg.norm(h, axis=1, keepdims=True),
                               rtol=1e-5, atol=1e-6)
    plain = TextEmbeddings(["a", "b", "c"], t, {"logit_scale": 7.0}, None, None)
    np.testing.assert_allclose(plain.head_init(), t, atol=1e-6)  # old files: the ensemble
    none = TextEmbeddings(["a"], None, {"backbone": "vit_in21k"})
    assert none.head_init() is None
    with pytest.raises(UserError, match="'vit_in21k' has no text tower"):
        none.zero_shot_logits(f)
    with pytest.raises(InputValidationError, match="dimension 4 do not match"):
        te.zero_shot_logits(f[:, :4])


def test_prompts_replace_underscores_and_report(tmp_path):
    import open_clip

    from lt_bench.backbones.prompts import prompts_report

    (tmp_path / "classnames.txt").write_text("".join(f"{n}\n" for n in PLACES_NAMES))
    rep = prompts_report("places_lt", tmp_path, "clip_vit_b16")
    assert rep["zero_shot"]["set"] == "imagenet80" and len(rep["zero_shot"]["templates"]) == 80
    assert rep["head_init"] == {"set": "single", "templates": ["a photo of a {}."]}
    c0 = rep["classes"][0]
    assert c0["classname"] == "airplane_cabin" and c0["head_init"] == [
        "a photo of a airplane cabin."]
    assert rep["classes"][2]["text_name"] == "apartment building-outdoor"  # LIFT keeps '-'
    prompts = [p for c in rep["classes"] for p in c["zero_shot"] + c["head_init"]]
    assert len(prompts) == 5 * 81 and not any("_" in p for p in prompts)
    # the tokenizer no longer sees an "_" token
    tok = open_clip.get_tokenizer("ViT-B-16")
    underscore = tok(["_"])[0][1].item()
    assert underscore not in tok(prompts).flatten().tolist()
    assert underscore in tok(["a photo of a airplane_cabin."]).flatten().tolist()
    toy = prompts_report("toy", tmp_path, "toyclip0")
    assert toy["zero_shot"]["set"] == "toy" and toy["head_init"]["set"] == "single"
    timm = prompts_report("toy", tmp_path, "vit_b16_in21k")
    assert timm["zero_shot"]["set"] is None and timm["classes"][0]["zero_shot"] is None
    with pytest.raises(UserError, match="valid: imagenet80"):
        prompts_report("toy", tmp_path, "toyclip0", {"head_init": "klingon"})
    with pytest.raises(UserError, match="classnames.txt not found"):
        prompts_report("toy", tmp_path / "nope", "toyclip0")


def test_transforms_match_lift():
    from lt_bench.backbones.transforms import (
        CLIP_MEAN,
        CLIP_STD,
        five_crop_transform,
        lift_test_transform,
        lift_train_transform,
        transform_meta,
    )

    rng = np.random.default_rng(0)
    im = Image.fromarray(rng.integers(0, 256, (375, 500, 3), dtype=np.uint8))
    mean, std = torch.tensor(CLIP_MEAN).view(3, 1, 1), torch.tensor(CLIP_STD).view(3, 1, 1)

    def norm(pil):
        return (torch.from_numpy(np.asarray(pil).copy()).permute(2, 0, 1) / 255 - mean) / std

    # Resize(256): shorter side 375 -> 256, 500 -> int(256 * 500 / 375) = 341; centre 224
    r = im.resize((341, 256), Image.BILINEAR)
    want = norm(r.crop((58, 16, 282, 240)))  # left = round((341-224)/2) = 58, top = 16
    torch.testing.assert_close(lift_test_transform(224)(im), want)
    # open_clip kind: Resize(224) bicubic, then the centre
    r = im.resize((298, 224), Image.BICUBIC)
    torch.testing.assert_close(lift_test_transform(224, kind="open_clip")(im),
                               norm(r.crop((37, 0, 261, 224))))
    # five-crop at Resize(248): 248 x 330; crops tl, tr, bl, br, centre
    crops = five_crop_transform(224)(im)
    assert crops.shape == (5, 3, 224, 224)
    r = im.resize((330, 248), Image.BILINEAR)
    torch.testing.assert_close(crops[0], norm(r.crop((0, 0, 224, 224))))
    torch.testing.assert_close(crops[3], norm(r.crop((106, 24, 330, 248))))
    torch.testing.assert_close(crops[4], norm(r.crop((53, 12, 277, 236))))
    tr = lift_train_transform(224)
    torch.manual_seed(3)
    a = tr(im)
    torch.manual_seed(3)
    assert a.shape == (3, 224, 224) and torch.equal(a, tr(im))
    assert not torch.equal(a, tr(im))  # random crops
    assert transform_meta("lift")["steps"][:2] == ["Resize(256)", "CenterCrop(224)"]
    assert transform_meta("fivecrop")["crops"] == 5
    with pytest.raises(ValueError, match="valid: lift, open_clip"):
        lift_test_transform(224, kind="squash")


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    import open_clip

    ensure_model_configs()
    torch.manual_seed(0)
    model = open_clip.create_model(MODEL)
    root = tmp_path_factory.mktemp("toy")
    torch.save(model.state_dict(), root / "c.pt")
    d = make_split_dir(root / "data", sizes=(("train", 12), ("val", 4), ("test", 6)))
    return local_backbone(root / "c.pt", "protocol_clip"), d, model.eval()


def test_tte_crops_and_train_views(toy, tmp_path):
    from lt_bench.backbones.transforms import five_crop_transform, lift_train_transform
    from lt_bench.features.images import view_seed
    from lt_bench.features.views import view_pass_seed

    name, d, model = toy
    out = tmp_path / "a"
    st = extract_all("toy", d, d, name, out, batch_size=4, num_workers=0, shard_size=5,
                     device="cpu", tte="fivecrop", train_views=2, view_seed=7)
    assert st["train_views"]["views"] == 2
    test, train = read_features(out / "test.parquet"), read_features(out / "train.parquet")
    assert train.crops is None and test.crops.shape == (6, 5, model.visual.transformer.width)
    assert test.meta["crops"] == 5 and test.meta["tte"]["steps"][:2] == ["Resize(56)",
                                                                          "FiveCrop(32)"]
    # crop 4 of row 2 is the centre crop of Resize(32+24), through the pre-projection feature
    img = Image.open(d / test.paths[2]).convert("RGB")
    bb = LoadedBackbone(BackboneSpec("t", "toy", MODEL), model, None, None, None)
    with torch.no_grad():
        ref = bb.encode_feature(five_crop_transform(32)(img)).numpy()
    np.testing.assert_allclose(test.crops[2], ref, atol=2e-3 * np.abs(ref).max())

    labels, views, meta = read_feature_views(out / "train_views.parquet")
    assert views.shape == (2, 12, model.visual.transformer.width) and np.array_equal(labels, train.labels)
    assert meta["views"] == 2 and meta["transform"]["kind"] == "lift_train"
    assert not np.allclose(views[0], views[1])  # two different random views
    # view v of row i is the seeded RandomResizedCrop + flip of that image
    img = Image.open(d / train.paths[5]).convert("RGB")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(view_seed(view_pass_seed(7, 1), 5))
        x = lift_train_transform(32)(img)
    with torch.no_grad():
        ref = bb.encode_feature(x[None]).numpy()[0]
    np.testing.assert_allclose(views[1, 5], ref, atol=2e-3 * np.abs(ref).max())
    # reproducible with the seed, whatever the workers and batches; another seed differs
    again = tmp_path / "b"
    extract_all("toy", d, d, name, again, batch_size=5, num_workers=2, shard_size=7,
                device="cpu", train_views=2, view_seed=7, splits=("train",))
    assert np.array_equal(read_feature_views(again / "train_views.parquet")[1], views)
    other = tmp_path / "c"
    extract_all("toy", d, d, name, other, batch_size=4, num_workers=0, device="cpu",
                train_views=1, view_seed=8, splits=("train",))
    assert not np.allclose(read_feature_views(other / "train_views.parquet")[1][0], views[0])


def test_non_finite_features_are_refused_when_written_and_read(toy, tmp_path):
    import open_clip

    name, d, model = toy
    bad = open_clip.create_model(MODEL).eval()
    bad.load_state_dict(model.state_dict())
    with torch.no_grad():
        bad.visual.ln_post.weight[3] = float("nan")
    bb = LoadedBackbone(BackboneSpec("broken_toy", "toy", MODEL), bad, None, None, None)
    from lt_bench.backbones.transforms import lift_test_transform

    with pytest.raises(NonFiniteFeatureError,
                       match=r"val.parquet: backbone 'broken_toy' .* row\(s\) \[0, 1, 2, 3\]"):
        extract_split(bb, d / "val.txt", d, tmp_path / "val.parquet", {}, batch_size=4,
                      num_workers=0, transform=lift_test_transform(32), weights="x")
    assert not (tmp_path / "val.parquet").exists()
    feats = np.ones((6, 3), dtype=np.float32)
    feats[4, 1] = np.inf
    write_table(features_table([f"{i}.jpg" for i in range(6)], np.zeros(6), feats, {}),
                tmp_path / "x.parquet")
    with pytest.raises(InputValidationError, match=r"x.parquet .*1 row\(s\).*\[4\]"):
        read_features(tmp_path / "x.parquet")


def _jpeg_bytes(arr, mode: str | None = None, **kw) -> bytes:
    buf = io.BytesIO()
    im = Image.fromarray(arr)
    (im.convert(mode) if mode else im).save(buf, **kw)
    return buf.getvalue()


def test_device_decode_falls_back_to_cpu_for_what_nvjpeg_refuses(toy, tmp_path):
    from lt_bench.features.decode import BatchDecoder, RawImageDataset, nvjpeg_refusal

    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)
    files = {
        "base.jpg": _jpeg_bytes(arr, format="JPEG", quality=90),
        "prog.jpg": _jpeg_bytes(arr, format="JPEG", quality=90, progressive=True),
        "cmyk.jpg": _jpeg_bytes(arr, "CMYK", format="JPEG"),
        "png.jpg": _jpeg_bytes(arr, format="PNG"),
        "gray.jpg": _jpeg_bytes(arr[..., 0], format="JPEG"),
    }
    want = {"base.jpg": None, "prog.jpg": "progressive", "cmyk.jpg": "cmyk",
            "png.jpg": "png", "gray.jpg": None}
    assert {k: nvjpeg_refusal(v) for k, v in files.items()} == want
    for k, v in files.items():
        (tmp_path / k).write_bytes(v)
    names = list(files)
    ds = RawImageDataset(tmp_path, names, np.zeros(len(names)))
    items = [ds[i] for i in range(len(names))]
    dec = BatchDecoder(torch.device("cpu"))
    out = dec([it[0] for it in items], [it[2] for it in items])
    assert dec.stats() == {"images": 5, "cpu_fallbacks": 3, "refused_by_header": 3,
                           "refused_by_decoder": 0}
    for k, img in zip(names, out, strict=True):
        ref = np.asarray(Image.open(tmp_path / k).convert("RGB")).transpose(2, 0, 1)
        assert img.shape == ref.shape and img.dtype == torch.uint8
        assert np.abs(img.numpy().astype(int) - ref).max() <= 2, k  # libjpeg IDCT rounding

    # the whole path through extraction, on the CPU ("gpu" itself needs CUDA)
    name, d, model = toy
    out_dir = tmp_path / "f"
    st = extract_all("toy", d, d, name, out_dir, batch_size=4, num_workers=1, device="cpu",
                     decode="torchvision", tte="fivecrop", splits=("test",))
    assert st["test"]["decode"]["images"] == 6
    got, ref = read_features(out_dir / "test.parquet"), None
    ref_dir = tmp_path / "ref"
    extract_all("toy", d, d, name, ref_dir, batch_size=4, num_workers=0, device="cpu",
                tte="fivecrop", splits=("test",))
    ref = read_features(ref_dir / "test.parquet")
    assert got.meta["decode"] == "torchvision" and got.crops.shape == ref.crops.shape
    scale = np.abs(ref.features).max()
    np.testing.assert_allclose(got.features, ref.features, atol=0.05 * scale)
    from lt_bench.backbones import load_backbone

    with pytest.raises(UserError, match="decode: gpu needs a CUDA device"):
        extract_split(load_backbone(name), d / "test.txt", d, tmp_path / "g.parquet", {},
                      decode="gpu", device="cpu")


def test_protocol_options_reach_the_command_only_when_not_default():
    from lt_bench.features.options import cli_flags

    assert cli_flags({"batch_size": 8, "tte": "none", "train_views": 0}, {"zero_shot": "auto"}) \
        == []
    assert cli_flags({"tte": "fivecrop", "train_views": 3, "decode": "gpu"},
                     {"head_init": "imagenet80"}) == (
        "--tte fivecrop --train-views 3 --decode gpu --head-init-prompts imagenet80".split())
    assert CLASSNAMES  # the toy world's names have no "_": nothing to clean there
