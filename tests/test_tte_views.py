"""Both test-time views of a features folder (``extract.tte: both``) and the ``view``
hyper-parameter of the features-consuming methods: a run reads, fits its knobs on and
reports the view it asks for ("fit on what is reported"; docs/protocol.md, TTE rows).

Every expectation is computed here by hand from the stored arrays (numpy), never taken
from the library's own output.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file
from synth_runs import FAST, make_features_dir

from lt_bench.features.eval_views import default_view, split_view
from lt_bench.features.store import (
    features_table,
    read_features,
    read_text_embeddings,
    write_table,
)
from lt_bench.methods._reuse import float_grid
from lt_bench.runs import run_logits, train_run


def _unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _tte_dir(plain: Path, out: Path, *, both: bool, seed: int = 11, spread: float = 1.5,
             ) -> Path:
    """``plain``'s folder with five crops on val/test (corners = shifted views, the centre
    crop last, torchvision's order); ``both`` records ``default_view: centre`` as
    ``extract.tte: both`` does, else it is a ``fivecrop`` extraction."""
    out.mkdir(parents=True)
    for f in ("train.parquet", "text.parquet"):
        shutil.copy(plain / f, out / f)
    rng = np.random.default_rng(seed)
    for split in ("val", "test"):
        s = read_features(plain / f"{split}.parquet")
        corners = s.features[:, None, :] + rng.normal(0, spread, (len(s), 4, s.features.shape[1]))
        crops = np.concatenate([corners, s.features[:, None, :]], 1).astype(np.float32)
        meta = {**s.meta, **({"default_view": "centre"} if both else {})}
        write_table(features_table(s.paths, s.labels, s.features, meta, crops=crops),
                    out / f"{split}.parquet")
    return out


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("tte_views")
    plain = make_features_dir(root / "none")
    return {"root": root, "none": plain,
            # the same images and crops, written as a fivecrop and as a both extraction
            "fivecrop": _tte_dir(plain, root / "fivecrop" / "toy" / "bb0", both=False),
            "both": _tte_dir(plain, root / "both" / "toy" / "bb0", both=True)}


def _fit(folders, tag, method, kind, **kw):
    out = folders["root"] / "runs" / tag
    train_run(method, folders[kind], out, seed=0, **kw)
    return out


def _weight(run):
    return load_file(str(run / "predictor.safetensors"))["term0.weight"].astype(np.float64)


def _cosine(w, scale, x, power=1.0):
    """``s · x̂ · (w / ‖w‖^p)ᵀ`` for (N, D) or (N, C, D) features."""
    return scale * _unit(x) @ (w / np.linalg.norm(w, axis=1, keepdims=True) ** power).T


def test_the_store_keeps_both_views_and_names_the_default(folders):
    plain, five = (read_features(folders[k] / "test.parquet") for k in ("none", "fivecrop"))
    both = read_features(folders["both"] / "test.parquet")
    # round trip: the centre column and the five crops (float16 storage) as written
    assert both.crops.shape == (len(plain), 5, plain.features.shape[1])
    np.testing.assert_array_equal(both.features, plain.features)
    np.testing.assert_array_equal(both.crops[:, 4], plain.features)  # the centre crop, last
    np.testing.assert_array_equal(both.crops, five.crops)
    assert [default_view(s) for s in (plain, five, both)] == ["centre", "fivecrop", "centre"]
    centre = split_view(both, "auto", folders["both"])
    assert centre.crops is None and centre.features is both.features  # shared, not copied
    assert split_view(both, "fivecrop", folders["both"]).crops is both.crops
    assert split_view(five, None, folders["fivecrop"]).crops is five.crops  # older runs
    assert split_view(five, "centre", folders["fivecrop"]).crops is None


def test_a_head_of_view_fivecrop_reads_the_crop_average(folders):
    """la on ``both`` features: view fivecrop reports s·ŵ·mean_c(x̂_c) (the crops' mean
    unit feature: the mean of the crops' logits), on val and test, through the run's
    metrics and the seam; view auto there reports the centre; the head is the same."""
    hp = {**FAST}
    r_five = _fit(folders, "la_five", "la", "both", hparams={**hp, "view": "fivecrop"})
    r_auto = _fit(folders, "la_auto", "la", "both", hparams=hp)
    w = _weight(r_five)
    np.testing.assert_array_equal(w, _weight(r_auto))  # train has one view: same head
    for split in ("val", "test"):
        s = read_features(folders["both"] / f"{split}.parquet")
        xbar = _unit(s.crops.astype(np.float64)).mean(1)  # mean of the unit crop features
        wn = w / np.linalg.norm(w, axis=1, keepdims=True)
        want = 25.0 * xbar @ wn.T
        labels, z = run_logits(r_five, split)
        np.testing.assert_allclose(z, want, rtol=1e-4, atol=1e-4)
        _, z_auto = run_logits(r_auto, split)
        np.testing.assert_allclose(z_auto, _cosine(w, 25.0, s.features), rtol=1e-4, atol=1e-4)
    metrics = json.loads((r_five / "metrics.json").read_text())
    assert metrics["top1"] == pytest.approx(float((want.argmax(1) == labels).mean()))
    assert metrics["inference_cost"] == 5.0  # five forward passes an image
    assert json.loads((r_auto / "metrics.json").read_text())["inference_cost"] == 1.0
    cfg = json.loads((r_five / "config.json").read_text())
    assert cfg["view"] == "fivecrop" and cfg["hparams"]["view"] == "fivecrop"
    assert json.loads((r_auto / "config.json").read_text())["view"] == "centre"


def test_five_crop_logits_go_a_row_block_of_images_at_a_time(folders, monkeypatch):
    """A linear head's crop logits (N·C × K float64 in one call: 8 GB at iNat2018's test)
    go a row block of images at a time into one float32 output: each call holds at most
    the block's crops, the result is the crops' mean of the one whole call (which the
    toy-sized split still makes: one block)."""
    import lt_bench.blocks
    from lt_bench.methods import _predictor
    from lt_bench.runs.predictors import load_run_predictor

    run = _fit(folders, "la_blocks", "la", "both", hparams={**FAST, "view": "fivecrop"})
    pred = load_run_predictor(run)
    split = split_view(read_features(folders["both"] / "test.parquet"), "fivecrop",
                       folders["both"])
    n, c, d = split.crops.shape
    k = pred.terms[0].weight.shape[0]
    whole = pred.logits(split.crops.reshape(n * c, d).astype(np.float32))
    whole = whole.reshape(n, c, k).mean(1)
    rows, logits = [], pred.logits
    monkeypatch.setattr(pred, "logits", lambda x: rows.append(len(x)) or logits(x))
    np.testing.assert_array_equal(_predictor.split_features_logits(pred, split), whole)
    assert rows == [n * c]  # the toy split: one block, the bits of one call
    rows.clear()
    monkeypatch.setattr(lt_bench.blocks, "CROP_BLOCK_ELEMENTS", 7 * c * k)  # 7 images a block
    blocked = _predictor.split_features_logits(pred, split)
    assert blocked.dtype == np.float32 and blocked.shape == (n, k)
    assert max(rows) == 7 * c and sum(rows) == n * c and len(rows) == -(-n // 7)
    np.testing.assert_allclose(blocked, whole, rtol=1e-6, atol=1e-5)
    np.testing.assert_array_equal(blocked.argmax(1), whole.argmax(1))


def test_numbers_are_unchanged_for_none_and_fivecrop(folders):
    """auto on a none extraction is the centre and on a fivecrop one the crops, as before
    views: the same runs on both's explicit views give bit-identical logits."""
    pairs = {"none": ("both", "centre"), "fivecrop": ("both", "fivecrop")}
    for kind, (kind2, view2) in pairs.items():
        a = _fit(folders, f"ce_{kind}", "ce", kind, hparams=FAST)
        b = _fit(folders, f"ce_{kind2}_{view2}", "ce", kind2, hparams={**FAST, "view": view2})
        for split in ("val", "test"):
            np.testing.assert_array_equal(run_logits(a, split)[1], run_logits(b, split)[1])
        assert json.loads((a / "config.json").read_text())["view"] == (
            "centre" if kind == "none" else "fivecrop")


def test_posthoc_tau_is_fitted_on_the_view_it_reports(folders):
    ce = _fit(folders, "ce_base", "ce", "both", hparams=FAST)
    w = _weight(ce)
    val = read_features(folders["both"] / "val.parquet")
    counts = np.bincount(read_features(folders["both"] / "train.parquet").labels)
    log_pi = np.log(counts / counts.sum())
    grid = float_grid(0.0, 2.0, 0.1)

    def best(z_of):
        scores = [float((z_of(t).argmax(1) == val.labels).mean()) for t in grid]
        ties = [t for t, s in zip(grid, scores, strict=True) if s == max(scores)]
        return min(ties, key=lambda t: abs(t - 1.0))

    want = {"centre": best(lambda t: _cosine(w, 25.0, val.features) - t * log_pi),
            "fivecrop": best(lambda t: _cosine(w, 25.0, val.crops).mean(1) - t * log_pi)}
    want_tn = {"centre": best(lambda t: _cosine(w, 25.0, val.features, t)),
               "fivecrop": best(lambda t: _cosine(w, 25.0, val.crops, t).mean(1))}
    for view in ("centre", "fivecrop"):
        for method, expect in (("la_posthoc", want), ("tau_norm", want_tn)):
            m = train_run(method, folders["both"], folders["root"] / "runs" / f"{method}_{view}",
                          0, hparams={"view": view}, base_runs={"ce": ce})
            assert m["info"]["tau"] == pytest.approx(expect[view]), (method, view)
    # the case discriminates: the views pick another τ for at least one knob
    assert (want["centre"], want_tn["centre"]) != (want["fivecrop"], want_tn["fivecrop"])


def _knn_votes(q, bank, bank_labels, k, t, num_classes):
    """Weighted cosine k-NN logits log(p + 1e-6), written out in numpy."""
    sims = _unit(q.astype(np.float64)) @ _unit(bank.astype(np.float64)).T
    order = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    s = np.take_along_axis(sims, order, 1)
    wts = np.exp((s - s[:, :1]) / t)
    votes = np.zeros((len(q), num_classes))
    for i in range(len(q)):
        np.add.at(votes[i], bank_labels[order[i]], wts[i])
    return np.log(votes / votes.sum(1, keepdims=True) + 1e-6)


def test_knn_tunes_k_on_the_five_crop_val(folders, tmp_path):
    """Features where the best k differs between the views: k-NN of view fivecrop picks
    the k whose crop-averaged val logits are best, view centre the centre's."""
    grid, t = [1, 3, 5, 10, 20, 50], 0.07
    train = read_features(folders["none"] / "train.parquet")
    k_classes = int(train.labels.max()) + 1

    def best_k(val, five):
        def acc(k):
            if five:
                n, c, d = val.crops.shape
                z = _knn_votes(val.crops.reshape(n * c, d), train.features, train.labels, k, t,
                               k_classes).reshape(n, c, -1).mean(1)
            else:
                z = _knn_votes(val.features, train.features, train.labels, k, t, k_classes)
            return float((z.argmax(1) == val.labels).mean())
        scores = [acc(k) for k in grid]
        ties = [k for k, s in zip(grid, scores, strict=True) if s == max(scores)]
        return min(ties, key=lambda k: abs(k - 10))

    # a crop noise where the views disagree on k (searched once, deterministically)
    for seed in range(40):
        fd = _tte_dir(folders["none"], tmp_path / f"s{seed}" / "toy" / "bb0", both=True,
                      seed=seed, spread=2.0)
        val = read_features(fd / "val.parquet")
        centre, five = best_k(val, False), best_k(val, True)
        if centre != five:
            break
    else:
        pytest.fail("no crop noise separates the views' best k")
    hp = {"k_grid": grid, "temperature": t}
    m = train_run("knn", fd, tmp_path / "knn_five", 0, hparams={**hp, "view": "fivecrop"})
    assert m["info"]["k"] == five
    m = train_run("knn", fd, tmp_path / "knn_centre", 0, hparams=hp)  # auto: centre
    assert m["info"]["k"] == centre
    # what the five-crop run reports is what k was tuned on: the crops' averaged votes
    labels, z = run_logits(tmp_path / "knn_five", "val")
    n, c, d = val.crops.shape
    want = _knn_votes(val.crops.reshape(n * c, d), train.features, train.labels, five, t,
                      k_classes).reshape(n, c, -1).mean(1)
    np.testing.assert_allclose(z, want, rtol=1e-4, atol=1e-4)


def test_the_val_bank_reads_the_centre_view(folders, tmp_path):
    """knn_authors answers val leave-one-out: it reads the centre view (its default),
    even on fivecrop features; bank val with view fivecrop is refused."""
    from lt_bench.errors import InputValidationError

    a = train_run("knn_authors", folders["fivecrop"], tmp_path / "ka", 0)
    b = train_run("knn_authors", folders["none"], tmp_path / "kb", 0)
    assert a["top1"] == b["top1"] and a["val_top1"] == b["val_top1"]
    with pytest.raises(InputValidationError, match="view: centre"):
        train_run("knn_authors", folders["fivecrop"], tmp_path / "kc", 0,
                  hparams={"view": "fivecrop"})
    with pytest.raises(InputValidationError, match="set view: centre"):
        train_run("knn", folders["fivecrop"], tmp_path / "kd", 0, hparams={"bank": "val"})


def test_prior_and_gla_use_the_view_reported(folders, tmp_path):
    """`lt-bench prior` on both views writes q̂ of each; gla of view fivecrop fits on the
    crops' q̂ and T, of view centre on the centre's; each equals GLA's estimate on that
    view's zero-shot logits computed here."""
    from lt_bench.prior import estimate_prior, prior_from_features, read_prior

    prior = tmp_path / "prior.parquet"
    prior_from_features(folders["both"], prior)
    pf = read_prior(prior)
    val = read_features(folders["both"] / "val.parquet")
    text = read_text_embeddings(folders["both"] / "text.parquet")

    def zs(x):
        return text.logit_scale * _unit(x.astype(np.float64)) @ text.embeddings.T

    q_c, t_c = estimate_prior(zs(val.features), val.labels)
    q_f, t_f = estimate_prior(zs(val.crops).mean(1), val.labels)
    assert pf.meta["view"] == "centre"
    np.testing.assert_allclose(pf.q_hat, q_c, rtol=1e-5)
    np.testing.assert_allclose(pf.views["fivecrop"][0], q_f, rtol=1e-5)
    assert pf.views["fivecrop"][1] == pytest.approx(t_f) and pf.temperature == pytest.approx(t_c)
    assert not np.allclose(q_c, q_f, rtol=1e-3)  # the views' estimates differ
    la = _fit(folders, "la_gla_base", "la", "both", hparams=FAST)
    for view, (q, t) in (("centre", (q_c, t_c)), ("fivecrop", (q_f, t_f))):
        out = tmp_path / f"gla_{view}"
        m = train_run("gla", folders["both"], out, 0, prior=prior, hparams={"view": view},
                      base_runs={"la": la})
        assert m["info"]["temperature"] == pytest.approx(t)
        bias = load_file(str(out / "predictor.safetensors"))["bias"]
        np.testing.assert_allclose(bias, -np.log(q), rtol=1e-5, atol=1e-5)  # la has no bias
    # a prior of the centre view only (a none extraction's) refuses a five-crop run
    only = tmp_path / "only.parquet"
    prior_from_features(folders["none"], only)
    from lt_bench.errors import InputValidationError

    with pytest.raises(InputValidationError, match="holds q̂ of the centre view only"):
        train_run("gla", folders["both"], tmp_path / "gla_x", 0, prior=only,
                  hparams={"view": "fivecrop"}, base_runs={"la": la})



# --- the paper suites' TTE twins (methods.<m>_tte: {base: <m>, view: fivecrop}) ----------

def _same_numbers(a: Path, b: Path) -> None:
    """Two run folders hold the same predictor and metrics (timings and names aside)."""
    for name in (p.name for p in a.iterdir() if p.name.startswith(("predictor", "pred"))):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    for split in ("val", "test"):
        la, za = run_logits(a, split)
        lb, zb = run_logits(b, split)
        np.testing.assert_array_equal(la, lb)
        np.testing.assert_array_equal(za, zb)
    ma, mb = (json.loads((r / "metrics.json").read_text()) for r in (a, b))
    for key in ("top1", "val_top1", "groups", "inference_cost", "n_trainable_params"):
        assert ma.get(key) == mb.get(key), key


def test_a_tte_twin_is_its_base_fitted_on_the_five_crop_view(folders, tmp_path):
    """la_tte in one job after la (as the paper suite's head job runs them) equals la
    fitted alone with view fivecrop, bit for bit, without a second training: the twin
    takes la's fit (``fit_shared_with``) and reads the crops; la itself is the run it is
    without the twin. A twin differing in more than the view (epochs) fits its own."""
    from lt_bench.methods import METHODS, declare_variants
    from lt_bench.runs.train import train_runs

    try:
        declare_variants({"la_tte": {"base": "la", "view": "fivecrop"},
                          "la_tte_e1": {"base": "la", "view": "fivecrop", "epochs": 1}})
        # params as the plan resolves them: the variant's own epochs over FAST's
        runs = [{"method": m, "seed": 0, "out": tmp_path / "job" / m, "params": {**FAST, **hp},
                 "base": {}} for m, hp in (("la", {}), ("la_tte", {"view": "fivecrop"}),
                                           ("la_tte_e1", {"view": "fivecrop", "epochs": 1}))]
        job = train_runs(folders["both"], runs)
        alone_five = _fit(folders, "la_alone_five", "la", "both",
                          hparams={**FAST, "view": "fivecrop"})
        alone = _fit(folders, "la_alone", "la", "both", hparams=FAST)
        _same_numbers(tmp_path / "job" / "la_tte", alone_five)
        _same_numbers(tmp_path / "job" / "la", alone)
        cfg = json.loads((tmp_path / "job" / "la_tte" / "config.json").read_text())
        assert cfg["view"] == "fivecrop" and cfg["method"] == "la_tte"
        assert job[1]["info"]["fit_shared_with"] == str(tmp_path / "job" / "la")
        assert "fit_shared_with" not in job[0]["info"] and "fit_shared_with" not in job[2]["info"]
        assert job[1]["info"]["train_seconds"] == job[0]["info"]["train_seconds"]
        assert job[0]["top1"] != job[1]["top1"]  # the views differ (spread 1.5 crops)
    finally:
        METHODS.undeclare("config")


def test_only_view_free_fits_are_shared():
    """The share key exists for trained heads only (HeadMethod's own fit), equal for runs
    differing in view alone; not for a fit that reads the view (a prior, a val knob)."""
    from lt_bench.methods import METHODS
    from lt_bench.runs.train import view_free_share_key

    def key(method, **hp):
        return view_free_share_key({"method": method, "seed": 0},
                                   METHODS.get(method)(**hp))

    for m in ("ce", "focal", "ldam", "cb", "grw", "la", "bs", "lade", "crt"):
        assert key(m) is not None and key(m) == key(m, view="fivecrop") != key(m, epochs=3)
    for m in ("gla_train", "tau_norm", "la_posthoc", "gla", "knn", "zero_shot"):
        assert key(m) is None


@pytest.mark.parametrize("mutate,needle", [
    # a suite's own extract: (schema: only tte, one of its values)
    (lambda c: c["suites"]["paper"].update(extract={"train_views": 2}),
     r"^config.yaml suites.paper.extract: Additional properties are not allowed "
     r"\('train_views' was unexpected\)$"),
    (lambda c: c["suites"]["paper"].update(extract={"tte": "five"}),
     r"^config.yaml suites.paper.extract.tte: 'five' is not one of \['none', 'fivecrop', "
     r"'both'\]$"),
])
def test_a_suites_extract_is_schema_checked(mutate, needle):
    """Run as a user would: the workflow's schema check, its one line."""
    import copy

    import yaml
    from conftest import REPO
    from snakemake.exceptions import WorkflowError
    from snakemake.utils import validate

    cfg = yaml.safe_load((REPO / "config.yaml").read_text())
    bad = copy.deepcopy(cfg)
    mutate(bad)
    with pytest.raises(WorkflowError) as e:
        validate(bad, str(REPO / "workflow" / "schemas" / "config.schema.yaml"))
    err = e.value.__cause__ or e.value.__context__  # the line common.smk prints
    line = f"config.yaml {'.'.join(map(str, err.absolute_path))}: {err.message}"
    assert re.search(needle, line), line


def test_a_twin_without_five_crop_features_stops_the_plan():
    """A five-crop run (a twin, or an ensemble's twin members) in a suite that extracts
    tte none is one line at plan time naming the method and the fix; the suite's own
    extract: {tte: both} (or the global one) makes it valid."""
    import copy

    import yaml
    from conftest import REPO

    from lt_bench.config import ConfigError
    from lt_bench.plan import Plan

    cfg = yaml.safe_load((REPO / "config.yaml").read_text())
    for methods, culprit in ((["la", "la_tte"], "la_tte"), (["backdoor_tte"], "la_tte")):
        bad = copy.deepcopy(cfg)
        bad["suites"]["demo"]["methods"] = methods
        with pytest.raises(ConfigError, match=(
                f"^suites.demo.methods: '{culprit}' reads the five-crop view .view: fivecrop. "
                "on toy, which extract.tte: none does not store; set suites.demo.extract: "
                r"\{tte: both\} \(centre and five crops\)$")):
            _ = Plan(bad).suite
        for fix in ({"suites": {**bad["suites"], "demo": {**bad["suites"]["demo"],
                                                          "extract": {"tte": "both"}}}},
                    {"extract": {**bad["extract"], "tte": "both"}}):
            ok = Plan({**bad, **fix})
            assert ok.suite.methods == methods and ok.extract_options()["tte"] == "both"


def test_the_prior_of_both_views_in_blocks(folders, tmp_path, monkeypatch):
    """`lt-bench prior` with the crops' zero-shot logits and every N × K step in small
    blocks (as at iNat2018's shape, where the whole computation peaked at > 14 GB): the
    q̂ of each view and the temperatures of one whole call, up to the rounding of the
    float32 zero-shot products (a BLAS product rounds by its row count)."""
    import lt_bench.blocks
    from lt_bench.prior import prior_from_features, read_prior

    whole = tmp_path / "whole.parquet"
    prior_from_features(folders["both"], whole)
    monkeypatch.setattr(lt_bench.blocks, "CROP_BLOCK_ELEMENTS", 1)  # one image a block
    monkeypatch.setattr(lt_bench.blocks, "BLOCK_ELEMENTS", 1)  # one row a block
    blocked = tmp_path / "blocked.parquet"
    prior_from_features(folders["both"], blocked)
    a, b = read_prior(whole), read_prior(blocked)
    assert b.temperature == pytest.approx(a.temperature, rel=1e-6)
    np.testing.assert_allclose(b.q_hat, a.q_hat, rtol=1e-6)
    np.testing.assert_allclose(b.views["fivecrop"][0], a.views["fivecrop"][0], rtol=1e-6)
    assert b.views["fivecrop"][1] == pytest.approx(a.views["fivecrop"][1], rel=1e-6)
