"""k-NN probe of the frozen features (the paper's Table 4): cosine k-NN on a feature bank.

Each query's k most cosine-similar bank images vote for their labels with weights
``exp(sim / temperature)`` (DINO's weighted k-NN); the class scores are the vote shares
``p_c`` and the logits ``log(p_c + 1e-6)`` (so softmax ≈ the vote shares for the ECE).

Two variants (``bank``):

* ``knn`` (ours, ``bank: train``): the long-tailed train split is the bank; ``k`` is chosen
  on val from ``k_grid`` (``k`` where val overlaps train: there every val image would find
  itself); temperature 0.07.
* ``knn_authors`` (``bank: val``): the authors' probe, ``knn_test`` in
  JiahaoChen1/Pre-train-Imbalance ``trainer.py`` with ``knn_predict`` of
  ``models/utils/evaluator.py``: the class-balanced **val** split is the bank, k = 200,
  T = 0.1, nothing tuned (val is the bank). Their scores are the unnormalised sums
  ``Σ exp(sim/T)``; ours are their shares, so the arg-max (top-1 and every accuracy) is
  theirs. The val split's own logits (``val_top1``) leave each val image out of its own
  neighbours (leave-one-out); the test split is theirs exactly.

Under a five-crop view (``view: fivecrop``, or ``auto`` on ``extract.tte: fivecrop``
features) every crop of a query votes on its own and the logits are the mean over the
crops of each crop's logits, as the run reports them (``split_features_logits``); ``k`` is
tuned on those crop-averaged val logits, i.e. on the view that is reported. The bank is
always the train split's single view. The val bank (``bank: val``) answers val
leave-one-out only on the centre view (a crop of a val image would find the image itself),
so ``knn_authors`` reads the centre view (``view: centre``) and ``bank: val`` refuses
``fivecrop``.

The run saves k, the temperature and the bank's path and sha256, so ``lt-bench logits``
rebuilds the logits without refitting.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from lt_bench.blocks import row_blocks
from lt_bench.errors import InputValidationError, MissingInputError
from lt_bench.io import sha256_file
from lt_bench.methods._base import METHODS, FitContext, FitResult, Method
from lt_bench.methods._reuse import choose, top1
from lt_bench.predictor_spec import predictor_spec_of, write_predictor_spec

EPS = 1e-6
#: the last neighbour search of this process: {(train sha256, k, queries' shape and hash):
#: (similarities, indices)}
_NEIGHBOURS: dict[tuple, tuple[np.ndarray, np.ndarray]] = {}


def _unit(x: np.ndarray):
    import torch

    t = torch.as_tensor(np.asarray(x, dtype=np.float32))
    return t / t.norm(dim=1, keepdim=True).clamp_min(1e-12)


def knn_neighbours(queries: np.ndarray, train: np.ndarray, k: int,
                   max_elements: int = 1 << 25,
                   exclude_self: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(similarities, indices) of the ``k`` most cosine-similar train rows per query,
    most similar first; computed in chunks of queries to bound memory. ``exclude_self``:
    the queries are the bank itself, row i never counts as query i's neighbour."""
    import torch

    tr = _unit(train)
    k = min(k, tr.shape[0] - (1 if exclude_self else 0))
    chunk = max(1, max_elements // max(tr.shape[0], 1))
    sims, idx = [], []
    q_all = _unit(queries)
    for lo in range(0, q_all.shape[0], chunk):
        s = q_all[lo:lo + chunk] @ tr.T
        if exclude_self:
            rows = torch.arange(s.shape[0])
            s[rows, rows + lo] = -float("inf")
        v, i = torch.topk(s, k, dim=1)  # sorted, descending
        sims.append(v.numpy())
        idx.append(i.numpy())
    if not sims:
        return np.zeros((0, k), np.float32), np.zeros((0, k), np.int64)
    return np.concatenate(sims), np.concatenate(idx)


def knn_vote_logits(sims: np.ndarray, neighbour_labels: np.ndarray, k: int,
                    temperature: float, num_classes: int, crops: int = 1) -> np.ndarray:
    """Logits ``log(p_c + 1e-6)`` from the first ``k`` neighbours' weighted votes. With
    ``crops`` > 1 the rows are each image's crops in turn, each crop votes on its own and an
    image's logits are the mean of its crops' (a five-crop view).

    A row block of images at a time (``lt_bench.blocks.row_blocks``), into one float32
    output: the float64 votes and their log of a whole split are N·C × K each (iNat2018's
    five-crop test: 8 GB apiece). Every step is row by row, so the blocks give the bits of
    one whole call."""
    n = len(sims) // crops
    out = np.empty((n, num_classes), np.float32)
    for rows in row_blocks(n, crops * num_classes):
        a, b = rows.start * crops, min(rows.stop, n) * crops
        s = sims[a:b, :k].astype(np.float64)
        w = np.exp((s - s[:, :1]) / temperature)  # shift by the max: the shares are unchanged
        votes = np.zeros((len(s), num_classes))
        np.add.at(votes, (np.arange(len(s))[:, None], neighbour_labels[a:b, :k]), w)
        votes /= votes.sum(1, keepdims=True)
        z = np.log(votes + EPS).astype(np.float32)
        out[rows] = z if crops == 1 else z.reshape(-1, crops, num_classes).mean(1)
    return out


def _digest(x: np.ndarray) -> bytes:
    return hashlib.blake2b(np.ascontiguousarray(x).data, digest_size=16).digest()


class KNNPredictor:
    """Rebuilds k-NN logits from the bank's features file (checked against its sha256).

    ``train_features`` is the bank's file (the train split, or val for ``bank: val``; the
    name is kept for the run folders written before the variant). Queries identical to the
    bank (its own val split) are answered leave-one-out."""

    kind = "knn"

    def __init__(self, k: int, temperature: float, train_features: str, train_sha256: str,
                 num_classes: int, bank: str = "train"):
        self.k, self.temperature = int(k), float(temperature)
        self.train_features, self.train_sha256 = str(train_features), train_sha256
        self.num_classes = int(num_classes)
        self.bank = bank
        self._train = None

    def _load(self):
        if self._train is None:
            path = Path(self.train_features)
            if not path.is_file():
                raise MissingInputError(f"k-NN predictor: train features {path} not found; "
                                        "the run rebuilds its logits from them: re-extract "
                                        "them, or rerun the knn run")
            sha = sha256_file(path)
            if sha != self.train_sha256:
                raise InputValidationError(
                    f"k-NN predictor: train features {path} changed since the run "
                    f"(sha256 {sha[:12]}…, run recorded {self.train_sha256[:12]}…); "
                    "rerun the knn run")
            # keeps pyarrow off `list methods`; shared: every seed's k-NN run reads it
            from lt_bench.features.store import read_features_shared

            tr = read_features_shared(path)
            self._train = (tr.features, tr.labels)
        return self._train

    def logits(self, features: np.ndarray, crops: int = 1) -> np.ndarray:
        """Logits of the query rows; ``crops`` > 1: the rows are each image's crops in
        turn, the logits one row per image, the mean of its crops' (``knn_vote_logits``)."""
        feats, labels = self._load()
        return knn_logits(features, feats, labels, self.k, self.temperature,
                          self.num_classes, bank_key=self.train_sha256, crops=crops)

    def save(self, run_dir: Path) -> None:
        write_predictor_spec(run_dir, {
            "kind": "knn", "k": self.k, "temperature": self.temperature,
            "train_features": self.train_features, "train_sha256": self.train_sha256,
            "num_classes": self.num_classes, "bank": self.bank})


def knn_logits(queries: np.ndarray, bank: np.ndarray, bank_labels: np.ndarray, k: int,
               temperature: float, num_classes: int, bank_key=None,
               crops: int = 1) -> np.ndarray:
    """k-NN logits of ``queries`` on ``bank``; queries identical to the bank (the same rows,
    bit for bit) are answered leave-one-out. ``bank_key`` (e.g. the bank file's sha256)
    names the bank in the cache of the last neighbour search."""
    same = queries.shape == bank.shape and _digest(queries) == _digest(bank)
    key = (bank_key if bank_key is not None else _digest(bank), k, same, queries.shape,
           _digest(queries))
    if key not in _NEIGHBOURS:
        # every seed's k-NN run asks for the same neighbours (k-NN has no randomness):
        # the report rebuilds them once, not once per seed
        _NEIGHBOURS.clear()
        _NEIGHBOURS[key] = knn_neighbours(queries, bank, k, exclude_self=same)
    sims, idx = _NEIGHBOURS[key]
    return knn_vote_logits(sims, bank_labels[idx], k, temperature, num_classes, crops)


def load_knn(folder) -> KNNPredictor:
    """The ``knn`` predictor kind (``lt_bench.predictor_spec``)."""
    spec = predictor_spec_of(folder)
    return KNNPredictor(spec["k"], spec["temperature"], spec["train_features"],
                        spec["train_sha256"], spec["num_classes"], spec.get("bank", "train"))


BANKS = ("train", "val")


@METHODS.register()
class KNN(Method):
    name = "knn"
    display = "k-NN"
    defaults: ClassVar[dict[str, Any]] = {"k": 10, "k_grid": [1, 3, 5, 10, 20, 50, 100],
                                          "temperature": 0.07, "bank": "train",
                                          "view": "auto"}
    description = "cosine k-NN on the frozen train features, k tuned on val"

    def validate(self) -> None:
        hp = self.hparams
        if hp["bank"] not in BANKS:
            raise InputValidationError(f"method {self.name!r}: bank = {hp['bank']!r}; "
                                       f"valid: {', '.join(BANKS)}")
        k, t = hp["k"], hp["temperature"]
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise InputValidationError(f"method {self.name!r}: k = {k!r}; expected an "
                                       "integer >= 1")
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not t > 0:
            raise InputValidationError(f"method {self.name!r}: temperature = {t!r}; "
                                       "expected a number > 0")
        if hp["bank"] == "val" and hp.get("view") == "fivecrop":
            raise InputValidationError(
                f"method {self.name!r}: bank = 'val' with view = 'fivecrop'; the val bank "
                "answers val leave-one-out on the centre view only; use view: centre")

    def fit(self, ctx: FitContext) -> FitResult:
        hp = self.hparams
        if ctx.features_dir is None:
            raise AssertionError("knn needs the features folder (FitContext.features_dir) "
                                 "to record which bank features its logits are rebuilt from")
        if hp["bank"] == "val":
            return self._fit_val_bank(ctx)
        path = Path(ctx.features_dir) / "train.parquet"
        n = len(ctx.train)
        grid = sorted({min(int(g), n) for g in hp["k_grid"]})
        default = min(int(hp["k"]), n)
        neighbours: dict[str, np.ndarray] = {}

        # the val view the run reports: its five crops where it has them (each crop votes,
        # the crops' logits are averaged: split_features_logits), else the centre view
        crops = ctx.val.crops
        queries = ctx.val.features if crops is None else crops.reshape(-1, crops.shape[-1])

        def val_top1(k: int) -> float:
            if not neighbours:  # one neighbour search serves every k of the grid
                sims, idx = knn_neighbours(queries, ctx.train.features, max(grid))
                neighbours.update(sims=sims, labels=ctx.train.labels[idx])
            z = knn_vote_logits(neighbours["sims"], neighbours["labels"], k,
                                hp["temperature"], ctx.num_classes,
                                1 if crops is None else crops.shape[1])
            return top1(z, ctx.val.labels)

        k, info = choose("k", grid, default, val_top1, ctx)
        pred = KNNPredictor(k, hp["temperature"], str(path), sha256_file(path),
                            ctx.num_classes)
        pred._train = (ctx.train.features, ctx.train.labels)  # already in memory
        return FitResult(pred, info={**info, "temperature": hp["temperature"]})

    def _fit_val_bank(self, ctx: FitContext) -> FitResult:
        """The authors' probe: the val split is the bank, k and T as given (nothing is
        tuned: val answers itself leave-one-out)."""
        hp = self.hparams
        if ctx.val.crops is not None:  # view auto on fivecrop features
            raise InputValidationError(
                f"method {self.name!r}: bank = 'val' reads the centre view only (val answers "
                f"itself leave-one-out), but the features at {ctx.features_dir} give the "
                "five-crop view by default (extract.tte: fivecrop); set view: centre")
        path = Path(ctx.features_dir) / "val.parquet"
        pred = KNNPredictor(int(hp["k"]), hp["temperature"], str(path), sha256_file(path),
                            ctx.num_classes, bank="val")
        pred._train = (ctx.val.features, ctx.val.labels)  # already in memory
        return FitResult(pred, info={"k": pred.k, "tuned": False, "bank": "val",
                                     "temperature": hp["temperature"]})


@METHODS.register()
class KNNAuthors(KNN):
    """The authors' k-NN probe (Pre-train-Imbalance ``trainer.py: knn_test``)."""

    name = "knn_authors"
    display = "k-NN (authors': val bank, k 200)"
    defaults: ClassVar[dict[str, Any]] = {"k": 200, "k_grid": [200], "temperature": 0.1,
                                          "bank": "val", "view": "centre"}
    description = "the authors' k-NN probe: class-balanced val bank, k = 200, T = 0.1"
