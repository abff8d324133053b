"""Method variants: a registered method under a new name with its own hyper-parameters,
declared in config.yaml's ``methods:`` (README, "Benchmark your own method")::

    methods:
      la_tau05: {base: la, tau: 0.5}
      la_tau15: {base: la, tau: 1.5, display: "LA (τ=1.5, mine)"}

A variant is a subclass of its base made here: ``name`` the variant's, ``defaults`` the
**base class's defaults ⊕ the variant's own keys**, ``display`` its ``display:`` or one made
from the keys whose value differs from the base's defaults ("LA (τ=0.5)"; ``view: fivecrop``
reads "TTE": "LA (TTE)"), ``variant_of``
the base's name. Everything else is the base's — what it consumes, its ``requires`` (a
variant of ``gla`` builds on the suite's ``la`` runs, as ``gla`` does), its member axis,
``validate()``, ``fit`` — so a variant runs wherever its base runs, under its own name: its
own run folders, fit keys, rows, MLflow runs, and a ``vs_base`` significance row.

Not the base's config entry: a variant is exactly its own line. Were ``methods.la`` part of
it, editing the base row's setting would silently move every point of a sweep over it (and
its cached runs would no longer say what they ran), and two configs with the same variant
line could run different things. A variant of a variant is refused for the same reason
(one line, one base; copy the keys instead).

This module is the one place a method name resolves under a config: :func:`resolve_method`
(the config side: lt_bench.config, lt_bench.plan) and :func:`declare_variants` (a job or a
report command: ``lt-bench --variants JSON <command>`` registers them in ``METHODS`` with
origin ``config``, so the run layer, the report and tracking look a variant up like any
registered method).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from lt_bench.errors import InputValidationError
from lt_bench.methods._base import METHODS, Method, display_of

#: the keys of a variant's entry that are not its base's hyper-parameters
VARIANT_KEYS = ("base", "display")
#: the registry origin of a variant (``lt-bench list methods`` shows it)
ORIGIN = "config"
#: a variant's name becomes a run folder and the workflow's ``method`` wildcard
NAME = re.compile(r"^[a-z0-9][a-z0-9_]*$")
#: hyper-parameter names shown as their symbol in a generated display (those the LaTeX
#: tables render: lt_bench/report/format.py tex_escape)
SYMBOLS = {"tau": "τ", "rho": "ρ"}
#: (key, value) pairs a generated display shows as a word: a method's TTE twin
#: (``{base: la, view: fivecrop}``) is "LA (TTE)", the label of LIFT's tables for the
#: five-crop test-time ensemble, beside its base's row (docs/protocol.md, "Both TTE rows")
WORDS = {("view", "fivecrop"): "TTE"}

_made: dict[tuple[str, str], type[Method]] = {}


def is_variant(entry: Any) -> bool:
    """A ``methods:`` entry that declares a variant (it names a ``base``)."""
    return isinstance(entry, dict) and "base" in entry


def config_variants(config: dict[str, Any] | None) -> dict[str, dict[str, Any]]:
    """The variant entries of a config's ``methods:``, in config order."""
    methods = (config or {}).get("methods") or {}
    return {n: dict(e) for n, e in methods.items() if is_variant(e)} \
        if isinstance(methods, dict) else {}


def registered_names() -> list[str]:
    """The registered methods (built-in and plugins), without variants declared in this
    process."""
    entries, _ = METHODS.listing()
    METHODS.names()  # raises a broken plugin's one line
    return [n for n, _, origin in entries if origin != ORIGIN]


def check_types(where: str, given: dict[str, Any], defaults: dict[str, Any]) -> None:
    """Each value has its default's type where that is unambiguous: a number for a number
    (an integer's range is the method's validate()), a list for a list, a mapping for a
    mapping. Strings and booleans are not checked here (``num_workers: auto`` takes an
    integer, ``tte: false`` takes ``both``): the method's validate() names their values."""
    kinds = (((int, float), "a number"), ((list, tuple), "a list"), (dict, "a mapping"))
    for key, value in given.items():
        default = defaults.get(key)
        if default is None or isinstance(default, bool):
            continue
        for types, text in kinds:
            if isinstance(default, types) and (
                    not isinstance(value, types) or isinstance(value, bool)):
                raise InputValidationError(
                    f"{where}: {key} = {value!r}; expected {text} (the method's default "
                    f"is {default!r})")


def _knob(key: str, value: Any) -> str:
    """One changed key of a generated display: its word (:data:`WORDS`), else ``k=v``."""
    word = WORDS.get((key, value)) if isinstance(value, str) else None
    return word or f"{SYMBOLS.get(key, key)}={_short(value)}"


def _noted(display: str, note: str) -> str:
    """``display`` with a variant's note: "LA (τ=0.5)"; inside a closing parenthesis it
    already has, "LA (post-hoc, TTE)" rather than "LA (post-hoc) (TTE)"."""
    if display.endswith(")") and "(" in display:
        return f"{display[:-1]}, {note})"
    return f"{display} ({note})"


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    return value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))


def variant_class(name: str, entry: dict[str, Any], siblings=()) -> type[Method]:
    """The method class of the variant ``name`` declared by ``entry`` (checked; one line
    naming ``methods.<name>`` for each problem); ``siblings``: the names of the other
    variants declared beside it (a base among them is a variant of a variant)."""
    where = f"methods.{name}"
    registered = registered_names()
    if name in registered:
        raise InputValidationError(
            f"{where}: a variant (it names a base) cannot take the name of the registered "
            f"method {name!r}; choose another name")
    base = entry.get("base")
    if isinstance(base, str) and base not in registered and base in siblings:
        raise InputValidationError(
            f"{where}: base {base!r} is itself a variant; a variant's base is a registered "
            f"method (copy {base!r}'s keys into {name!r} and name its base)")
    key = (name, json.dumps(entry, sort_keys=True, default=str))
    if key in _made:
        return _made[key]
    if not NAME.match(name):
        raise InputValidationError(f"{where}: a variant's name becomes a run folder: "
                                   "lower-case letters, digits and '_' only")
    if not isinstance(base, str) or base not in registered:
        raise InputValidationError(f"{where}: unknown base {base!r}; valid bases: "
                                   f"{', '.join(registered)}")
    display = entry.get("display")
    if display is not None and not (isinstance(display, str) and display.strip()):
        raise InputValidationError(f"{where}: display = {display!r}; expected a non-empty "
                                   "string (the name of its rows in the tables)")
    base_cls = METHODS.get(base)
    own = {k: v for k, v in entry.items() if k not in VARIANT_KEYS}
    unknown = sorted(set(own) - set(base_cls.defaults))
    if unknown:
        raise InputValidationError(
            f"{where}: unknown hyper-parameter(s) {unknown} for base {base!r}; valid: "
            f"{sorted(base_cls.defaults) or 'none'}")
    check_types(where, own, base_cls.defaults)
    knobs = {k: v for k, v in own.items() if base_cls.defaults.get(k) != v}
    note = ", ".join(_knob(k, v) for k, v in knobs.items()) if knobs else name
    attrs: dict[str, Any] = {
        "name": name, "defaults": {**base_cls.defaults, **own}, "variant_of": base,
        "display": display or _noted(display_of(base_cls), note),
        "description": f"variant of {base}: {json.dumps(own, default=str)}",
        "__module__": base_cls.__module__, "__doc__": f"The variant {name!r} of {base!r}."}
    base_label = getattr(base_cls, "label", None)
    if base_label is not None:  # LDAM's "LDAM-DRW" where DRW ran, then the variant's keys
        attrs["label"] = staticmethod(
            (lambda hp: display) if display else (lambda hp: _noted(base_label(hp), note)))
    cls = type(f"{base_cls.__name__}Variant_{name}", (base_cls,), attrs)
    try:
        cls()  # the base's validate() on the variant's values
    except InputValidationError as e:
        raise InputValidationError(f"{where}: {e}") from None
    _made[key] = cls
    return cls


def resolve_method(name: str, config: dict[str, Any] | None = None) -> type[Method]:
    """The method class of ``name`` under ``config``: its variant (``methods.<name>`` names
    a base), else the registered method (an error listing the valid names)."""
    variants = config_variants(config)
    if name in variants:
        return variant_class(name, variants[name], siblings=variants)
    return METHODS.get(name)


def declare_variants(specs: dict[str, Any]) -> list[str]:
    """Register each variant of ``specs`` ({name: {base: ..., key: value}}) in ``METHODS``
    (origin ``config``) for this process; their names."""
    if not isinstance(specs, dict):
        raise InputValidationError(f"--variants: expected a JSON object {{name: {{\"base\": "
                                   f"METHOD, ...}}}}, got {type(specs).__name__}")
    for name, entry in specs.items():
        if not is_variant(entry):
            raise InputValidationError(f"--variants: {name!r} names no base; expected "
                                       f"{{\"{name}\": {{\"base\": METHOD, ...}}}}")
        METHODS.declare(name, variant_class(name, entry, siblings=specs), ORIGIN)
    return list(specs)


def read_variants_arg(value: str) -> dict[str, Any]:
    """``--variants``: a JSON object, or a config file (YAML) whose ``methods:`` variants
    are taken."""
    text = value.strip()
    if text.startswith("{"):
        try:
            return json.loads(text)
        except json.JSONDecodeError as e:
            raise InputValidationError(f"--variants: not valid JSON ({e.msg}); expected "
                                       "{name: {\"base\": METHOD, ...}} or a config file") from None
    path = Path(value)
    if not path.is_file():
        raise InputValidationError(f"--variants {value}: not a JSON object and no such file; "
                                   "expected {name: {\"base\": METHOD, ...}} or a config.yaml")
    import yaml

    return config_variants(yaml.safe_load(path.read_text(encoding="utf-8")) or {})


def base_of(method: str) -> str | None:
    """The base of a variant known to this process (declared), else None."""
    if method not in METHODS:
        return None
    return METHODS.get(method).variant_of
