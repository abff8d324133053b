"""Paired bootstrap intervals of top-1 differences between runs, over test images.

For two runs A and B on the same test split, the difference of their top-1 accuracies is
``mean_i d_i`` with ``d_i = 1[A right on i] − 1[B right on i]``. A bootstrap replicate
redraws, **within each class**, as many test images as the class has, with replacement
(so the class balance of the test set is kept), and applies the **same** redrawn indices
to A and B (paired: the images both get right or wrong cancel). The 95 % interval is the
2.5 / 97.5 percentile of the replicates (percentile bootstrap).

Several seeds: runs are matched by seed (seed s of A with seed s of B; a row with one seed,
e.g. a deterministic method, is paired with every seed of the other). The statistic is the
difference of the seed-mean top-1, ``mean_i mean_s d_{s,i}``, and every seed uses the
same image resample, so the interval expresses the uncertainty from the finite test set
around the seed average; the spread over seeds is reported separately (mean ± std).
Replicates come from ``numpy.random.default_rng(seed)``: the same seed, the same interval.

Comparisons the tables make (``comparisons``): each method vs LA on the same backbone;
each variant of a method (a config's ``methods.<name>: {base: ...}``) vs its base, same
backbone label (``vs_base``);
**each backdoor** (``BACKDOORS``: the frozen-feature one over LA heads, the fine-tuned one
over AdaptFormer-LA runs; one per track) vs its own best single member chosen on val (per
seed, the member with the best ``val_top1``); each ensemble control (any other run
combining several models that is not itself a backdoor) vs the frozen-feature backdoor.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from lt_bench.errors import InputValidationError

LEVEL = 0.95
N_BOOT = 2000
CHUNK = 1 << 22  # resampled indices per block (memory stays ~32 MB whatever the test set)
COLUMNS = ["dataset", "kind", "a_backbone", "a_method", "b_backbone", "b_method", "b_label",
           "n_seeds", "n_images", "a_top1", "b_top1", "diff", "lo", "hi", "significant",
           "n_boot", "boot_seed"]
#: the backdoor of each track (the paper's method): each is compared with its own best
#: member; every other ensemble is a control of the frozen-feature backdoor
BACKDOORS = {"backdoor": "frozen heads", "backdoor_finetuned": "fine-tuning"}
CONTROLLED = "backdoor"


def paired_bootstrap(labels: np.ndarray, correct_a: np.ndarray, correct_b: np.ndarray,
                     n_boot: int = N_BOOT, seed: int = 0, level: float = LEVEL) -> dict:
    """Interval of ``top1(A) − top1(B)`` (fractions), resampling images within classes.

    ``correct_a``/``correct_b``: booleans of shape (N,) or (S, N), row s of A paired with
    row s of B (one row per seed). Returns ``diff`` (the observed difference of seed-mean
    top-1), ``lo``, ``hi``, ``n_images``, ``n_seeds``, ``n_boot``.
    """
    return paired_bootstraps(labels, [(correct_a, correct_b)], n_boot, seed, level)[0]


def _seed_mean_difference(labels: np.ndarray, correct_a, correct_b) -> tuple[np.ndarray, int]:
    a = np.atleast_2d(np.asarray(correct_a, dtype=np.float64))
    b = np.atleast_2d(np.asarray(correct_b, dtype=np.float64))
    if a.shape != b.shape or a.shape[1] != len(labels):
        raise InputValidationError(
            f"paired bootstrap: correctness arrays of shape {a.shape} and {b.shape} for "
            f"{len(labels)} labels; expected two arrays of shape (seeds, {len(labels)})")
    return (a - b).mean(0), a.shape[0]  # per image: the seed-mean difference


def paired_bootstraps(labels: np.ndarray, pairs: list[tuple[np.ndarray, np.ndarray]],
                      n_boot: int = N_BOOT, seed: int = 0, level: float = LEVEL) -> list[dict]:
    """:func:`paired_bootstrap` of every ``(correct_a, correct_b)`` pair on one test split.

    The replicates are drawn once and shared: replicate r is the same image resample for
    every pair, exactly the draws :func:`paired_bootstrap` makes for one pair with this
    seed. A replicate's statistic is ``counts_r · d / N`` (``counts_r``: how often each
    image was drawn), so all pairs cost one matrix product per block of replicates instead
    of one gather each (the demo's 53 comparisons: 13 s → under 1 s; benchmarks/README.md).
    """
    labels = np.asarray(labels)
    if not 0 < level < 1 or n_boot < 1:
        raise InputValidationError(f"paired bootstrap: level {level} must be in (0, 1) and "
                                   f"n_boot {n_boot} >= 1")
    diffs = [_seed_mean_difference(labels, a, b) for a, b in pairs]
    n = len(labels)
    if not diffs:
        return []
    order = np.argsort(labels, kind="stable")
    d = np.stack([dv[order] for dv, _ in diffs], axis=1)  # (N, pairs)
    _, start, count = np.unique(labels[order], return_index=True, return_counts=True)
    # position i of a replicate draws uniformly among the images of its own class
    first = np.repeat(start, count)
    size = np.repeat(count, count)
    rng = np.random.default_rng(seed)
    stats = np.empty((n_boot, len(diffs)))
    per_block = max(1, CHUNK // max(n, 1))
    for lo in range(0, n_boot, per_block):
        k = min(per_block, n_boot - lo)
        idx = first + (rng.random((k, n)) * size).astype(np.int64)
        idx += (np.arange(k) * n)[:, None]  # row r's draws counted in its own row
        counts = np.bincount(idx.ravel(), minlength=k * n).reshape(k, n)
        stats[lo:lo + k] = counts @ d / n
    alpha = (1 - level) / 2
    lo_q, hi_q = np.quantile(stats, [alpha, 1 - alpha], axis=0)
    return [{"diff": float(d[:, j].mean()), "lo": float(lo_q[j]), "hi": float(hi_q[j]),
             "n_images": n, "n_seeds": n_seeds, "n_boot": n_boot}
            for j, (_, n_seeds) in enumerate(diffs)]


# --- runs ---------------------------------------------------------------------------------

class _Correct:
    """Per run folder: (labels, correct) on test, read once. Each run's stored predictions
    (``RunFolder.predictions``: the arg-max ``write_run`` stored of the logits its metrics
    were computed from) — O(N) per run, where rebuilding the logits was a float64
    N × D × K product (~150 GMAC a run at iNat2018's shape: ~2 h for the paper suite,
    benchmarks/README.md "scale.py"). With ``loader(run_dir, split) -> (labels, logits)``
    (tests, ``lt-bench compare``'s callers), the arg-max of its logits instead."""

    def __init__(self, loader: Callable | None = None):
        self._loader = loader
        self._cache: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def __call__(self, run_dir: Path) -> tuple[np.ndarray, np.ndarray]:
        key = str(run_dir)
        if key not in self._cache:
            if self._loader is None:
                from lt_bench.runs.run_folder import RunFolder

                labels, pred = RunFolder.open(run_dir).predictions("test")
                self._cache[key] = (labels, pred == labels)
            else:
                self._set(key, *self._loader(Path(run_dir), "test"))
        return self._cache[key]

    def _set(self, key: str, labels, logits) -> None:
        self._cache[key] = (np.asarray(labels), np.asarray(logits).argmax(1) ==
                            np.asarray(labels))

    def prefetch_ensembles(self, run_dirs: list[Path]) -> None:
        """Correctness of the ensemble runs among ``run_dirs`` that stored no predictions
        (run folders written before ``write_run`` stored them) and of their members, each
        member set's test logits rebuilt once for every ensemble that combines exactly
        those members (the backdoor, its probability-mean and learned-weight controls all
        combine the same LA runs). Without this, every such ensemble rebuilds its members
        and each member rebuilds its own logits again. The logits are those of the seam
        (``EnsembleRun``: same members, its method's ``combine`` and state), so the result
        is the one ``__call__`` gives; only one member set is held at a time."""
        from lt_bench.runs.layout import predictions_path
        from lt_bench.runs.run_folder import RunFolder, run_logits

        groups: dict[tuple[str, ...], list] = {}
        for d in map(RunFolder.open, run_dirs):
            if str(d) in self._cache or predictions_path(d, "test").is_file() \
                    or d.predictor_spec["kind"] != "ensemble":
                continue
            e = d.predictor  # the seam's EnsembleRun: members, rule, weights
            groups.setdefault(tuple(map(str, e.members)), []).append((d, e))
        for members, ensembles in groups.items():
            labels, zs = None, []
            for m in members:
                y, z = run_logits(Path(m), "test")
                if labels is not None and not np.array_equal(labels, y):
                    break  # let the seam raise its own error, ensemble by ensemble
                labels = y
                zs.append(z)
                self._cache.setdefault(m, (np.asarray(y), np.asarray(z).argmax(1) ==
                                           np.asarray(y)))
            else:
                for d, e in ensembles:
                    self._set(str(d), labels, e.combine(zs))


def _pair(a: dict[int, Path], b: dict[int, Path | list]) -> list[tuple[Path, Path]]:
    common = sorted(set(a) & set(b))
    if common:
        return [(a[s], b[s]) for s in common]
    if len(a) == 1:
        only = next(iter(a.values()))
        return [(only, b[s]) for s in sorted(b)]
    if len(b) == 1:
        only = next(iter(b.values()))
        return [(a[s], only) for s in sorted(a)]
    return []


def paired_correct(a: dict[int, Path], b: dict[int, Path], correct: _Correct
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """(labels, correct_a, correct_b) of A and B over their seed pairs, one row per pair;
    None when no seed pairs up."""
    pairs = _pair(a, b)
    if not pairs:
        return None
    labels = None
    ca, cb = [], []
    for ra, rb in pairs:
        (ya, xa), (yb, xb) = correct(ra), correct(rb)
        for y, r in ((ya, ra), (yb, rb)):
            if labels is None:
                labels = y
            elif len(y) != len(labels) or not np.array_equal(y, labels):
                raise InputValidationError(
                    f"{r}: its test labels differ from those of {pairs[0][0]} (another test "
                    "split or order); runs compared must share the test split list")
        ca.append(xa)
        cb.append(xb)
    return labels, np.stack(ca), np.stack(cb)


def _index(run_dirs: list) -> dict:
    """{(dataset, backbone, method): {seed: RunFolder}} of the finished runs ``run_dirs``."""
    from lt_bench.runs.run_folder import RunFolder

    groups: dict[tuple, dict[int, RunFolder]] = {}
    for r in map(RunFolder.open, run_dirs):
        groups.setdefault((r.dataset, r.backbone, r.method), {})[int(r.seed or 0)] = r
    return groups


def _any_ensemble(runs: dict) -> bool:
    return any(r.is_ensemble for r in runs.values())


def comparisons(run_dirs: list[Path | str], n_boot: int = N_BOOT, seed: int = 0,
                loader: Callable | None = None) -> pd.DataFrame:
    """Every comparison the tables mark (see the module docstring), one row each.

    ``diff``/``lo``/``hi``/``a_top1``/``b_top1`` in percent points; ``significant``: the
    interval excludes 0. ``loader(run_dir, split) -> (labels, logits)`` defaults to
    ``lt_bench.runs.run_logits``.
    """
    from lt_bench.methods._variants import base_of
    from lt_bench.report.format import display_name

    groups = _index(run_dirs)
    correct = _Correct(loader)
    if loader is None:  # the seam's own logits: share member rebuilds between ensembles
        # (only where they are compared: every ensemble of a dataset with a backdoor run)
        with_backdoor = {key[0] for key in groups if key[2] == "backdoor"}
        correct.prefetch_ensembles([d for key, runs in groups.items()
                                    if key[0] in with_backdoor and _any_ensemble(runs)
                                    for d in runs.values()])
    pending = []  # (row, labels, correct_a, correct_b): bootstrapped together at the end

    def add(kind, ds, a_key, b_key, a, b, b_label):
        got = paired_correct(a, b, correct)
        if got is None:
            return
        row = {"dataset": ds, "kind": kind, "a_backbone": a_key[1], "a_method": a_key[2],
               "b_backbone": b_key[1], "b_method": b_key[2], "b_label": b_label}
        pending.append((row, *got))

    for key, runs in sorted(groups.items()):
        ds, bb, method = key
        # a config's variant (lt_bench/methods/_variants.py) vs its base, same backbone
        # label (an ensemble's variant vs its base ensemble too)
        base = base_of(method)
        if base is not None and (ds, bb, base) in groups:
            add("vs_base", ds, key, (ds, bb, base), runs, groups[(ds, bb, base)],
                display_name(base))
        if _any_ensemble(runs):
            continue
        la = groups.get((ds, bb, "la"))
        if method != "la" and la and base != "la":  # a variant of la: its vs_base row
            add("vs_la", ds, key, (ds, bb, "la"), runs, la, "LA")
    for key, runs in sorted(groups.items()):
        ds, bb, method = key
        if method not in BACKDOORS:
            continue
        best: dict = {}  # seed -> the member RunFolder
        chosen, member_methods = [], []
        for sd, d in runs.items():
            member = d.best_member("val") if d.member_paths else None  # recorded by the run
            if member is None:
                continue
            best[sd] = member
            chosen.append(member.backbone)
            member_methods.append(member.method)
        if best:
            label = "best member on val (" + ", ".join(sorted(set(map(str, chosen)))) + ")"
            b_method = ",".join(sorted(set(map(str, member_methods))))
            add("backdoor_vs_best_member", ds, key, (ds, "best_member", b_method), runs, best,
                label)
        if method != CONTROLLED:
            continue
        for other, oruns in sorted(groups.items()):
            if other[0] == ds and other != key and other[2] not in BACKDOORS \
                    and _any_ensemble(oruns) and base_of(other[2]) != CONTROLLED:  # vs_base
                add("control_vs_backdoor", ds, other, key, oruns, runs, "backdoor")
    return pd.DataFrame(_bootstrap_rows(pending, n_boot, seed), columns=COLUMNS)


def _bootstrap_rows(pending: list, n_boot: int, seed: int) -> list[dict]:
    """The table rows of ``pending`` comparisons, in order; one shared resample per test
    split (the comparisons whose labels are the same array)."""
    by_split: dict[bytes, list[int]] = {}
    for i, (_, labels, _, _) in enumerate(pending):
        by_split.setdefault(np.asarray(labels).tobytes(), []).append(i)
    results: dict[int, dict] = {}
    for members in by_split.values():
        labels = pending[members[0]][1]
        got = paired_bootstraps(labels, [(pending[i][2], pending[i][3]) for i in members],
                                n_boot, seed)
        results.update(zip(members, got, strict=True))
    rows = []
    for i, (row, _, ca, cb) in enumerate(pending):
        res = {**results[i], "a_top1": float(ca.mean()), "b_top1": float(cb.mean())}
        rows.append({**row, "n_seeds": res["n_seeds"], "n_images": res["n_images"],
                     **{k: 100 * res[k] for k in ("a_top1", "b_top1", "diff", "lo", "hi")},
                     "significant": bool(res["lo"] > 0 or res["hi"] < 0),
                     "n_boot": n_boot, "boot_seed": seed})
    return rows


def write_significance(table: pd.DataFrame, out: Path | str) -> Path:
    from lt_bench.io import atomic_path

    out = Path(out)
    with atomic_path(out) as tmp:
        table.to_csv(tmp, index=False, float_format="%.4f")
    return out


def read_significance(path: Path | str | None) -> pd.DataFrame | None:
    if path is None or not Path(path).is_file():
        return None
    df = pd.read_csv(path)
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        raise InputValidationError(f"{path}: significance table lacks columns {missing}; "
                                   "expected the output of `lt-bench significance`")
    df["significant"] = df["significant"].astype(str).str.lower().isin(["true", "1"])
    return df
