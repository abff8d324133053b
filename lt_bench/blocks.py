"""Row blocks of an N × K array: the one block size of every computation that goes a block
of rows at a time so that its float64 temporaries stay one block, not N × K (iNat2018's
24,426 × 8,142 split is 1.6 GB in float64): the metrics' softmax (lt_bench/metrics.py),
the ensembles' combines (lt_bench/runs/ensemble.py) and weight fit
(lt_bench/methods/_combine.py), the k-NN votes (lt_bench/methods/knn.py). Each of them is
row by row, so the blocks give the bits of one whole call (tests/test_combine_blocks.py).
A five-crop view's logits (a linear head's, zero-shot's for the prior) go in blocks of
images of their own size (:func:`crop_blocks`).
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


#: elements (images × crops × K) of one block of a five-crop view's logits: 64 MiB of
#: float64, 206 images × 5 crops at iNat2018's K = 8,142. Not BLOCK_ELEMENTS: each block is
#: one product with the K × D weights (a linear head normalises them again per call, ~20 ms
#: at that shape), which 25-image blocks would repeat ~1,000 times a split; 2**23 costs
#: ~15 % over one whole call. The toy world's splits fit one block (one call, as before).
CROP_BLOCK_ELEMENTS = 2**23


def crop_blocks(n: int, crops: int, k: int) -> list[slice]:
    """Row blocks of ``n`` images whose logits are ``crops`` × ``k`` each
    (:data:`CROP_BLOCK_ELEMENTS` a block, at least one image). Unlike the row-by-row
    computations above, a block's matrix product may round differently from one whole
    call's (BLAS blocks by the row count), so where one block holds the split the call is
    the whole split's."""
    return row_blocks(n, crops * k, rows=max(1, CROP_BLOCK_ELEMENTS // max(crops * k, 1)))
