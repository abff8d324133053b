"""Feature extraction: a tiny open_clip CLIP with random weights goes through exactly the
code path of the real backbones (a checkpoint declared as in config.yaml's ``backbones:``, no
network).

Checked: stored features are the pre-projection feature of LIFT's test transform and,
times the stored projection, reproduce ``model.encode_image`` (fp16 tolerance) in
split-list order; ``text.parquet`` + logit scale reproduce open_clip's zero-shot logits; results do
not depend on workers, batch or shard size; a killed extraction resumes without
re-encoding finished shards and ends with the file an uninterrupted run writes; a missing
or corrupt image fails with its path; stale shards are discarded; a timm backbone writes
features and a text file without embeddings.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from lt_bench.backbones import BACKBONES, BackboneSpec
from lt_bench.backbones.spec import ensure_model_configs
from lt_bench.features.encode import extract_split
from lt_bench.features.extract import extract_all
from lt_bench.features.images import ImageReadError
from lt_bench.features.shards import shard_dir_for
from lt_bench.features.store import read_features, read_meta, read_text_embeddings

MODEL = "lt-toy-vit-p8"


def local_declaration(checkpoint: Path) -> dict:
    """A user's checkpoint of the toy architecture, as config.yaml's ``backbones:`` entry."""
    return {"library": "open_clip", "model": MODEL, "pretrained": str(checkpoint)}


def local_backbone(checkpoint: Path, name: str = "my_clip") -> str:
    """That declaration registered in this process (as ``--backbone-spec`` does)."""
    from lt_bench.backbones.declared import declare_backbone

    return declare_backbone(name, local_declaration(checkpoint))
CLASSNAMES = ["red striped circle", "blue dotted square", "green plain ring",
              "yellow checkered cross", "purple striped triangle"]


def _jpeg(path: Path, rng: np.random.Generator) -> None:
    h, w = rng.integers(24, 72, size=2)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path, quality=90)


def make_split_dir(root: Path, sizes=(("train", 40), ("val", 10), ("test", 15)),
                   seed: int = 0) -> Path:
    """A dataset folder like `toy` writes: images + split lists + classnames.txt."""
    rng = np.random.default_rng(seed)
    for split, n in sizes:
        lines = []
        for i in range(n):
            y = int(rng.integers(0, len(CLASSNAMES)))
            rel = f"images/{split}/{y}/{i:04d}.jpg"
            _jpeg(root / rel, rng)
            lines.append(f"{rel} {y}\n")
        (root / f"{split}.txt").write_text("".join(lines))
    (root / "classnames.txt").write_text("".join(f"{c}\n" for c in CLASSNAMES))
    return root


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    import open_clip

    ensure_model_configs()
    torch.manual_seed(0)
    model = open_clip.create_model(MODEL)
    with torch.no_grad():  # a non-default logit scale, so the test sees it is carried over
        model.logit_scale.fill_(np.log(42.0))
    path = tmp_path_factory.mktemp("ckpt") / "tiny_clip.pt"
    torch.save(model.state_dict(), path)
    return path


@pytest.fixture(scope="module")
def split_dir(tmp_path_factory) -> Path:
    return make_split_dir(tmp_path_factory.mktemp("data") / "toy")


@pytest.fixture(scope="module")
def extracted(checkpoint, split_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("features")
    extract_all("toy", split_dir, split_dir, local_backbone(checkpoint), out,
                batch_size=8, num_workers=1, shard_size=10, device="cpu")
    return out


def _reference(checkpoint: Path, split_dir: Path, split: str):
    """open_clip alone: LIFT's test transform (Resize(32*8//7) + CenterCrop(32), CLIP mean
    and std, written out with PIL here), encode_image, fp32, one batch."""
    import open_clip

    model = open_clip.create_model(MODEL, pretrained=str(checkpoint)).eval()
    rows = [line.rsplit(" ", 1) for line in (split_dir / f"{split}.txt").read_text().splitlines()]
    mean = torch.tensor((0.48145466, 0.4578275, 0.40821073)).view(3, 1, 1)
    std = torch.tensor((0.26862954, 0.26130258, 0.27577711)).view(3, 1, 1)

    def lift(im):
        w, h = im.size
        s = 36  # 32 * 8 // 7, shorter side (int truncation as torchvision's Resize)
        im = im.resize((s, int(s * h / w)) if w <= h else (int(s * w / h), s),
                       Image.BILINEAR)
        w, h = im.size
        left, top = int(round((w - 32) / 2)), int(round((h - 32) / 2))
        x = torch.from_numpy(np.asarray(im.crop((left, top, left + 32, top + 32))).copy())
        return (x.permute(2, 0, 1).float() / 255 - mean) / std

    x = torch.stack([lift(Image.open(split_dir / p).convert("RGB")) for p, _ in rows])
    with torch.no_grad():
        feats = model.encode_image(x)
    return model, [p for p, _ in rows], np.array([int(y) for _, y in rows]), feats


def test_features_reproduce_encode_image_in_split_order(checkpoint, split_dir, extracted):
    proj = read_text_embeddings(extracted / "text.parquet").projection
    assert proj.shape == (64, 128)  # toy: width 64 -> embed 128
    for split in ("train", "val", "test"):
        _, paths, labels, want = _reference(checkpoint, split_dir, split)
        got = read_features(extracted / f"{split}.parquet")
        assert got.paths == paths and np.array_equal(got.labels, labels)
        assert got.meta["feature"] == "pre_projection" and got.crops is None
        want = want.numpy()
        tol = 5e-3 * np.abs(want).max()  # fp16 storage, then the projection
        np.testing.assert_allclose(got.features @ proj, want, rtol=5e-3, atol=tol)
        assert not np.array_equal(got.features, np.zeros_like(got.features))


def test_feature_file_schema_and_provenance(checkpoint, split_dir, extracted):
    path = extracted / "train.parquet"
    schema = pq.read_schema(path)
    assert schema.field("path").type == pa.string()
    assert schema.field("label").type == pa.int32()
    assert schema.field("feature").type == pa.list_(pa.float16(), 64)
    meta = read_meta(path)
    assert meta["backbone"] == "my_clip" and meta["dataset"] == "toy"
    assert meta["split"] == "train" and meta["rows"] == 40 and meta["dim"] == 64
    assert meta["dtype"] == "float16" and meta["weights"].startswith("sha256:")
    from lt_bench.io import sha256_file

    assert meta["split_sha256"] == sha256_file(split_dir / "train.txt")
    assert {"torch", "open_clip", "timm", "pyarrow"} <= set(meta["versions"])
    assert "Normalize" in meta["preprocessing"] and meta["amp"] is False
    assert meta["feature"] == "pre_projection" and meta["decode"] == "cpu"
    assert meta["transform"]["kind"] == "lift"
    assert meta["transform"]["steps"][:2] == ["Resize(36)", "CenterCrop(32)"]
    assert pq.ParquetFile(path).metadata.num_row_groups == 4  # one per shard of 10
    assert not shard_dir_for(path).exists()  # shards are gone once the job is done


def test_text_embeddings_and_logit_scale_reproduce_zero_shot_logits(checkpoint, split_dir,
                                                                      extracted):
    import open_clip
    from open_clip.zero_shot_classifier import build_zero_shot_classifier

    from lt_bench.backbones.prompts import templates_for

    model, _, _, img = _reference(checkpoint, split_dir, "test")
    text = read_text_embeddings(extracted / "text.parquet")
    assert text.classnames == CLASSNAMES
    assert text.logit_scale == pytest.approx(42.0, rel=1e-5)
    assert len(text.meta["templates"]) == 80
    assert text.meta["prompt_sets"] == {"zero_shot": "imagenet80", "head_init": "single"}
    weights = build_zero_shot_classifier(model, open_clip.get_tokenizer(MODEL), CLASSNAMES,
                                         templates_for("imagenet"), use_tqdm=False)
    np.testing.assert_allclose(text.embeddings, weights.T.numpy(), atol=1e-5)
    # open_clip's zero-shot logits vs the ones computed from the files
    want = (42.0 * torch.nn.functional.normalize(img, dim=-1) @ weights).numpy()
    got = text.zero_shot_logits(read_features(extracted / "test.parquet").features)
    np.testing.assert_allclose(got, want, atol=0.05)
    assert (got.argmax(1) == want.argmax(1)).mean() >= 0.9  # ties within fp16 may flip


def test_result_does_not_depend_on_workers_batches_or_shards(checkpoint, split_dir, extracted,
                                                             tmp_path):
    from lt_bench.backbones import load_backbone
    from lt_bench.backbones.transforms import lift_test_transform

    bb = load_backbone(local_backbone(checkpoint))
    tf = lift_test_transform(32)  # what extract_all used
    ref = read_features(extracted / "train.parquet")
    # same batches, other worker count: bit-identical
    out = tmp_path / "a.parquet"
    extract_split(bb, split_dir / "train.txt", split_dir, out, {}, batch_size=8,
                  num_workers=0, shard_size=10, transform=tf)
    assert np.array_equal(read_features(out).features, ref.features)
    # batches that do not divide the shards, more workers: same rows, same order
    out = tmp_path / "b.parquet"
    stats = extract_split(bb, split_dir / "train.txt", split_dir, out, {}, batch_size=3,
                          num_workers=2, shard_size=7, transform=tf)
    got = read_features(out)
    assert stats["encoded"] == 40 and got.paths == ref.paths
    np.testing.assert_allclose(got.features, ref.features, atol=2e-3 * np.abs(ref.features).max())


def test_missing_and_corrupt_images_are_named(checkpoint, tmp_path):
    from lt_bench.backbones import load_backbone

    d = make_split_dir(tmp_path / "bad", sizes=(("train", 12),))
    bb = load_backbone(local_backbone(checkpoint))
    paths = [line.split()[0] for line in (d / "train.txt").read_text().splitlines()]
    (d / paths[9]).write_bytes((d / paths[9]).read_bytes()[:200])  # truncated JPEG
    for workers in (0, 2):  # in the main process and re-raised from a worker
        with pytest.raises(ImageReadError) as err:
            extract_split(bb, d / "train.txt", d, tmp_path / "x.parquet", {}, batch_size=4,
                          num_workers=workers, shard_size=4)
        msg = str(err.value)
        assert msg.startswith(f"cannot read image {d / paths[9]} (unreadable; line 10 of")
        assert "Traceback" not in msg
    assert not (tmp_path / "x.parquet").exists()
    (d / paths[3]).unlink()
    with pytest.raises(ImageReadError, match=rf"cannot read image .*{paths[3]} \(missing; line 4"):
        extract_split(bb, d / "train.txt", d, tmp_path / "y.parquet", {}, batch_size=4,
                      num_workers=1, shard_size=4)


def test_stale_shards_are_discarded(checkpoint, split_dir, tmp_path, caplog):
    from lt_bench.backbones import load_backbone

    bb = load_backbone(local_backbone(checkpoint))
    out = tmp_path / "val.parquet"
    shards = shard_dir_for(out)
    shards.mkdir()
    (shards / "manifest.json").write_text(json.dumps({"split_sha256": "something else"}))
    (shards / "shard-00000.parquet").write_bytes(b"not from these inputs")
    with caplog.at_level("INFO", logger="lt_bench.features.shards"):
        stats = extract_split(bb, split_dir / "val.txt", split_dir, out, {}, batch_size=4,
                              num_workers=0, shard_size=4)
    assert "discarding shards made from different inputs" in caplog.text
    assert stats["encoded"] == 10 and read_meta(out)["rows"] == 10


def _cli(out: Path, split_dir: Path, checkpoint: Path, **popen) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "lt_bench.cli", "extract", "--dataset", "toy",
           "--split-dir", str(split_dir), "--backbone", "my_clip", "--backbone-spec",
           json.dumps(local_declaration(checkpoint)),
           "--out-dir", str(out), "--batch-size", "4", "--shard-size", "8",
           "--num-workers", "1", "--device", "cpu", "--threads", "1"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env, **popen)


def test_killed_extraction_resumes_without_re_encoding_finished_shards(checkpoint, tmp_path):
    d = make_split_dir(tmp_path / "toy", sizes=(("train", 40), ("val", 6), ("test", 6)),
                       seed=1)
    paths = [line.split()[0] for line in (d / "train.txt").read_text().splitlines()]
    # Row 20 (shard 2 of 5) is a FIFO: opening it blocks, so the job hangs right after
    # writing shards 0 and 1, and the test kills it there, as a node failure would.
    blocker = d / paths[20]
    saved = blocker.read_bytes()
    blocker.unlink()
    os.mkfifo(blocker)
    out = tmp_path / "features"
    proc = _cli(out, d, checkpoint, start_new_session=True)
    shard_dir = shard_dir_for(out / "train.parquet")
    deadline = time.monotonic() + 120
    while not (shard_dir / "shard-00001.parquet").exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the extraction never wrote its second shard"
        time.sleep(0.2)
    time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGKILL)  # the job and its loader worker
    proc.wait(timeout=30)
    assert sorted(p.name for p in shard_dir.glob("shard-*")) == [
        "shard-00000.parquet", "shard-00001.parquet"]
    assert not (out / "train.parquet").exists()  # nothing that reads as complete
    assert not list(out.glob("*.part")) and not list(shard_dir.glob(".*.part"))

    blocker.unlink()
    blocker.write_bytes(saved)
    proc = _cli(out, d, checkpoint)
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr
    assert "resuming: 2 of 5 shards (16 of 40 images) already encoded" in stderr
    # only the 24 images of shards 2-4 went through the model again
    assert json.loads(stdout.strip().splitlines()[-1])["train"]["encoded"] == 24
    assert not shard_dir.exists()  # removed once the whole job is done

    fresh = tmp_path / "fresh"
    proc = _cli(fresh, d, checkpoint)
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr
    for split in ("train", "val", "test"):
        a, b = pq.read_table(out / f"{split}.parquet"), pq.read_table(fresh / f"{split}.parquet")
        assert a.equals(b), split  # same rows, same order, bit-identical features


def test_timm_backbone_has_features_but_no_text_embeddings(split_dir, tmp_path, monkeypatch):
    spec = BackboneSpec(name="tiny_timm", library="timm", model="test_vit", pretrained=None,
                        has_text=False, templates="none", feature_dim=64)
    monkeypatch.setitem(BACKBONES._entries, "tiny_timm", spec)
    torch.manual_seed(0)
    extract_all("toy", split_dir, split_dir, "tiny_timm", tmp_path, batch_size=16,
                num_workers=0, device="cpu", splits=("val",))
    feats = read_features(tmp_path / "val.parquet")
    assert feats.features.shape == (10, 64)
    text = read_text_embeddings(tmp_path / "text.parquet")
    assert text.embeddings is None and text.logit_scale is None
    assert text.classnames == CLASSNAMES and text.meta["has_text"] is False


def test_auto_workers_share_the_cpus_among_the_gpus(monkeypatch):
    from lt_bench.features.extract import auto_num_workers

    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(32)))
    monkeypatch.setenv("LT_BENCH_FAKE_GPUS", "4")  # 4 jobs at once on a 4-GPU, 32-core box
    assert auto_num_workers() == 7
    monkeypatch.setenv("LT_BENCH_FAKE_GPUS", "0")  # CPU only: all but one, at most 16
    assert auto_num_workers() == 16
    monkeypatch.setenv("LT_BENCH_FAKE_GPUS", "8")  # SLURM: one GPU, 8 CPUs of its own
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "5")
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)))
    assert auto_num_workers() == 7
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0})
    assert auto_num_workers() == 1  # never zero: decoding stays off the model's thread
