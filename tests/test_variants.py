"""Method variants (lt_bench/methods/_variants.py): a registered method under a new name with
its own hyper-parameters, declared in config.yaml, is a method name everywhere — its
hyper-parameters, its runs (fitted like its base with those values), its rows and display
name, its significance row against its base, an ensemble's members, and the workflow."""

from __future__ import annotations

import copy
import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import REPO, copy_workflow
from synth_runs import FAST, make_features_dir

from lt_bench.cli import main
from lt_bench.config import ConfigError, method_hparams, resolve_suite
from lt_bench.methods import METHODS, declare_variants, resolve_method
from lt_bench.plan import Plan

VARIANTS = {"la_tau05": {"base": "la", "tau": 0.5},
            "la_tau15": {"base": "la", "tau": 1.5, "display": "LA (τ=1.5, mine)"}}


@pytest.fixture(autouse=True)
def _forget_declared_variants():
    """A test's declared variants do not outlive it (the registry is per process)."""
    yield
    METHODS.undeclare("config")


@pytest.fixture
def config():
    cfg = yaml.safe_load((REPO / "config.yaml").read_text())
    cfg["methods"].update(copy.deepcopy(VARIANTS))
    return cfg


def test_a_variant_is_its_base_with_its_own_keys(config):
    cls = resolve_method("la_tau05", config)
    la = METHODS.get("la")
    assert issubclass(cls, la) and cls.name == "la_tau05" and cls.variant_of == "la"
    assert cls.defaults == {**la.defaults, "tau": 0.5}
    assert cls.consumes == la.consumes and cls.requires == la.requires
    # not the base's config entry: editing methods.la does not move the variant
    config["methods"]["la"] = {"tau": 2.0, "epochs": 7}
    assert method_hparams(config, "la_tau05", "toy") == {**la.defaults, "tau": 0.5}
    assert method_hparams(config, "la", "toy")["tau"] == 2.0


def test_display_names_come_from_the_classes(config):
    from lt_bench.report.format import display_name, label_of

    assert display_name("la") == METHODS.get("la").display == "LA"
    declare_variants(config_variants := {n: config["methods"][n] for n in VARIANTS})
    assert set(config_variants) <= set(METHODS.names())
    assert display_name("la_tau05") == "LA (τ=0.5)"  # the keys that differ from la's
    assert display_name("la_tau15") == "LA (τ=1.5, mine)"  # its own display
    assert label_of("la_tau05", {"tau": 0.5}) == "LA (τ=0.5)"
    # a base with a label from its run's hyper-parameters keeps it (LDAM-DRW)
    declare_variants({"ldam_m3": {"base": "ldam", "max_margin": 0.3}})
    assert label_of("ldam_m3", {"drw_epoch": 8}) == "LDAM-DRW (max_margin=0.3)"
    assert label_of("ldam_m3", {"drw_epoch": None}) == "LDAM (max_margin=0.3)"
    # a variant equal to its base still has a row of its own name
    declare_variants({"la_same": {"base": "la", "tau": 1.0}})
    assert display_name("la_same") == "LA (la_same)"


def test_a_tte_twin_is_labelled_tte():
    """A variant whose change is view: fivecrop is "<base display> (TTE)", the word of
    LIFT's tables, with the other changed keys beside it and inside a parenthesis the base
    display already has; the shipped twins read so in the tables (report.format)."""
    from lt_bench.report.format import display_name, label_of

    declare_variants({"la_tte": {"base": "la", "view": "fivecrop"},
                      "la_tau05_tte": {"base": "la", "tau": 0.5, "view": "fivecrop"},
                      "la_centre": {"base": "la", "view": "centre"},
                      "la_posthoc_tte": {"base": "la_posthoc", "view": "fivecrop"},
                      "ldam_tte": {"base": "ldam", "view": "fivecrop"}})
    assert display_name("la_tte") == f"{METHODS.get('la').display} (TTE)" == "LA (TTE)"
    assert display_name("la_tau05_tte") == "LA (τ=0.5, TTE)"
    assert display_name("la_centre") == "LA (view=centre)"
    base = METHODS.get("la_posthoc").display
    assert base.endswith(")") and display_name("la_posthoc_tte") == base[:-1] + ", TTE)"
    assert label_of("ldam_tte", {"drw_epoch": 8}) == "LDAM-DRW (TTE)"
    # the fine-tuning track's TTE row reads the same way
    assert display_name("adaptformer_la_tte") == METHODS.get("adaptformer_la").display + " (TTE)"


def test_overrides_apply_to_variants_but_not_over_their_own_keys(config):
    """Base defaults < dataset overrides (every method, the base by name) < the variant's
    own keys < overrides named for the variant."""
    config["methods"]["ldam_m3"] = {"base": "ldam", "max_margin": 0.3, "epochs": 3}
    config["method_overrides"] = {"imagenet_lt": {"epochs": 20, "ldam": {"drw_epoch": 8,
                                                                         "max_margin": 0.9}},
                                  "places_lt": {"ldam_m3": {"epochs": 4}}}
    hp = method_hparams(config, "ldam_m3", "imagenet_lt")
    assert (hp["drw_epoch"], hp["max_margin"], hp["epochs"]) == (8, 0.3, 3)
    assert method_hparams(config, "ldam_m3", "places_lt")["epochs"] == 4
    assert method_hparams(config, "ldam", "imagenet_lt")["max_margin"] == 0.9
    assert method_hparams(config, "la_tau05", "imagenet_lt")["epochs"] == 20  # not its key


def test_plan_places_variants_as_methods(config):
    """Head runs with their own folders and values, an ensemble over a variant's runs, a
    fine-tuning variant, a variant of a method that builds on another (gla on la), and the
    --variants argument each job gets."""
    config["methods"].update({
        "backdoor_tau05": {"base": "backdoor", "members": "la_tau05"},
        "adaptformer_la_e2": {"base": "adaptformer_la", "epochs": 2},
        "gla_v": {"base": "gla", "display": "GLA (mine)"}})
    config["suites"]["demo"]["methods"] = [
        "la", "la_tau05", "la_tau15", "backdoor_tau05", "adaptformer_la_e2", "gla_v"]
    plan = Plan(config)
    runs = {(r["method"], r["seed"]): r for r in plan.head_runs("toy", "toyclip0", 0)}
    assert runs[("la_tau05", 0)]["params"]["tau"] == 0.5
    assert runs[("la_tau05", 0)]["out"] == "results/runs/toy/toyclip0/la_tau05/seed0"
    assert runs[("gla_v", 0)]["base"] == {"la": "results/runs/toy/toyclip0/la/seed0"}
    assert plan.member_keys("toy", "ensemble", "backdoor_tau05", 0) == [
        ("toy", b, "la_tau05", 0) for b in ("toyclip0", "toyclip1", "toyclip2")]
    assert ("toy", "toyclip1", "adaptformer_la_e2", 0) in plan.per_backbone_runs("images")
    assert plan.hparams("adaptformer_la_e2", "toy")["epochs"] == 2  # over toy's finetune: 1
    assert "adaptformer_la_e2" in plan.methods_consuming("images")
    flag, specs = plan.variants_arg(["la", "la_tau15"])
    assert flag == "--variants" and json.loads(specs) == {"la_tau15": {"base": "la",
                                                                       "tau": 1.5}}
    combine = plan.combine_runs("toy", 0)
    assert json.loads(plan.run_list_variants(combine)[1]) == {
        "backdoor_tau05": {"base": "backdoor", "members": "la_tau05"},
        "la_tau05": {"base": "la", "tau": 0.5}}
    assert plan.variants_arg(display=True)[1].count("mine") == 2


def test_a_config_without_variants_passes_no_variants():
    from lt_bench.methods import config_variants

    cfg = yaml.safe_load((REPO / "config.yaml").read_text())
    # the shipped config declares the paper suites' TTE twins; without them (and those
    # suites) it is a config without variants
    for name in config_variants(cfg):
        del cfg["methods"][name]
    cfg["suites"] = {"demo": cfg["suites"]["demo"]}
    plan = Plan(cfg)
    assert plan.variants_arg() == [] and plan.variants_arg(display=True) == []
    assert all(set(r) == {"method", "seed", "out", "params", "base"}
               for r in plan.head_runs("toy", "toyclip0", 0))


@pytest.mark.parametrize("entry,says", [
    ({"base": "lx"}, "methods.v: unknown base 'lx'; valid bases: "),
    ({"base": "la", "taux": 1}, "methods.v: unknown hyper-parameter(s) ['taux'] for base 'la'"),
    ({"base": "la", "tau": "big"}, "methods.v: tau = 'big'; expected a number"),
    ({"base": "la", "display": ["x"]}, "methods.v: display = ['x']; expected a non-empty string"),
    ({"base": "la_tau05"}, "methods.v: base 'la_tau05' is itself a variant"),
    ({"base": "la", "epochs": 0}, "methods.v: method 'v': hyper-parameter epochs = 0 is invalid"),
])
def test_bad_variants_are_config_errors_naming_the_entry(config, entry, says):
    config["methods"]["v"] = entry
    with pytest.raises(ConfigError) as e:
        resolve_suite(config)
    assert says in str(e.value) and "\n" not in str(e.value)


def test_a_variant_named_like_a_registered_method_is_refused(config):
    config["methods"]["ce"] = {"base": "la", "tau": 0.5}
    with pytest.raises(ConfigError, match="methods.ce: a variant .* cannot take the name of "
                       "the registered method 'ce'"):
        resolve_suite(config)


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """la_tau05 fitted through the CLI by its name (--variants), and la fitted directly
    with tau 0.5 and with its default tau, on the same features."""
    root = tmp_path_factory.mktemp("variants")
    fd = make_features_dir(root / "f", backbone="bb0")
    out = {m: root / "runs" / "toy" / "bb0" / m / "seed0" for m in ("la_tau05", "la", "la05")}
    spec = json.dumps({"la_tau05": {"base": "la", "tau": 0.5, **FAST}})
    assert main(["--variants", spec, "fit", "--method", "la_tau05", "--features-dir", str(fd),
                 "--out", str(out["la_tau05"])]) == 0
    assert main(["fit", "--method", "la", "--features-dir", str(fd), "--out", str(out["la"]),
                 "--params", json.dumps(FAST)]) == 0
    assert main(["fit", "--method", "la", "--features-dir", str(fd), "--out",
                 str(root / "la05"), "--params", json.dumps({**FAST, "tau": 0.5})]) == 0
    out["la05"] = root / "la05"
    METHODS.undeclare("config")
    return out


def _weights(run: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    return load_file(run / "predictor.safetensors")


def test_a_variant_fits_as_its_base_with_its_values(fitted):
    """la_tau05's predictor is la's fitted with tau 0.5 on the same features, to the bit;
    la at its default tau (1.0) is another one."""
    v, direct, default = (_weights(fitted[k]) for k in ("la_tau05", "la05", "la"))
    assert v.keys() == direct.keys()
    assert all(np.array_equal(v[k], direct[k]) for k in v)
    assert not all(np.array_equal(v[k], default[k]) for k in v)
    cfg = json.loads((fitted["la_tau05"] / "config.json").read_text())
    assert cfg["method"] == "la_tau05" and cfg["hparams"]["tau"] == 0.5


def test_significance_compares_a_variant_with_its_base(fitted):
    from lt_bench.report.significance import comparisons

    dirs = [fitted["la_tau05"], fitted["la"]]
    declare_variants({"la_tau05": {"base": "la", "tau": 0.5}})
    sig = comparisons(dirs, n_boot=200)
    row = sig[sig["kind"] == "vs_base"].iloc[0]
    top1 = {m: json.loads((fitted[m] / "metrics.json").read_text())["top1"] * 100
            for m in ("la_tau05", "la")}
    assert (row["a_method"], row["b_method"], row["b_label"]) == ("la_tau05", "la", "LA")
    assert row["a_top1"] == pytest.approx(top1["la_tau05"])
    assert row["b_top1"] == pytest.approx(top1["la"])
    assert row["diff"] == pytest.approx(top1["la_tau05"] - top1["la"])
    assert not (sig["kind"] == "vs_la").any()  # the same pair once, as vs_base
    METHODS.undeclare("config")  # a process that does not know the variant: no such row
    assert "vs_base" not in set(comparisons(dirs, n_boot=200)["kind"])


@pytest.mark.slow
def test_a_tau_sweep_runs_through_the_workflow(tmp_path):
    """Two la variants and a backdoor over one of them on the tiny world: their own run
    folders with different predictors, rows in main.md under their display names, runs in
    MLflow, and vs_base significance rows."""
    wf = copy_workflow(tmp_path / "wf")
    cfg = yaml.safe_load((REPO / "tests/data/tiny_config.yaml").read_text())
    cfg["methods"].update({
        "la_tau05": {"base": "la", "tau": 0.5, "epochs": 2},
        "la_tau15": {"base": "la", "tau": 1.5, "epochs": 2, "display": "LA (τ=1.5, mine)"},
        "backdoor_tau05": {"base": "backdoor", "members": "la_tau05"}})
    cfg["suites"]["tiny"].update(methods=["la", "la_tau05", "la_tau15", "backdoor",
                                          "backdoor_tau05"], seeds=[0])
    (wf / "variants.yaml").write_text(yaml.safe_dump(cfg, allow_unicode=True, sort_keys=False))
    r = subprocess.run([sys.executable, "-m", "snakemake", "--cores", "2", "--configfile",
                        "variants.yaml"], cwd=wf, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    runs = wf / "results/runs/toy"
    for b in ("toyclip0", "toyclip1"):
        w05, w15 = (_weights(runs / b / m / "seed0") for m in ("la_tau05", "la_tau15"))
        assert not all(np.array_equal(w05[k], w15[k]) for k in w05)
        for m, tau in (("la_tau05", 0.5), ("la_tau15", 1.5)):
            assert json.loads((runs / b / m / "seed0/config.json").read_text())[
                "hparams"]["tau"] == tau
    members = json.loads((runs / "ensemble/backdoor_tau05/seed0/predictor.json").read_text())
    assert [Path(m).parts[-2] for m in members["members"]] == ["la_tau05", "la_tau05"]
    md = (wf / "results/tables/main.md").read_text()
    # a display from the keys that differ from la's defaults, in the order written
    assert "| LA (τ=0.5, epochs=2) |" in md and "| LA (τ=1.5, mine) |" in md
    assert "| backdoor (members=la_tau05) |" in md
    sig = __import__("pandas").read_csv(wf / "results/tables/significance.csv")
    base = sig[sig["kind"] == "vs_base"]
    assert {(a, b) for a, b in zip(base["a_method"], base["b_method"], strict=True)} == {
        ("la_tau05", "la"), ("la_tau15", "la"), ("backdoor_tau05", "backdoor")}
    assert len(base) == 5  # la variants on each backbone, the backdoor's on "ensemble"
    assert "backdoor_tau05" not in set(sig[sig["kind"] == "control_vs_backdoor"]["a_method"])
    with sqlite3.connect(wf / "results/mlflow/mlflow.db") as con:
        tagged = con.execute("SELECT t.value, b.value FROM tags t LEFT JOIN tags b ON "
                             "b.run_uuid = t.run_uuid AND b.key = 'base_method' "
                             "WHERE t.key = 'method'").fetchall()
    seen: dict[str, set] = {}
    for m, b in tagged:  # every run of a method: one per seed run, one per setting
        seen.setdefault(m, set()).add(b)
    assert seen["la_tau05"] == seen["la_tau15"] == {"la"} and seen["la"] == {None}
    assert seen["backdoor_tau05"] == {"backdoor"}
