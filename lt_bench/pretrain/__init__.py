"""Toy-CLIP pre-training (``lt-bench pretrain``; docs/architecture.md §5): each toy CLIP
learns from image–caption pairs drawn with its own long-tailed prior, and its folder gets
``checkpoint.pt``, ``prior.parquet`` (the true prior and GLA's q̂, in the one prior-file
schema of ``lt_bench.prior``) and ``pretrain.json`` (the ground truths).

A floor above ``prior`` (tests/test_layout.py FLOORS): it uses GLA's estimator and the
prior file, so nothing on the prior's floor imports back up.

- ``toy_clip.py``: the driver and the training loop; the pre-training prior;
- ``model.py``: what one step sees (rendered batches, caption bank, compact embedding, loss);
- ``evaluate.py``: the ground truths (zero-shot, q̂, linear probe vs the prior).
"""

from lt_bench.pretrain.toy_clip import PRETRAIN_DEFAULTS, pretrain_prior, pretrain_toy_clip

__all__ = ["PRETRAIN_DEFAULTS", "pretrain_prior", "pretrain_toy_clip"]
