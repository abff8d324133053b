"""Checks of config.yaml that need the registries, and resolution of the grid.

The JSON schema (workflow/schemas/config.schema.yaml) catches typos and types of the
fixed keys; this module catches names that only the registries know (unknown suite,
dataset, backbone or method), checks the backbones and datasets the config declares
(``backbones:``, and ``datasets:`` entries with a ``type``: lt_bench/backbones/declared.py,
lt_bench/data/oltr.py), checks every ``methods.<name>`` entry against the method registry
(:func:`check_methods`: the registered class is the one declaration of a method's keys,
their types and values; the schema has no per-method part), expands ``methods: all`` and
resolves each method's hyper-parameters for one dataset. A variant (``methods.<name>``
naming a ``base``) resolves in lt_bench/methods/_variants.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from lt_bench.errors import UserError


class ConfigError(UserError, ValueError):
    """A config.yaml value the registries refuse (an unknown name, a bad method entry). A
    ``ValueError`` too, for callers that catch config errors as before."""


#: a suite's ``methods:`` that means every method the suite can run (:func:`all_methods`)
ALL = "all"


@dataclass(frozen=True)
class Suite:
    name: str
    datasets: list[str]
    backbones: list[str]
    methods: list[str]
    seeds: list[int]
    #: seeds of the runs from images (fine-tuning); None = ``seeds``
    finetune_seeds: list[int] | None = None


def _check_names(kind: str, names: list[str], registry, where: str,
                 declared: list[str] = ()) -> None:
    for n in names:
        if n not in registry and n not in declared:
            raise ConfigError(f"{where}: unknown {kind} {n!r}; valid {kind}s: "
                              f"{', '.join(registry.names() + sorted(declared))}")


def declared_backbones(config: dict[str, Any]) -> list[str]:
    """The names of ``backbones:``, each declaration checked (no heavy import)."""
    from lt_bench.backbones.base import resolve_spec
    from lt_bench.errors import UserError

    declared = config.get("backbones") or {}
    for name in declared:
        try:
            resolve_spec(name, declared)
        except UserError as e:
            raise ConfigError(str(e)) from None
    return list(declared)


def declared_datasets(config: dict[str, Any]) -> list[str]:
    """The names of ``datasets:`` entries with a ``type`` (a user's dataset), each checked."""
    from lt_bench.data import get_dataset
    from lt_bench.errors import UserError

    out = []
    for name, params in (config.get("datasets") or {}).items():
        if isinstance(params, dict) and "type" in params:
            try:
                get_dataset(name, **params)
            except UserError as e:
                raise ConfigError(f"datasets.{name}: {e}" if not str(e).startswith(
                    "datasets.") else str(e)) from None
            out.append(name)
    return out


def method_names(config: dict[str, Any]) -> list[str]:
    """Every method name the config may use: the registered ones and its variants."""
    from lt_bench.methods import config_variants, registered_names

    return registered_names() + [v for v in config_variants(config)
                                 if v not in registered_names()]


def method_class(config: dict[str, Any], name: str):
    """The class of method ``name`` under ``config`` (a variant's is made from its base);
    a problem with the variant's entry is a ConfigError naming it."""
    from lt_bench.errors import UserError
    from lt_bench.methods import resolve_method

    try:
        return resolve_method(name, config)
    except UserError as e:
        raise ConfigError(str(e)) from None


def check_methods(config: dict[str, Any]) -> None:
    """Every ``methods.<name>`` entry against the registry: a variant's (its base, keys,
    display), or a registered method's keys (unknown key: one line naming the method, the
    key and the valid keys), their types where the defaults make them unambiguous, and the
    class's validate() on the values."""
    from lt_bench.errors import UserError
    from lt_bench.methods import METHODS, registered_names
    from lt_bench.methods._variants import check_types, is_variant

    registered = registered_names()
    for name, entry in (config.get("methods") or {}).items():
        if is_variant(entry):
            method_class(config, name)
            continue
        if name not in registered:
            raise ConfigError(f"methods: unknown method {name!r}; valid methods: "
                              f"{', '.join(registered)} (or a variant: "
                              f"{name}: {{base: METHOD, ...}})")
        cls = METHODS.get(name)
        given = entry or {}
        if not isinstance(given, dict):
            raise ConfigError(f"methods.{name}: expected a mapping of {name}'s "
                              f"hyper-parameters, got {given!r}")
        unknown = sorted(set(given) - set(cls.defaults))
        if unknown:
            raise ConfigError(f"methods.{name}: unknown hyper-parameter(s) {unknown}; "
                              f"valid: {sorted(cls.defaults) or 'none'}")
        try:
            check_types(f"methods.{name}", given, cls.defaults)
            cls(**given)
        except UserError as e:
            raise ConfigError(f"methods.{name}: {e}" if not str(e).startswith("methods.")
                              else str(e)) from None


def suite_extract(config: dict[str, Any], suite: str) -> dict[str, Any]:
    """The ``extract:`` settings of ``suite``'s extraction jobs: the top-level ``extract:``
    with the suite's own ``extract:`` over it (schema: only ``tte``; the paper suites
    extract both views so every row has its TTE twin, the demo none)."""
    own = ((config.get("suites") or {}).get(suite) or {}).get("extract") or {}
    return {**(config.get("extract") or {}), **own}


def fivecrop_reader(config: dict[str, Any], method: str,
                    datasets: list[str]) -> tuple[str, str] | None:
    """Where ``method`` reads the five-crop view: ``(method, dataset)`` for a ``_tte`` twin
    (``view: fivecrop``), ``(its member, dataset)`` for an ensemble of such twins; None
    where it reads none of ``datasets``' five crops. The one decision behind ``methods:
    all`` and the plan's check of a suite without five-crop features."""
    cls = method_class(config, method)
    for d in datasets:
        hp = method_hparams(config, method, d)
        if cls.consumes == "features" and hp.get("view") == "fivecrop":
            return method, d
        if cls.consumes == "runs" and hp.get("members") not in (None, method) \
                and (hit := fivecrop_reader(config, hp["members"], [d])):
            return hit
    return None


def all_methods(config: dict[str, Any], suite: str) -> list[str]:
    """``methods: all``: every registered method (built-in and plugins) and every variant
    of the config (each after its base), except what the suite could not run: the
    ensembles over backbones that need more backbones (``min_members``) than it has, and
    the five-crop readers (the TTE twins) where it extracts no five-crop view."""
    from lt_bench.methods import config_variants, registered_names

    s = config["suites"][suite]
    variants = config_variants(config)
    names = []
    for n in registered_names():
        names += [n] + [v for v, e in variants.items() if e.get("base") == n]
    no_crops = suite_extract(config, suite).get("tte", "none") == "none"
    out = []
    for n in names:
        cls = method_class(config, n)
        if cls.consumes == "runs" and getattr(cls, "vary", None) == "backbone" \
                and len(s["backbones"]) < cls.min_members:
            continue
        if no_crops and fivecrop_reader(config, n, s["datasets"]):
            continue
        out.append(n)
    return out


def resolve_suite(config: dict[str, Any]) -> Suite:
    from lt_bench.backbones import BACKBONES
    from lt_bench.data import DATASETS

    name = config.get("suite", "demo")
    suites = config.get("suites", {})
    if name not in suites:
        raise ConfigError(f"unknown suite {name!r} (config key 'suite'); "
                          f"valid suites: {', '.join(sorted(suites))}")
    s = suites[name]
    where = f"suites.{name}"
    datasets, backbones = declared_datasets(config), declared_backbones(config)
    _check_names("dataset", s["datasets"], DATASETS, f"{where}.datasets", datasets)
    _check_names("backbone", s["backbones"], BACKBONES, f"{where}.backbones", backbones)
    check_methods(config)
    valid = method_names(config)
    methods = all_methods(config, name) if s["methods"] == ALL else list(s["methods"])
    for m in methods:
        if m not in valid:
            raise ConfigError(f"{where}.methods: unknown method {m!r}; valid methods: "
                              f"{', '.join(valid)}")
    for m in methods:
        cls = method_class(config, m)
        members = cls.defaults.get("members") if cls.consumes == "runs" else None
        given = (config.get("methods", {}).get(m) or {}).get("members", members)
        if given is not None and given not in valid:
            raise ConfigError(f"methods.{m}.members: unknown method {given!r}; valid methods: "
                              f"{', '.join(valid)}")
        for req in cls.requires:
            if req not in methods:
                raise ConfigError(f"{where}.methods: {m!r} builds on {req!r}, which is not "
                                  "in the suite; add it")
    for d in config.get("method_overrides", {}):
        if d not in DATASETS and d not in datasets:
            raise ConfigError(f"method_overrides: unknown dataset {d!r}; valid datasets: "
                              f"{', '.join(DATASETS.names() + datasets)}")
    _check_values(config, methods, s["datasets"])
    ft = s.get("finetune_seeds")
    return Suite(name, list(s["datasets"]), list(s["backbones"]), methods,
                 [int(x) for x in s["seeds"]], None if ft is None else [int(x) for x in ft])


def _check_values(config: dict[str, Any], methods: list[str], datasets: list[str]) -> None:
    """Each suite method's class validates its resolved hyper-parameters on each dataset
    (overrides included): a bad value stops the plan, not one job of it."""
    from lt_bench.errors import UserError

    for d in datasets:
        for m in methods:
            try:
                method_class(config, m)(**method_hparams(config, m, d))
            except UserError as e:
                msg = str(e).removeprefix(f"methods.{m}: ")
                raise ConfigError(f"methods.{m} on dataset {d}: {msg}") from None


#: the key of ``method_overrides.<dataset>`` holding overrides of every fine-tuned method
FINETUNE_GROUP = "finetune"


def method_hparams(config: dict[str, Any], method: str, dataset: str) -> dict[str, Any]:
    """Resolved hyper-parameters: method defaults < config.methods < per-dataset overrides.

    Overrides apply only to keys the method accepts (``epochs: 20`` for iNat2018 touches
    trained heads, not zero-shot). ``finetune: {...}`` holds overrides of every method that
    fine-tunes the backbone (consumes images), one setting for all of them (the toy world's
    shorter fine-tuning must keep the CE control like-for-like with the LA runs); a
    method's name holds overrides of that method only, applied last.

    A variant (lt_bench/methods/_variants.py): its base's class defaults < the dataset's
    overrides (of every method, of fine-tuning, and of its base by name) < **its own keys**
    < overrides named for the variant. Its own keys win over the overrides of its base: they
    are what makes it a variant (a τ sweep must not collapse on a dataset that overrides
    ``la``'s τ); the keys it does not set follow the dataset's policy as its base does
    (LDAM-DRW's ``drw_epoch`` on ImageNet-LT).
    """
    from lt_bench.methods import METHODS, config_variants
    from lt_bench.methods._variants import VARIANT_KEYS

    cls = method_class(config, method)
    variants = config_variants(config)
    known = set(method_names(config))
    given = dict(config.get("methods", {}).get(method) or {})
    if method in variants:
        own, given = {k: v for k, v in given.items() if k not in VARIANT_KEYS}, {}
    else:
        own = {}
    unknown = set(given) - set(cls.defaults)
    if unknown:
        raise ConfigError(f"methods.{method}: unknown hyper-parameter(s) {sorted(unknown)}; "
                          f"valid: {sorted(cls.defaults) or 'none'}")
    over = dict(config.get("method_overrides", {}).get(dataset) or {})
    # a method's name holds overrides of that method only (toy: {adaptformer_la: {epochs: 2}})
    per_method = {k: over.pop(k) for k in list(over) if k in known}
    finetune = over.pop(FINETUNE_GROUP, None) or {}
    tuners = [c for _, c in METHODS.items() if c.consumes == "images"]
    if not isinstance(finetune, dict):
        raise ConfigError(f"method_overrides.{dataset}.{FINETUNE_GROUP}: expected a mapping of "
                          f"fine-tuning hyper-parameters, got {finetune!r}")
    wrong = set(finetune) - set().union(*(c.defaults for c in tuners))
    if wrong:
        raise ConfigError(f"method_overrides.{dataset}.{FINETUNE_GROUP}: unknown fine-tuning "
                          f"hyper-parameter(s) {sorted(wrong)}; valid: "
                          f"{sorted(set().union(*(c.defaults for c in tuners)))}")
    bad = set(over) - set().union(*(c.defaults for _, c in METHODS.items()))
    if bad:
        raise ConfigError(f"method_overrides.{dataset}: unknown hyper-parameter(s) "
                          f"{sorted(bad)} (a method's name holds overrides of that method)")
    for name, sub in per_method.items():
        if not isinstance(sub, dict):
            raise ConfigError(f"method_overrides.{dataset}.{name}: expected a mapping of "
                              f"{name}'s hyper-parameters, got {sub!r}")
        valid = method_class(config, name).defaults
        wrong = set(sub) - set(valid)
        if wrong:
            raise ConfigError(f"method_overrides.{dataset}.{name}: unknown hyper-parameter(s) "
                              f"{sorted(wrong)}; valid: {sorted(valid)}")
    mine = per_method.get(method) or {}
    group = finetune if cls.consumes == "images" else {}
    base = per_method.get(cls.variant_of) or {} if method in variants else {}
    return {**cls.defaults, **given, **{k: v for k, v in over.items() if k in cls.defaults},
            **group, **base, **own, **mine}
