"""``lt-bench compare A B`` on hand-made run folders whose test predictions are known: the
differences against a direct computation, the pairing of seeds and settings, the interval
against the paired bootstrap of the same arrays and a case whose interval is known by
hand, the variants form, and the forest plot."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from lt_bench.cli import main
from lt_bench.report.significance import paired_bootstrap
from lt_bench.runs.folder import write_logits

K, PER_CLASS = 4, 15
LABELS = np.repeat(np.arange(K), PER_CLASS)


def make_run(root: Path, ds: str, bb: str, method: str, seed: int, correct: np.ndarray,
             sha: str = "sha-test", hparams: dict | None = None) -> Path:
    """A finished run folder whose stored test logits get exactly ``correct`` right."""
    d = root / ds / bb / method / f"seed{seed}"
    d.mkdir(parents=True)
    pred = np.where(correct, LABELS, (LABELS + 1) % K)
    write_logits(LABELS, np.eye(K, dtype=np.float32)[pred], d / "logits_test.parquet")
    (d / "predictor.json").write_text(json.dumps({"kind": "stored"}))
    cfg = {"dataset": ds, "backbone": bb, "method": method, "seed": seed,
           "hparams": hparams or {}, "split_sha256": {"test": sha}}
    (d / "config.json").write_text(json.dumps(cfg))
    (d / "metrics.json").write_text(json.dumps({**cfg, "top1": float(correct.mean())}))
    return d


@pytest.fixture()
def two_folders(tmp_path):
    """Results folders A and B: toy × {bb0, bb1} × {ce, la} × seeds {0, 1}; B also has a
    method A lacks (knn) and A a dataset B lacks (other)."""
    rng = np.random.default_rng(0)
    truth = {}
    for side, p in (("A", 0.7), ("B", 0.55)):
        runs = tmp_path / side / "runs"
        for bb in ("bb0", "bb1"):
            for m in ("ce", "la"):
                for s in (0, 1):
                    c = rng.random(LABELS.size) < p + (0.1 if m == "la" else 0)
                    truth[(side, bb, m, s)] = c
                    make_run(runs, "toy", bb, m, s, c)
        extra = ("other", "bb0", "ce") if side == "A" else ("toy", "bb0", "knn")
        make_run(runs, *extra, 0, rng.random(LABELS.size) < 0.5)
    return tmp_path, truth


def test_compare_two_result_folders_against_a_direct_computation(two_folders):
    root, truth = two_folders
    out = root / "cmp"
    assert main(["compare", str(root / "A"), str(root / "B"), "--n-boot", "400",
                 "--out-dir", str(out)]) == 0
    t = pd.read_csv(out / "compare.csv")
    # only the settings present in both: toy × {bb0, bb1} × {ce, la}
    assert sorted(zip(t["backbone"], t["a_method"], strict=True)) == [
        ("bb0", "ce"), ("bb0", "la"), ("bb1", "ce"), ("bb1", "la")]
    assert (t["a_method"] == t["b_method"]).all() and (t["n_seeds"] == 2).all()
    for _, r in t.iterrows():
        a = np.stack([truth[("A", r["backbone"], r["a_method"], s)] for s in (0, 1)])
        b = np.stack([truth[("B", r["backbone"], r["a_method"], s)] for s in (0, 1)])
        # seed s of A paired with seed s of B: the seed-mean difference of top-1
        assert r["diff"] == pytest.approx(100 * (a.mean() - b.mean()), abs=1e-3)
        assert r["a_top1"] == pytest.approx(100 * a.mean(), abs=1e-3)
        ref = paired_bootstrap(LABELS, a, b, n_boot=400, seed=0)
        assert (r["lo"], r["hi"]) == pytest.approx((100 * ref["lo"], 100 * ref["hi"]),
                                                   abs=1e-3)
        assert r["significant"] == (r["lo"] > 0 or r["hi"] < 0)
        assert r["n_images"] == LABELS.size
    md = (out / "compare.md").read_text()
    r = t.iloc[0]
    assert f"| toy | {r['backbone']} |" in md
    assert f"{r['diff']:+.2f} [{r['lo']:+.2f}, {r['hi']:+.2f}]" in md
    img = Image.open(out / "compare.png").convert("L")
    assert img.size[1] > 200 and len(set(img.tobytes())) > 20  # a drawn figure
    assert (out / "compare.pdf").stat().st_size > 1000


def test_interval_known_by_hand(tmp_path):
    """Each class constant on both sides: every within-class resample gives the same
    difference, so the interval collapses onto it. A right on classes 0-2, B only on 0:
    Δ = 2/4 = +50 points exactly, [+50, +50]."""
    a = LABELS <= 2
    b = LABELS == 0
    make_run(tmp_path / "A", "toy", "bb0", "la", 0, a)
    make_run(tmp_path / "B", "toy", "bb0", "la", 0, b)
    assert main(["compare", str(tmp_path / "A"), str(tmp_path / "B"), "--n-boot", "200",
                 "--out-dir", str(tmp_path / "o")]) == 0
    (r,) = pd.read_csv(tmp_path / "o/compare.csv").to_dict("records")
    assert (r["diff"], r["lo"], r["hi"], r["significant"]) == (50.0, 50.0, 50.0, True)


def test_one_seed_side_pairs_with_every_seed_and_run_index_files(tmp_path):
    """A one-seed side with no seed in common with the other (a deterministic method) is
    paired with each seed of the other; a side may be a run index (one metrics.json per
    line, as the workflow writes for a suite)."""
    a0 = LABELS % 2 == 0
    bs = [LABELS % 3 == 0, LABELS % 5 == 0, LABELS % 4 == 1]
    make_run(tmp_path / "A", "toy", "bb0", "zero_shot", 7, a0)
    for s, c in enumerate(bs):
        make_run(tmp_path / "B", "toy", "bb0", "zero_shot", s, c)
    index = tmp_path / "index.txt"
    index.write_text("\n".join(str(p) for p in sorted((tmp_path / "B").rglob("metrics.json"))))
    assert main(["compare", str(tmp_path / "A"), str(index), "--n-boot", "100",
                 "--out-dir", str(tmp_path / "o")]) == 0
    (r,) = pd.read_csv(tmp_path / "o/compare.csv").to_dict("records")
    assert r["n_seeds"] == 3
    assert r["diff"] == pytest.approx(100 * np.mean([a0.mean() - c.mean() for c in bs]),
                                      abs=1e-3)


def test_two_variants_of_one_method(tmp_path):
    """--a-method/--b-method: two methods (or variants) of one folder, paired per backbone."""
    rng = np.random.default_rng(3)
    got = {}
    for bb in ("bb0", "bb1"):
        for m in ("ldam", "ldam_drw"):
            got[(bb, m)] = rng.random(LABELS.size) < (0.5 if m == "ldam" else 0.65)
            make_run(tmp_path / "R", "toy", bb, m, 0, got[(bb, m)])
    assert main(["compare", str(tmp_path / "R"), str(tmp_path / "R"), "--a-method",
                 "ldam_drw", "--b-method", "ldam", "--n-boot", "100", "--out-dir",
                 str(tmp_path / "o")]) == 0
    t = pd.read_csv(tmp_path / "o/compare.csv")
    assert list(t["backbone"]) == ["bb0", "bb1"]
    assert set(t["a_method"]) == {"ldam_drw"} and set(t["b_method"]) == {"ldam"}
    for _, r in t.iterrows():
        want = got[(r["backbone"], "ldam_drw")].mean() - got[(r["backbone"], "ldam")].mean()
        assert r["diff"] == pytest.approx(100 * want, abs=1e-3)
    assert "| toy | bb0 | ldam_drw vs LDAM |" in (tmp_path / "o/compare.md").read_text()
