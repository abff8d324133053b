"""The end-of-epoch checkpoint of a fine-tuning run, and what identifies its configuration.

One file, ``<work_dir>/finetune_state.pt``, replaced atomically (temp file + rename) after
every epoch. It holds only tensors, numbers, strings, lists and dicts, so it loads with
``torch.load(weights_only=True)`` (no pickled code runs): the trainable parameters, the
optimiser, scheduler and grad-scaler states, the history, the RNG states (as tensors) and a
fingerprint of the configuration. A checkpoint whose fingerprint differs from the run's is
refused with a message naming what differs.
"""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lt_bench.errors import UserError
from lt_bench.io import atomic_path

CHECKPOINT_NAME = "finetune_state.pt"
FORMAT = 1


class CheckpointMismatchError(UserError):
    """A checkpoint in the work folder was written by another configuration."""


class CheckpointReadError(UserError):
    """A checkpoint in the work folder cannot be read."""


def sha256_items(items) -> str:
    h = hashlib.sha256()
    for path, label in items:
        h.update(f"{path}\t{int(label)}\n".encode())
    return h.hexdigest()


def sha256_array(a: np.ndarray) -> str:
    a = np.ascontiguousarray(a, dtype=np.float32)
    return hashlib.sha256(str(a.shape).encode() + a.tobytes()).hexdigest()


def sha256_module(module: torch.nn.Module) -> str:
    """Hash of a module's state (names, shapes, dtypes, values): which weights were tuned."""
    h = hashlib.sha256()
    for name, t in module.state_dict().items():
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}\n".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    py_state = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy_keys": torch.from_numpy(np_state[1].astype(np.int64)),
        "numpy_meta": [str(np_state[0]), int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "python": torch.tensor(py_state[1], dtype=torch.int64),
        "python_version": int(py_state[0]),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    name, pos, has_gauss, cached = state["numpy_meta"]
    np.random.set_state((name, state["numpy_keys"].numpy().astype(np.uint32), pos, has_gauss,
                         cached))
    random.setstate((state["python_version"], tuple(int(v) for v in state["python"]), None))
    if "cuda" in state and torch.cuda.is_available():
        cuda = state["cuda"]
        if len(cuda) == torch.cuda.device_count():  # resumed on a machine like this one
            torch.cuda.set_rng_state_all(cuda)


def save_checkpoint(work_dir: Path, payload: dict[str, Any]) -> Path:
    path = Path(work_dir) / CHECKPOINT_NAME
    with atomic_path(path) as tmp:
        torch.save({"format": FORMAT, **payload}, tmp)
    return path


def _describe(value: Any) -> str:
    text = json.dumps(value, sort_keys=True)
    return text if len(text) <= 80 else text[:77] + "..."


def load_checkpoint(work_dir: Path, fingerprint: dict[str, Any]) -> dict[str, Any] | None:
    """The checkpoint in ``work_dir`` if there is one; refuses another configuration's."""
    path = Path(work_dir) / CHECKPOINT_NAME
    if not path.exists():
        return None
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001  (any unpickling failure means the same thing)
        raise CheckpointReadError(
            f"cannot read the fine-tuning checkpoint {path} ({type(e).__name__}: {e}); "
            "delete it to start the run over") from e
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointReadError(f"{path} is not a format-{FORMAT} lt-bench fine-tuning "
                                  "checkpoint; delete it to start the run over")
    theirs = json.loads(ckpt["fingerprint"])
    fingerprint = json.loads(fingerprint_text(fingerprint))  # tuples -> lists, as stored
    diffs = [f"{k}: checkpoint has {_describe(theirs.get(k))}, this run has "
             f"{_describe(fingerprint.get(k))}"
             for k in sorted(set(theirs) | set(fingerprint)) if theirs.get(k) != fingerprint.get(k)]
    if diffs:
        raise CheckpointMismatchError(
            f"the fine-tuning checkpoint {path} was written by another configuration ("
            + "; ".join(diffs) + "). Delete it (or use another work folder) to start over")
    return ckpt


def fingerprint_text(fingerprint: dict[str, Any]) -> str:
    return json.dumps(fingerprint, sort_keys=True)
