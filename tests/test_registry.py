"""Registries: one decorator, one lookup, errors that list the valid names."""

import pytest

from lt_bench.backbones import BACKBONES
from lt_bench.data import DATASETS
from lt_bench.errors import DuplicateNameError, UserError
from lt_bench.methods import METHODS, get_method
from lt_bench.registry import Registry, UnknownNameError


def test_unknown_name_lists_valid_names():
    r = Registry("widget")
    r.register("b")(object)
    r.register("a")(int)
    with pytest.raises(UnknownNameError) as e:
        r.get("c")
    assert str(e.value) == "unknown widget 'c'; valid widgets: a, b"


def test_double_registration_is_an_error():
    r = Registry("widget")
    r.register("a")(int)
    with pytest.raises(ValueError, match="registered twice") as e:
        r.register("a")(float)
    # a user's error (a plugin or config reusing a name): one line at the CLI, exit 2
    assert isinstance(e.value, DuplicateNameError) and isinstance(e.value, UserError)
    r.declare("mine", str, "config")
    with pytest.raises(DuplicateNameError, match="'a' is declared in the config but is "
                                                 r"already registered \(built-in\)"):
        r.declare("a", str, "config")


def test_unknown_name_is_a_user_error_and_still_a_key_error():
    with pytest.raises(KeyError) as e:
        Registry("widget").get("x")
    assert isinstance(e.value, UnknownNameError) and isinstance(e.value, UserError)


def test_a_lazy_entry_is_imported_on_its_first_lookup():
    import sys

    r = Registry("widget")
    r.add_lazy("dec", "decimal:Decimal.from_float")
    r.add_lazy("frac", "fractions:Fraction")
    assert r.names() == ["dec", "frac"] and "frac" in r
    import decimal

    assert r.get("dec") == decimal.Decimal.from_float and r.get("dec")(0.5) == 0.5
    assert r.get("frac")(1, 2) == sys.modules["fractions"].Fraction(1, 2)
    with pytest.raises(ValueError, match="registered twice"):
        r.add_lazy("frac", "decimal:Decimal")
    with pytest.raises(UnknownNameError, match="valid widgets: dec, frac"):
        r.get("x")


@pytest.mark.parametrize("registry,name,kind", [
    (METHODS, "lla", "method"), (DATASETS, "imagenet", "dataset"),
    (BACKBONES, "clip-b16", "backbone")])
def test_builtin_registries_name_the_family(registry, name, kind):
    with pytest.raises(UnknownNameError, match=f"unknown {kind} '{name}'; valid {kind}s: .*"):
        registry.get(name)


def test_skeleton_methods_are_registered():
    assert {"zero_shot", "ce", "la"} <= set(METHODS.names())
    assert {"toy"} <= set(DATASETS.names())
    assert {"toyclip0", "toyclip1", "toyclip2"} <= set(BACKBONES.names())


def test_unknown_hyperparameter_names_method_and_valid_keys():
    with pytest.raises(ValueError, match=r"unknown hyper-parameter\(s\) \['lrr'\] for method "
                                         r"'ce'; valid: \['batch_size', .*'lr'"):
        get_method("ce", lrr=0.1)


def test_la_defaults_follow_lift():
    la = get_method("la")
    assert la.hparams["lr"] == 0.01 and la.hparams["epochs"] == 10
    assert la.hparams["batch_size"] == 128 and la.hparams["scale"] == 25.0
    assert la.hparams["weight_decay"] == 5e-4 and la.hparams["momentum"] == 0.9
    assert la.hparams["tau"] == 1.0 and la.hparams["init"] == "text"
