"""``lt-bench fit`` with every trained head's epoch cut to its first S mini-batches.

``python benchmarks/scale_bounded_fit.py S fit --features-dir … --runs …``: the real head
job (features read once, every method's fit, tuning on val, ``write_run``'s evaluation and
stored files), only the SGD loop of ``lt_bench.methods._heads.HeadFit.fit`` draws S batches
per epoch instead of N_train / batch size. What it bounds is time, not memory: a step holds
one batch (batch size × D, and the K × D head's gradient), whatever the number of steps,
so the job's peak RSS at a dataset's full shape is measured in minutes instead of hours
(iNat2018: 3,419 steps per epoch, ~12 min per head-epoch on one core). Used by
``benchmarks/scale.py --head-job … --max-steps S``.
"""

from __future__ import annotations

import itertools
import sys


def main(argv: list[str]) -> int:
    steps = int(argv[0])
    import lt_bench.methods._heads as heads

    whole = heads.batch_indices
    heads.batch_indices = lambda *a, **k: itertools.islice(whole(*a, **k), steps)
    from lt_bench.cli import main as lt_main

    return lt_main(argv[1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
