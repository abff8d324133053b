"""config.yaml errors: schema violations and names only the registries know."""

import copy
import subprocess
import sys

import pytest
import yaml
from conftest import REPO, copy_workflow
from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

from lt_bench.config import ConfigError, method_hparams, resolve_suite

SCHEMA = str(REPO / "workflow/schemas/config.schema.yaml")


@pytest.fixture
def config():
    cfg = yaml.safe_load((REPO / "config.yaml").read_text())
    validate(cfg, SCHEMA)
    return cfg


def test_shipped_config_is_valid_and_defaults_to_demo(config):
    suite = resolve_suite(config)
    assert suite.name == "demo" and suite.datasets == ["toy"]
    assert len(suite.seeds) == 3


def test_schema_fills_defaults():
    cfg = {"suites": {"s": {"datasets": ["toy"], "backbones": ["toyclip0"],
                            "methods": ["ce"], "seeds": [0]}}}
    validate(cfg, SCHEMA)
    assert cfg["suite"] == "demo" and cfg["extract"]["batch_size"] == 256
    assert cfg["toy_pretrain"]["num_pairs"] == 25000


@pytest.mark.parametrize("mutate,needle", [
    (lambda c: c["toy_pretrain"].update(num_pair=3), "'num_pair' was unexpected"),
    (lambda c: c.update(suit="paper"), "'suit' was unexpected"),
    (lambda c: c["suites"]["demo"].update(seeds=["zero"]), "'zero' is not of type 'integer'"),
    (lambda c: c["suites"]["demo"].update(seeds=[0, 0]), r"\[0, 0\] has non-unique elements"),
    (lambda c: c["suites"]["demo"].update(finetune_seeds=[1, 1]),
     r"\[1, 1\] has non-unique elements"),
])
def test_schema_violations_name_the_key(config, mutate, needle):
    bad = copy.deepcopy(config)
    mutate(bad)
    with pytest.raises(WorkflowError, match=needle):
        validate(bad, SCHEMA)


@pytest.mark.parametrize("mutate,needle", [
    (lambda c: c.update(suite="nope"), "unknown suite 'nope' .*valid suites: .*demo"),
    (lambda c: c["suites"]["demo"].update(methods=["ce", "lla"]),
     "suites.demo.methods: unknown method 'lla'; valid methods: .*ce.*la"),
    (lambda c: c["suites"]["demo"].update(datasets=["imagenet"]),
     "suites.demo.datasets: unknown dataset 'imagenet'; valid datasets: .*toy"),
    (lambda c: c["suites"]["demo"].update(backbones=["toyclip9x"]),
     "unknown backbone 'toyclip9x'; valid backbones: .*toyclip0"),
    (lambda c: c["method_overrides"].update(inat="x"), "unknown dataset 'inat'"),
    # methods.<name>: checked against the registered class (no per-method schema part)
    (lambda c: c["methods"].update(ce={"lrr": 0.1}),
     r"methods.ce: unknown hyper-parameter\(s\) \['lrr'\]; valid: \[.*'lr'"),
    (lambda c: c["methods"].update(ce={"lr": -1}),
     "methods.ce: method 'ce': hyper-parameter lr = -1 is invalid; expected a number > 0"),
    (lambda c: c["methods"].update(la={"tau": "big"}),
     r"methods.la: tau = 'big'; expected a number \(the method's default is 1.0\)"),
    (lambda c: c["methods"].update(crt={"init": "stage1"}),
     "methods.crt: method 'crt': init = 'stage1'; valid: text, class_mean, random"),
    (lambda c: c["methods"].update(lx={}), "methods: unknown method 'lx'; valid methods: "),
])
def test_registry_errors_list_valid_names(config, mutate, needle):
    bad = copy.deepcopy(config)
    mutate(bad)
    with pytest.raises(ConfigError, match=needle):
        resolve_suite(bad)


def test_method_hparams_layering(config):
    cfg = copy.deepcopy(config)
    cfg["methods"]["la"] = {"tau": 0.5}
    cfg["method_overrides"] = {"toy": {"epochs": 20}}
    hp = method_hparams(cfg, "la", "toy")
    assert hp["tau"] == 0.5 and hp["epochs"] == 20 and hp["lr"] == 0.01
    assert method_hparams(cfg, "zero_shot", "toy") == {"view": "auto"}  # skips unknown keys


def test_method_overrides_of_one_method(config):
    cfg = copy.deepcopy(config)
    cfg["method_overrides"] = {"toy": {"epochs": 20, "adaptformer_la": {"epochs": 2}}}
    assert method_hparams(cfg, "adaptformer_la", "toy")["epochs"] == 2  # its own wins
    assert method_hparams(cfg, "adaptformer_ce", "toy")["epochs"] == 20
    assert method_hparams(cfg, "la", "toy")["epochs"] == 20
    assert method_hparams(cfg, "adaptformer_la", "imagenet_lt")["epochs"] == 10
    cfg["method_overrides"] = {"toy": {"la": {"tua": 1}}}
    with pytest.raises(ConfigError, match=r"method_overrides.toy.la: unknown .*'tua'.*valid"):
        method_hparams(cfg, "la", "toy")
    cfg["method_overrides"] = {"toy": {"la": 3}}
    with pytest.raises(ConfigError, match="expected a mapping"):
        method_hparams(cfg, "ce", "toy")


def test_finetune_overrides_apply_to_every_fine_tuned_method(config):
    """method_overrides.<dataset>.finetune: one setting for every method that consumes
    images (the CE control like-for-like with the LA runs), none for the heads; a method's
    own entry still wins."""
    cfg = copy.deepcopy(config)
    for m in ("adaptformer_la", "adaptformer_ce", "vpt_la", "lora_la"):
        hp = method_hparams(cfg, m, "toy")  # the shipped config
        assert hp["epochs"] == 1 and list(hp["crop_scale"]) == [1.0, 1.0], m
        assert hp["test_transform"] == "open_clip", m
        assert method_hparams(cfg, m, "imagenet_lt")["epochs"] == 10, m
    assert method_hparams(cfg, "la", "toy")["epochs"] == 10  # heads untouched
    cfg["method_overrides"] = {"toy": {"finetune": {"epochs": 3},
                                       "adaptformer_ce": {"epochs": 2}}}
    assert method_hparams(cfg, "lora_la", "toy")["epochs"] == 3
    assert method_hparams(cfg, "adaptformer_ce", "toy")["epochs"] == 2
    cfg["method_overrides"] = {"toy": {"finetune": {"tau": 1.0}}}
    with pytest.raises(ConfigError, match=r"method_overrides.toy.finetune: unknown .*'tau'"):
        method_hparams(cfg, "la", "toy")
    cfg["method_overrides"] = {"toy": {"finetune": 1}}
    with pytest.raises(ConfigError, match=r"method_overrides.toy.finetune: expected a mapping"):
        method_hparams(cfg, "la", "toy")


def test_snakemake_reports_unknown_suite(tmp_path):
    wf = copy_workflow(tmp_path)
    r = subprocess.run([sys.executable, "-m", "snakemake", "-n", "--config", "suite=nope"],
                       cwd=wf, capture_output=True, text=True)
    assert r.returncode != 0
    assert "unknown suite 'nope'" in r.stdout + r.stderr
