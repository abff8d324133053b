"""MLflow tracking (stage 6): finished run folders become MLflow runs.

``records`` builds what is logged from a run folder (no mlflow), ``store`` writes it to an
MLflow store, ``cli`` holds ``lt-bench ingest`` / ``lt-bench ui``. Nothing here imports
mlflow at import time (``import mlflow`` costs ~1 s; only ``store.ingest`` does it).
"""

from lt_bench.tracking.cli import add_tracking_commands, ui_command
from lt_bench.tracking.records import (
    HEADLINE,
    RunRecord,
    default_tracking_uri,
    experiment_name,
    find_run_dirs,
    group_key,
    non_default_hparams,
    read_run_folder,
    redact_uri,
    run_key,
    setting_label,
    sqlite_path,
)
from lt_bench.tracking.store import TrackingError, ingest, relocate_sqlite_store

__all__ = [
    "HEADLINE", "RunRecord", "TrackingError", "add_tracking_commands", "default_tracking_uri",
    "experiment_name", "find_run_dirs", "group_key", "ingest", "non_default_hparams",
    "read_run_folder", "redact_uri", "relocate_sqlite_store", "run_key", "setting_label",
    "sqlite_path", "ui_command",
]
