"""The one base class of user errors.

Every error a user can fix (a bad value on the command line or in config.yaml, a missing
or corrupt input file, a refused checkpoint, an unwritable results folder) derives from
:class:`UserError`. The CLI prints its message on one line and exits with
:data:`EXIT_USER_ERROR`; ``lt-bench -v`` shows the traceback. Anything else is a bug and
surfaces as a traceback.
"""

from __future__ import annotations

#: exit status of every user error (argparse's own usage errors also exit with 2)
EXIT_USER_ERROR = 2


class UserError(Exception):
    """An error whose message names the input, what was wrong and what was expected."""


class InputValidationError(UserError, ValueError):
    """An input file or value failed a check at the boundary (NaN features, a bad prior,
    duplicate split lines, a base run of the wrong backbone, ...)."""


class MissingInputError(UserError, FileNotFoundError):
    """An input file or folder the user named, or an earlier stage should have made, is not
    there (a checkpoint, a run's stored logits, a ``predictor.json``, the runs of a report).
    A ``FileNotFoundError`` too, so callers that look for a missing file still catch it."""


class DuplicateNameError(UserError, ValueError):
    """A name registered twice in one registry (lt_bench/registry.py): a plugin or a
    config declaration that reuses a taken method, backbone or dataset name. A
    ``ValueError`` too, for callers that catch the registries' errors as before."""


class WeightsUnavailableError(UserError, RuntimeError):
    """A backbone's pretrained weights could not be fetched (no network, a hub that is
    down) and no local file was given (lt_bench/backbones/base.py). A ``RuntimeError``
    too, as open_clip and timm raise it, for callers that catch theirs."""
