"""The val/test views a features-consuming run reads (its ``view`` hyper-parameter;
docs/protocol.md, "test-time ensemble" and "knobs under TTE").

``centre`` is a split's ``feature`` column (the test transform, always there);
``fivecrop`` is its ``crops`` column, whose logits a run averages (LIFT's TTE). Both come
from one extraction pass (each image decoded once, encoded through both transforms;
``features/extract.py``). The view a run reads when it asks for none (``view: auto``) is
the file's ``default_view``: ``centre`` under ``extract.tte: both`` (metadata
``default_view``), the crops under ``fivecrop`` (files without the key: ``fivecrop`` where
they have crops, so ``fivecrop`` extractions read as before views existed). One reader of
the store's format stays ``store.py``; this module only selects from what it read.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from lt_bench.errors import InputValidationError
from lt_bench.features.store import FeatureSplit

#: the views a features-consuming run may read (``view`` hyper-parameter); ``auto``: the
#: file's default view
VIEWS = ("auto", "centre", "fivecrop")


def default_view(split: FeatureSplit) -> str:
    """The view ``auto`` reads: the file's ``default_view`` (``extract.tte: both`` records
    ``centre``), else the crops where there are crops (``fivecrop``), else ``centre``."""
    return split.meta.get("default_view") or ("fivecrop" if split.crops is not None
                                              else "centre")


def check_view(view: Any, method: str) -> None:
    """``view`` is one of :data:`VIEWS`; one line naming the method otherwise."""
    if view not in VIEWS:
        raise InputValidationError(f"method {method!r}: view = {view!r}; valid: "
                                   f"{', '.join(VIEWS)}")


def resolve_view(split: FeatureSplit, view: str | None) -> str:
    """The view ``view`` names on ``split``: itself, or :func:`default_view` for ``auto``
    (and None: run folders written before views, whose reader took the crops if any)."""
    return default_view(split) if view in (None, "auto") else view


def split_view(split: FeatureSplit, view: str | None, where: str | Path) -> FeatureSplit:
    """``split`` as a run of ``view`` reads it: ``centre`` without crops (its ``feature``
    column), ``fivecrop`` with them (logits averaged over the crops by the reader);
    ``auto``/None is :func:`default_view`. The arrays are shared, not copied. A
    ``fivecrop`` view of a split without crops is one line naming ``where`` (the features
    folder) and the fix."""
    view = resolve_view(split, view)
    if view == "centre":
        return split if split.crops is None else replace(split, crops=None)
    if view != "fivecrop":
        raise InputValidationError(f"view {view!r}; valid: {', '.join(VIEWS)}")
    if split.crops is None:
        raise InputValidationError(
            f"features folder {where}: view 'fivecrop' asked, but its "
            f"{split.meta.get('split', 'val/test')} features have no five-crop view (extracted "
            "with extract.tte: none); re-extract them with extract.tte: both (centre and "
            "five-crop views) or use view: centre")
    return split
