"""The fine-tuning loop: accumulation, reproducible views, TTE, kill-and-resume, refusal of
another configuration's checkpoint, and a short fine-tune beating the frozen-feature head."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lt_bench.backbones import BACKBONES
from lt_bench.backbones.transforms import CLIP_MEAN, CLIP_STD
from lt_bench.finetune.loop import (
    FINETUNE_DEFAULTS,
    FinetuneConfigError,
    Trainer,
    finetune,
    resolve_hparams,
)

REPO = Path(__file__).resolve().parents[1]


def la_loss_for(labels):
    """A tiny logit-adjusted loss: CE(z + log prior, y) with the train prior."""
    counts = np.bincount(np.asarray(labels), minlength=int(max(labels)) + 1)
    adjust = torch.tensor(np.log(np.maximum(counts, 1) / counts.sum()), dtype=torch.float32)
    return lambda z, y, epoch: F.cross_entropy(z + adjust, y)




def _trainer(model, micro, batch=8, lr=0.05, k=5):
    from lt_bench.finetune.peft import CosineHead, inject_peft

    params = inject_peft(model.visual, "adaptformer", k, bottleneck=4, seed=0)
    head = CosineHead(torch.randn(k, model.visual.transformer.width, generator=torch.Generator().manual_seed(0)), 25.0)
    opt = torch.optim.SGD([{"params": params}, {"params": list(head.parameters())}], lr=lr,
                          momentum=0.9, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, 2)
    loss = lambda z, y, e: F.cross_entropy(z, y)  # noqa: E731
    return Trainer(model.visual, head, opt, sched, None, loss, "off", torch.device("cpu"),
                   batch, micro), params + [head.weight]


def test_micro_batches_give_the_same_steps_as_full_batches(toy_clip):
    g = torch.Generator().manual_seed(3)
    x, y = torch.randn(20, 3, 32, 32, generator=g), torch.randint(0, 5, (20,), generator=g)
    finals = {}
    for micro in (8, 4, 2):  # 20 images, batch 8: steps of 8, 8 and a partial 4
        tr, params = _trainer(copy.deepcopy(toy_clip), micro)
        batches = [(x[i:i + micro], y[i:i + micro]) for i in range(0, 20, micro)]
        tr.train_epoch(batches, 20, epoch=0)
        finals[micro] = [p.detach().clone() for p in params]
    # independent reference: three plain SGD steps on the mean loss of each full batch
    tr, params = _trainer(copy.deepcopy(toy_clip), 8)
    for i in (0, 8, 16):
        tr.optimizer.zero_grad()
        F.cross_entropy(tr.forward(x[i:i + 8]), y[i:i + 8]).backward()
        tr.optimizer.step()
    for micro in (8, 4, 2):
        for p, q in zip(finals[micro], params, strict=True):
            assert torch.allclose(p, q, atol=1e-5), micro


def test_tte_averages_the_crops_logits(toy_clip):
    tr, _ = _trainer(copy.deepcopy(toy_clip), 4)
    crops = torch.randn(3, 5, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    labels, logits = tr.predict([(crops, torch.tensor([0, 1, 2]))])
    with torch.no_grad():
        expected = torch.stack([tr.forward(crops[i]).mean(0) for i in range(3)])
    assert labels.tolist() == [0, 1, 2] and logits.dtype == np.float32
    assert np.allclose(logits, expected.numpy(), atol=1e-5)


def test_amp_auto_is_lifts_fp16_with_a_grad_scaler():
    # LIFT: prec "amp" = torch.cuda.amp.autocast() (float16) + GradScaler (trainer.py)
    from lt_bench.finetune.loop import make_grad_scaler, precision_record, resolve_amp

    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert resolve_amp("auto", cuda) == "fp16" and resolve_amp("auto", cpu) == "off"
    assert resolve_amp("bf16", cuda) == "bf16" and resolve_amp("bf16", cpu) == "bf16"
    with pytest.raises(FinetuneConfigError, match="'fp16' needs a CUDA device"):
        resolve_amp("fp16", cpu)
    assert isinstance(make_grad_scaler("fp16", cuda), torch.amp.GradScaler)
    assert make_grad_scaler("bf16", cuda) is None and make_grad_scaler("off", cpu) is None
    rec = precision_record("fp16", make_grad_scaler("fp16", cuda))
    assert rec["train_autocast"] == "float16" and rec["grad_scaler"] is True
    assert rec["head"] == rec["eval"] == "float32"
    assert precision_record("bf16", None)["train_autocast"] == "bfloat16"


def test_head_is_float32_under_cpu_bf16_autocast(toy_clip):
    """Under bf16 autocast the features are bf16-computed, but the head's logits equal a
    float32 recomputation from those features and the head; a head inside autocast would not."""
    tr, _ = _trainer(copy.deepcopy(toy_clip), 4, k=50)
    tr.amp = "bf16"
    x = torch.randn(16, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        feats = tr.features(x)
        z = tr.head_logits(feats)
        with torch.autocast("cpu", dtype=torch.bfloat16):  # an enclosing autocast too
            z_nested = tr.forward(x)
            z_inside = tr.head(feats)  # what LIFT's head computes under autocast
    assert feats.dtype == z.dtype == z_nested.dtype == torch.float32
    f, w = feats.numpy().astype(np.float64), tr.head.weight.detach().numpy().astype(np.float64)
    ref = 25.0 * (f / np.linalg.norm(f, axis=1, keepdims=True)) @ (
        w / np.linalg.norm(w, axis=1, keepdims=True)).T
    np.testing.assert_allclose(z.numpy(), ref, rtol=0, atol=2e-5)
    np.testing.assert_array_equal(z_nested.numpy(), z.numpy())
    assert z_inside.dtype == torch.bfloat16 and np.abs(z_inside.float().numpy() - ref).max() > 1e-3
    # eval runs the tower in float32 (LIFT's test() has no autocast)
    labels, ev, view = tr.embed([(x, torch.zeros(16, dtype=torch.long))])
    with torch.no_grad():
        fp32 = tr.features(x, amp="off").numpy()
    assert view == "centre" and np.array_equal(ev, fp32)


def test_epoch_order_depends_on_seed_and_epoch_only(tmp_path):
    from PIL import Image

    from lt_bench.backbones.transforms import lift_train_transform
    from lt_bench.finetune.images import EpochSampler, ImageItems, epoch_order

    a, sa = epoch_order(50, seed=1, epoch=3)
    b, sb = epoch_order(50, seed=1, epoch=3)
    assert np.array_equal(a, b) and np.array_equal(sa, sb)
    assert sorted(a.tolist()) == list(range(50))
    assert not np.array_equal(a, epoch_order(50, seed=1, epoch=4)[0])
    assert not np.array_equal(a, epoch_order(50, seed=2, epoch=3)[0])
    sampler = EpochSampler(50, seed=1)
    sampler.epoch = 3
    assert [i for i, _ in sampler] == a.tolist()

    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(tmp_path / "a.png")
    ds = ImageItems(tmp_path, [("a.png", 0)], lift_train_transform(32, CLIP_MEAN, CLIP_STD),
                    "train")
    torch.manual_seed(0)
    expected_next = torch.rand(1)
    torch.manual_seed(0)
    v1, v2, v3 = ds[(0, 11)][0], ds[(0, 11)][0], ds[(0, 12)][0]
    assert torch.equal(v1, v2) and not torch.equal(v1, v3)  # a view is a function of its seed
    assert torch.equal(torch.rand(1), expected_next)  # the global generator is left alone


def test_bad_hyperparameters_are_refused():
    with pytest.raises(FinetuneConfigError, match="micro_batch_size .48. must divide"):
        resolve_hparams({"micro_batch_size": 48})
    with pytest.raises(FinetuneConfigError, match=r"unknown fine-tuning option\(s\) \['lr_decay'\]"):
        resolve_hparams({"lr_decay": 0.1})
    with pytest.raises(FinetuneConfigError, match="finetune.peft must be one of"):
        resolve_hparams({"peft": "prompt"})
    with pytest.raises(FinetuneConfigError, match="finetune.amp must be one of"):
        resolve_hparams({"amp": "fp8"})
    with pytest.raises(FinetuneConfigError, match="crop_scale must be"):
        resolve_hparams({"crop_scale": [0.6, 0.5]})
    with pytest.raises(FinetuneConfigError, match="finetune.tte must be false, true or 'both'"):
        resolve_hparams({"tte": "yes"})
    assert resolve_hparams({"tte": "both"})["tte"] == "both"
    hp = resolve_hparams({})
    assert hp["micro_batch_size"] == hp["batch_size"] == 128
    assert json.loads(json.dumps(FINETUNE_DEFAULTS)) == FINETUNE_DEFAULTS  # JSON-able


# --- runs on the small toy world ---------------------------------------------------------

def _items(split_dir: Path, split: str, n: int | None = None, seed: int = 0):
    from lt_bench.data.splits import read_split

    paths, labels = read_split(split_dir / f"{split}.txt")
    rows = list(zip(paths, labels, strict=True))
    if n is not None and n < len(rows):
        keep = np.sort(np.random.default_rng(seed).choice(len(rows), n, replace=False))
        rows = [rows[i] for i in keep]
    return rows


def _head_init(bb, split_dir: Path) -> np.ndarray:
    """LIFT's text init on the pre-projection feature: normalize(text @ proj^T)."""
    from lt_bench.backbones.prompts import class_text_embeddings
    from lt_bench.data.splits import read_classnames
    from lt_bench.data.toy import CAPTION_TEMPLATES

    names = read_classnames(split_dir / "classnames.txt")
    text = class_text_embeddings(bb.model, bb.tokenizer, names, CAPTION_TEMPLATES)
    return F.normalize(text @ bb.model.visual.proj.detach().T, dim=-1).numpy()


RUN_SCRIPT = textwrap.dedent("""
    import json, os, signal, sys
    from pathlib import Path
    import numpy as np, torch
    torch.set_num_threads(1)
    sys.path.insert(0, {tests!r})
    from test_finetune import _head_init, _items, la_loss_for
    from lt_bench.backbones.base import load_backbone
    from lt_bench.backbones.transforms import CLIP_MEAN, CLIP_STD
    from lt_bench.finetune.loop import finetune
    split_dir, ckpt, work, out = map(Path, sys.argv[1:5])
    kill_in = int(os.environ.get("KILL_IN_EPOCH", "-1"))
    train = _items(split_dir, "train", 240)
    base_loss = la_loss_for([y for _, y in train])
    def loss(z, y, epoch):
        if epoch == kill_in:  # the epoch-1 checkpoint is on disk; die like a pre-empted job
            os.kill(os.getpid(), signal.SIGKILL)
        return base_loss(z, y, epoch)
    bb = load_backbone("toyclip0", ckpt)
    r = finetune(model=bb.model, train_items=train,
                 eval_items={{"val": _items(split_dir, "val", 60), "test": _items(split_dir, "test", 60)}},
                 image_root=split_dir, num_classes=len(set(y for _, y in _items(split_dir, "val"))),
                 head_init=_head_init(bb, split_dir), loss_fn=loss,
                 hparams={{"epochs": 3, "batch_size": 64, "micro_batch_size": 32,
                          "num_workers": int(os.environ.get("WORKERS", "0"))}},
                 seed=7, device="cpu", work_dir=work, mean=CLIP_MEAN, std=CLIP_STD, image_size=32)
    np.savez(out, **{{f"{{s}}_{{k}}": a for s, (y, z) in r.logits.items()
                    for k, a in (("labels", y), ("logits", z))}})
    (out.with_suffix(".json")).write_text(json.dumps({{"info": r.info, "history": r.history}}))
""")


def _run(world, work: Path, out: Path, **env) -> subprocess.CompletedProcess:
    script = work.parent / "run_finetune.py"
    script.write_text(RUN_SCRIPT.format(tests=str(REPO / "tests")))
    return subprocess.run(
        [sys.executable, str(script), str(world["split_dir"]),
         str(world["backbone_dir"] / "checkpoint.pt"), str(work), str(out)],
        env={**os.environ, "HF_HUB_OFFLINE": "1", **env}, capture_output=True, text=True,
        timeout=600)


def test_kill_and_resume_ends_with_the_uninterrupted_logits(small_toy_world, tmp_path):
    from lt_bench.finetune.state import CHECKPOINT_NAME

    full = _run(small_toy_world, tmp_path / "full", tmp_path / "full.npz")
    assert full.returncode == 0, full.stderr[-3000:]
    killed = _run(small_toy_world, tmp_path / "resumed", tmp_path / "resumed.npz",
                  KILL_IN_EPOCH="1", WORKERS="1")
    assert killed.returncode == -9, killed.stderr[-3000:]
    assert not (tmp_path / "resumed.npz").exists()
    ckpt = torch.load(tmp_path / "resumed" / CHECKPOINT_NAME, weights_only=True)
    assert ckpt["epoch"] == 1 and len(ckpt["history"]) == 1
    resumed = _run(small_toy_world, tmp_path / "resumed", tmp_path / "resumed.npz")
    assert resumed.returncode == 0, resumed.stderr[-3000:]

    a, b = np.load(tmp_path / "full.npz"), np.load(tmp_path / "resumed.npz")
    assert sorted(a.files) == sorted(b.files) == sorted(
        f"{s}_{k}" for s in ("val", "test") for k in ("labels", "logits"))
    for key in a.files:
        assert np.array_equal(a[key], b[key]), key
    ja = json.loads((tmp_path / "full.json").read_text())
    jb = json.loads((tmp_path / "resumed.json").read_text())
    assert ja["info"]["epochs_resumed_from"] == 0 and jb["info"]["epochs_resumed_from"] == 1
    strip = lambda h: [{k: r[k] for k in ("epoch", "train_loss", "val_top1", "lr")} for r in h]  # noqa: E731
    assert strip(ja["history"]) == strip(jb["history"]) and len(ja["history"]) == 3
    # val logits are the model's: its top-1 is the history's last val_top1
    assert ja["history"][-1]["val_top1"] == pytest.approx(
        float((a["val_logits"].argmax(1) == a["val_labels"]).mean()))


def _tiny_run(world, work: Path, **hparams):
    from lt_bench.backbones.base import load_backbone

    split_dir = world["split_dir"]
    bb = load_backbone("toyclip0", world["backbone_dir"] / "checkpoint.pt")
    train = _items(split_dir, "train", 64)
    k = len(set(y for _, y in _items(split_dir, "val")))
    return finetune(model=bb.model, train_items=train,
                    eval_items={"val": _items(split_dir, "val", 30)}, image_root=split_dir,
                    num_classes=k, head_init=_head_init(bb, split_dir),
                    loss_fn=la_loss_for([y for _, y in train]),
                    hparams={"epochs": 1, "batch_size": 32, **hparams}, seed=0, device="cpu",
                    work_dir=work, mean=CLIP_MEAN, std=CLIP_STD, image_size=32)


def test_result_contract_and_a_checkpoint_of_another_configuration(small_toy_world, tmp_path):
    from lt_bench.finetune.state import CheckpointMismatchError

    torch.set_num_threads(1)
    r = _tiny_run(small_toy_world, tmp_path, peft="vpt", vpt_length=3)
    y, z = r.logits["val"]
    assert y.dtype == np.int64 and z.dtype == np.float32 and z.shape == (30, 30)
    assert [h["epoch"] for h in r.history] == [1]
    assert set(r.history[0]) >= {"epoch", "train_loss", "val_top1", "lr", "seconds"}
    # 4 blocks x 3 prompts x the tower's width, plus the 30 x width head
    w = BACKBONES.get("toyclip0").feature_dim
    assert r.info["n_peft_params"] == 4 * 3 * w
    assert r.info["n_trainable_params"] == 4 * 3 * w + 30 * w
    assert sum(a.size for a in r.trainable.values()) == r.info["n_trainable_params"]
    assert r.trainable["head.weight"].shape == (30, w)
    assert r.info["peft"] == "vpt" and r.info["amp"] == "off" and r.info["device"] == "cpu"
    # a finished run's checkpoint resumes straight to evaluation, with the same logits
    again = _tiny_run(small_toy_world, tmp_path, peft="vpt", vpt_length=3, num_workers=1)
    assert again.info["epochs_resumed_from"] == 1
    assert np.array_equal(again.logits["val"][1], z)
    with pytest.raises(CheckpointMismatchError, match=r"another configuration.*hparams"):
        _tiny_run(small_toy_world, tmp_path, peft="vpt", vpt_length=3, lr=0.05)


def test_missing_image_names_the_file(small_toy_world, tmp_path):
    import shutil

    from lt_bench.finetune.images import FinetuneImageError

    root = tmp_path / "copy"
    shutil.copytree(small_toy_world["split_dir"], root)
    world = {**small_toy_world, "split_dir": root}
    victim = _items(root, "train", 64)[5][0]
    (root / victim).unlink()
    with pytest.raises(FinetuneImageError, match=f"cannot read image .*{victim} .missing"):
        _tiny_run(world, tmp_path / "work")


def _frozen_la_head_val(bb, world, head_init, train, val, epochs=10, lr=0.01, batch=128):
    """The frozen-feature LA head with the head track's recipe (LIFT: SGD 0.01, momentum
    0.9, wd 5e-4, cosine over epochs, batch 128, cosine head x25, text init) on the
    pre-projection features of the test-transform images."""
    from lt_bench.backbones.transforms import lift_test_transform
    from lt_bench.finetune.images import ImageItems
    from lt_bench.finetune.peft import CosineHead, pre_projection_features

    tf = lift_test_transform(32, CLIP_MEAN, CLIP_STD)

    def feats(items, split):
        ds = ImageItems(world["split_dir"], items, tf, split)
        x = torch.stack([ds[i][0] for i in range(len(ds))])
        with torch.no_grad():
            return pre_projection_features(bb.model.visual, x), torch.as_tensor(ds.labels)

    (ftr, ytr), (fva, yva) = feats(train, "train"), feats(val, "val")
    head = CosineHead(torch.from_numpy(head_init), 25.0)
    opt = torch.optim.SGD(head.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs)
    loss_fn = la_loss_for(ytr.tolist())
    g = torch.Generator().manual_seed(0)
    for e in range(epochs):
        perm = torch.randperm(len(ytr), generator=g)
        for i in range(0, len(perm), batch):
            b = perm[i:i + batch]
            opt.zero_grad()
            loss_fn(head(ftr[b]), ytr[b], e).backward()
            opt.step()
        sched.step()
    with torch.no_grad():
        return float((head(fva).argmax(1) == yva).float().mean())


#: 32 px toy images: LIFT's crops of down to 8% of the area lose the object too often (the
#: fine-tune then only ties the frozen head), so the toy run crops at least half the image
FT_TOY_HPARAMS = {"epochs": 10, "batch_size": 32, "crop_scale": [0.5, 1.0]}


@pytest.mark.slow  # ~1 min on 2 idle cores (10 epochs x 1,541 images), 12 min on a loaded box
def test_short_finetune_beats_the_frozen_feature_la_head(small_toy_world, tmp_path):
    from lt_bench.backbones.base import load_backbone

    torch.set_num_threads(2)
    split_dir = small_toy_world["split_dir"]
    ckpt = small_toy_world["backbone_dir"] / "checkpoint.pt"
    train, val = _items(split_dir, "train"), _items(split_dir, "val")
    bb = load_backbone("toyclip0", ckpt)
    head_init = _head_init(bb, split_dir)
    k = head_init.shape[0]
    frozen = _frozen_la_head_val(bb, small_toy_world, head_init, train, val)
    r = finetune(model=bb.model, train_items=train, eval_items={"val": val},
                 image_root=split_dir, num_classes=k, head_init=head_init,
                 loss_fn=la_loss_for([y for _, y in train]), hparams=FT_TOY_HPARAMS, seed=0,
                 device="cpu", work_dir=tmp_path, mean=CLIP_MEAN, std=CLIP_STD, image_size=32)
    y, z = r.logits["val"]
    tuned = float((z.argmax(1) == y).mean())
    print(f"val top-1: frozen LA head {frozen:.4f}, AdaptFormer-LA {tuned:.4f} "
          f"({r.info['train_seconds']:.1f} s training)")
    assert tuned > frozen
