"""The schema's `methods.<name>` properties are exactly each method's `defaults` keys, and the
shipped configs run every registered method with valid hyper-parameters."""

from __future__ import annotations

import pytest
import yaml
from conftest import REPO
from snakemake.utils import validate

from lt_bench.config import method_hparams, resolve_suite
from lt_bench.methods import METHODS

SCHEMA = yaml.safe_load((REPO / "workflow/schemas/config.schema.yaml").read_text())


def schema_keys(entry: dict) -> set[str]:
    """Property names a method's schema entry accepts: those of a $ref'd definition plus
    its own, minus the ones it forbids (``name: {not: {}}``)."""
    props: dict = {}
    if "$ref" in entry:
        name = entry["$ref"].removeprefix("#/$defs/")
        props.update(SCHEMA["$defs"][name].get("properties", {}))
    props.update(entry.get("properties", {}))
    return {k for k, v in props.items() if not (isinstance(v, dict) and v.get("not") == {})}


@pytest.mark.parametrize("name", METHODS.names())
def test_schema_matches_method_defaults(name):
    entries = SCHEMA["properties"]["methods"]["properties"]
    assert name in entries, f"method {name!r} has no entry under methods: in the schema"
    entry = entries[name]
    closed = (entry.get("additionalProperties") is False
              or entry.get("unevaluatedProperties") is False)
    assert closed, f"schema entry of {name!r} must reject unknown keys"
    assert schema_keys(entry) == set(METHODS.get(name).defaults)


def test_schema_lists_no_unknown_method():
    assert set(SCHEMA["properties"]["methods"]["properties"]) <= set(METHODS.names())


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
    assert in_some_suite == set(METHODS.names())


def test_crt_rejects_an_unknown_init():
    cfg = yaml.safe_load((REPO / "config.yaml").read_text())
    cfg["methods"]["crt"] = {"init": "stage1"}
    with pytest.raises(Exception, match="stage1"):
        validate(cfg, str(REPO / "workflow/schemas/config.schema.yaml"))
