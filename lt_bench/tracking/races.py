"""Writes that race with another ingestion into the same tracking server.

A lab's server takes several ``lt-bench ingest`` at once (README "A lab's tracking
server"); the MLflow calls that can collide with another writer's are wrapped here.
"""

from __future__ import annotations

import time


def set_experiment_tag(client, exp_id: str, key: str, value: str) -> None:
    """``client.set_experiment_tag``, once more if another writer set the same tag at the
    same instant: MLflow's SQL store sets a tag with ``session.merge`` (a read, then an
    INSERT; ``mlflow/store/tracking/sqlalchemy_store.py`` ``set_experiment_tag``), so two
    ingestions into one lab server can both read "absent" and the second INSERT breaks the
    primary key. Read again, the row exists and the retry is an UPDATE."""
    from mlflow.exceptions import MlflowException

    for attempt in range(3):
        try:
            client.set_experiment_tag(exp_id, key, value)
            return
        except MlflowException as e:
            if attempt == 2 or not _duplicate_key(e):
                raise
            time.sleep(0.2 * (attempt + 1))


def _duplicate_key(e: BaseException) -> bool:
    """A unique-constraint violation, as PostgreSQL, MySQL or SQLite word it."""
    text = str(e)
    return any(s in text for s in ("UniqueViolation", "duplicate key value",
                                   "UNIQUE constraint failed", "Duplicate entry"))
