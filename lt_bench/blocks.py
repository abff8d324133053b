"""Row blocks of an N × K array: the one block size of every computation that goes a block
of rows at a time so that its float64 temporaries stay one block, not N × K (iNat2018's
24,426 × 8,142 split is 1.6 GB in float64): the metrics' softmax (lt_bench/metrics.py),
the ensembles' combines (lt_bench/runs/ensemble.py) and weight fit
(lt_bench/methods/_combine.py). Each of them is row by row, so the blocks give the bits of
one whole call (tests/test_combine_blocks.py).
"""

from __future__ import annotations

#: elements (rows × K) of one block: 8 MiB in float64 (128 rows at K = 8,142). 2**23 was
#: tried first: prob_mean's log-sum-exps copy an (M, rows, K) block ~6 times, 1.2 GB
#: (benchmarks/README.md, "Combine at iNat2018's shape")
BLOCK_ELEMENTS = 2**20


def row_blocks(n: int, k: int, rows: int | None = None) -> list[slice]:
    """The slices of ``range(n)`` in blocks of ``rows`` rows (default: as many rows of
    ``k`` elements as fit in :data:`BLOCK_ELEMENTS`, at least one); the last may be short."""
    step = rows or max(1, BLOCK_ELEMENTS // max(k, 1))
    return [slice(a, a + step) for a in range(0, n, step)]
