"""Checks of config.yaml that need the registries, and resolution of the grid.

The JSON schema (workflow/schemas/config.schema.yaml) catches typos and types; this
module catches names that only the registries know (unknown suite, dataset, backbone or
method), checks the backbones and datasets the config declares (``backbones:``, and
``datasets:`` entries with a ``type``: lt_bench/backbones/declared.py, lt_bench/data/oltr.py)
and resolves each method's hyper-parameters for one dataset.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


class ConfigError(ValueError):
    pass


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


def resolve_suite(config: dict[str, Any]) -> Suite:
    from lt_bench.backbones import BACKBONES
    from lt_bench.data import DATASETS
    from lt_bench.methods import METHODS

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
    _check_names("method", s["methods"], METHODS, f"{where}.methods")
    for m in config.get("methods", {}):
        if m not in METHODS:
            raise ConfigError(f"methods: unknown method {m!r}; valid methods: "
                              f"{', '.join(METHODS.names())}")
    for m in s["methods"]:
        members = METHODS.get(m).defaults.get("members") if METHODS.get(m).consumes == "runs" \
            else None
        given = (config.get("methods", {}).get(m) or {}).get("members", members)
        if given is not None and given not in METHODS:
            raise ConfigError(f"methods.{m}.members: unknown method {given!r}; valid methods: "
                              f"{', '.join(METHODS.names())}")
        for req in METHODS.get(m).requires:
            if req not in s["methods"]:
                raise ConfigError(f"{where}.methods: {m!r} builds on {req!r}, which is not "
                                  "in the suite; add it")
    for d in config.get("method_overrides", {}):
        if d not in DATASETS and d not in datasets:
            raise ConfigError(f"method_overrides: unknown dataset {d!r}; valid datasets: "
                              f"{', '.join(DATASETS.names() + datasets)}")
    ft = s.get("finetune_seeds")
    return Suite(name, list(s["datasets"]), list(s["backbones"]), list(s["methods"]),
                 [int(x) for x in s["seeds"]], None if ft is None else [int(x) for x in ft])


#: the key of ``method_overrides.<dataset>`` holding overrides of every fine-tuned method
FINETUNE_GROUP = "finetune"


def method_hparams(config: dict[str, Any], method: str, dataset: str) -> dict[str, Any]:
    """Resolved hyper-parameters: method defaults < config.methods < per-dataset overrides.

    Overrides apply only to keys the method accepts (``epochs: 20`` for iNat2018 touches
    trained heads, not zero-shot). ``finetune: {...}`` holds overrides of every method that
    fine-tunes the backbone (consumes images), one setting for all of them (the toy world's
    shorter fine-tuning must keep the CE control like-for-like with the LA runs); a
    method's own name holds overrides of that method only, applied last.
    """
    from lt_bench.methods import METHODS

    cls = METHODS.get(method)
    given = dict(config.get("methods", {}).get(method) or {})
    unknown = set(given) - set(cls.defaults)
    if unknown:
        raise ConfigError(f"methods.{method}: unknown hyper-parameter(s) {sorted(unknown)}; "
                          f"valid: {sorted(cls.defaults) or 'none'}")
    over = dict(config.get("method_overrides", {}).get(dataset) or {})
    # a method's name holds overrides of that method only (toy: {adaptformer_la: {epochs: 2}})
    per_method = {k: over.pop(k) for k in list(over) if k in METHODS}
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
        wrong = set(sub) - set(METHODS.get(name).defaults)
        if wrong:
            raise ConfigError(f"method_overrides.{dataset}.{name}: unknown hyper-parameter(s) "
                              f"{sorted(wrong)}; valid: {sorted(METHODS.get(name).defaults)}")
    mine = per_method.get(method) or {}
    group = finetune if cls.consumes == "images" else {}
    return {**cls.defaults, **given, **{k: v for k, v in over.items() if k in cls.defaults},
            **group, **mine}
