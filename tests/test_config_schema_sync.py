"""A method is declared once, in its registered class (name, display name, defaults,
validate()): the schema keeps no per-method part, and the shipped configs run every
registered method with valid hyper-parameters."""

from __future__ import annotations

import pytest
import yaml
from conftest import REPO
from snakemake.utils import validate

from lt_bench.config import ConfigError, method_hparams, resolve_suite, suite_extract
from lt_bench.methods import METHODS

SCHEMA = yaml.safe_load((REPO / "workflow/schemas/config.schema.yaml").read_text())


def test_the_schema_names_no_method():
    """methods: is an object of objects; lt-bench checks each entry (a copy of a method's
    keys here would be a second declaration, and cannot know plugins or variants)."""
    entry = SCHEMA["properties"]["methods"]
    assert "properties" not in entry and entry["additionalProperties"] == {"type": "object"}
    assert not {"head", "finetune", "tau_grid"} & set(SCHEMA["$defs"])  # methods' key lists


@pytest.mark.parametrize("name", [n for n in METHODS.names()
                                  if METHODS.origin(n) == "built-in"])
def test_every_built_in_method_declares_itself_once(name):
    """Its class carries the name it is registered under, a display name and defaults that
    its own validate() accepts."""
    cls = METHODS.get(name)
    assert cls.name == name
    assert isinstance(cls.display, str) and cls.display.strip(), name
    cls()  # the defaults are valid


@pytest.mark.parametrize("path", ["config.yaml", "tests/data/tiny_config.yaml"])
def test_shipped_configs_validate_and_resolve(path):
    cfg = yaml.safe_load((REPO / path).read_text())
    validate(cfg, str(REPO / "workflow/schemas/config.schema.yaml"))
    suite = resolve_suite(cfg)
    for d in suite.datasets:
        for m in suite.methods:
            hp = method_hparams(cfg, m, d)
            METHODS.get(m)(**hp)  # every configured key is accepted by the method


#: registered methods the demo leaves out, each with its reason (the demo must fit 10 min)
DEMO_EXCLUDED = {
    "vpt_la": "fine-tuning ablation: suite paper_peft",
    "lora_la": "fine-tuning ablation: suite paper_peft",
    "adaptformer_ce": "fine-tuning CE control: suite paper_peft",
    "adaptformer_la_tte": "five-crop views: 5 more passes over val and test per fine-tuning",
    "knn_authors": "like-for-like row of the authors' k-NN probe: suite paper",
    "knn_finetuned": "the authors' k-NN on fine-tuned features: suite paper",
    "backdoor_vote": "majority-vote control, added after the published grid: suite cifar100_lt",
}


def test_demo_suite_runs_every_method_but_the_fine_tuning_ablations():
    cfg = yaml.safe_load((REPO / "config.yaml").read_text())
    assert set(DEMO_EXCLUDED) <= set(METHODS.names())
    assert set(cfg["suites"]["demo"]["methods"]) == set(METHODS.names()) - set(DEMO_EXCLUDED)
    in_some_suite = set().union(*(s["methods"] for s in cfg["suites"].values()))
    # the registered methods; the config's variants (the paper suites' TTE twins) aside
    variants = {n for n, e in cfg["methods"].items() if "base" in (e or {})}
    assert in_some_suite - variants == set(METHODS.names()) - variants


def test_crt_rejects_an_unknown_init():
    cfg = yaml.safe_load((REPO / "config.yaml").read_text())
    cfg["methods"]["crt"] = {"init": "stage1"}
    validate(cfg, str(REPO / "workflow/schemas/config.schema.yaml"))  # the schema lets it by
    with pytest.raises(ConfigError, match="methods.crt: method 'crt': init = 'stage1'; valid"):
        resolve_suite(cfg)


def test_a_suite_may_run_all_methods():
    """methods: all = every registered method and the config's variants (each after its
    base), the ensembles over backbones only where the suite has enough backbones, the
    five-crop readers (the shipped TTE twins, an ensemble of them) only where the suite
    extracts the five-crop view."""
    cfg = yaml.safe_load((REPO / "config.yaml").read_text())
    twins = [n for n, e in cfg["methods"].items() if (e or {}).get("view") == "fivecrop"]
    assert "la_tte" in twins and cfg["methods"]["backdoor_tte"]["members"] == "la_tte"
    cfg["methods"]["la_tau05"] = {"base": "la", "tau": 0.5}
    cfg["suites"]["demo"]["methods"] = "all"
    assert suite_extract(cfg, "demo").get("tte") == "none"
    got = resolve_suite(cfg).methods
    builtin = [n for n in METHODS.names() if METHODS.origin(n) != "config"]
    assert got == [m for n in builtin for m in ([n, "la_tau05"] if n == "la" else [n])]
    cfg["suites"]["demo"]["backbones"] = ["toyclip0"]
    one = resolve_suite(cfg).methods
    over_backbones = {n for n in builtin if METHODS.get(n).consumes == "runs"
                      and METHODS.get(n).vary == "backbone"}
    assert over_backbones and set(got) - set(one) == over_backbones
    # with five-crop features the twins join, each after its base, and so does the
    # ensemble of twins
    cfg["suites"]["demo"]["backbones"] = ["toyclip0", "toyclip1"]
    cfg["suites"]["demo"]["extract"] = {"tte": "both"}
    crops = resolve_suite(cfg).methods
    assert set(crops) - set(got) == set(twins) | {"backdoor_tte"}
    assert all(crops.index(t) > crops.index(cfg["methods"][t]["base"]) for t in twins)
