"""The pre-training label prior q̂ of a backbone (GLA; docs/architecture.md §1, §3).

One owner of the prior file and its estimate:

- ``file.py``: the one schema (``label``, ``q_hat``, optional ``q_true``; T, dataset and
  backbone in the metadata), its writer and its validating reader — used by the runs, the
  report and toy pre-training;
- ``estimate.py``: GLA's estimator on (logits, labels): temperature, the q̂ solvers,
  agreement with a known prior;
- ``zero_shot.py``: q̂ of a features folder (zero-shot logits on val → prior file);
- ``cli.py``: the ``lt-bench prior`` verb.
"""

from lt_bench.prior.estimate import (
    GLA_SGD_STEPS,
    SOLVERS,
    T_BOUND,
    PriorSolverDiverged,
    calibrate_temperature,
    estimate_prior,
    fit_prior,
    gla_sgd_prior,
    mean_confidence,
    prior_agreement,
)
from lt_bench.prior.file import (
    SUM_TOLERANCE,
    PriorFile,
    read_prior,
    read_prior_meta,
    read_true_prior,
    write_prior,
)
from lt_bench.prior.zero_shot import prior_from_features, zero_shot_logits

__all__ = [
    "GLA_SGD_STEPS", "SOLVERS", "SUM_TOLERANCE", "T_BOUND", "PriorFile", "PriorSolverDiverged",
    "calibrate_temperature", "estimate_prior", "fit_prior", "gla_sgd_prior", "mean_confidence",
    "prior_agreement", "prior_from_features", "read_prior", "read_prior_meta",
    "read_true_prior", "write_prior", "zero_shot_logits",
]
