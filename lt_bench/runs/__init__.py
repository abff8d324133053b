"""The run layer: every kind of run (heads on features, ensembles of runs, fine-tuning from
images) finishes through :func:`write_run` and answers ``split_logits`` (the seam).

It sits above ``lt_bench.methods``: methods never import it. Import the submodules
(``runs.train``, ``runs.ensemble``, ``runs.run_folder``, ``runs.folder``, ...) directly; the
names below are re-exported lazily so ``import lt_bench.runs`` stays cheap.
"""

from importlib import import_module

_EXPORTS = {
    "train_run": "train", "load_features_dir": "train",
    "ensemble_run": "ensemble",
    "RunFolder": "run_folder", "run_logits": "run_folder", "open_run": "run_folder",
    "write_run": "folder", "find_run_dirs": "layout", "run_dir": "layout",
    "write_logits": "stored", "read_logits": "stored",
}


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = sorted(_EXPORTS)
