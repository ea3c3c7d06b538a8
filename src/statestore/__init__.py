"""statestore: durable, scheduled savepoints for long-running runs.

>>> import statestore
>>> with statestore.open_storage("memory://") as storage:
...     storage.init_storage("run-1")
...     storage.save_savepoint("run-1", 60_000, [("sensor-1", {"count": 3})])
...     storage.get_latest_savepoint("run-1")
Savepoint(timestamp=60000, entities=[('sensor-1', {'count': 3})])
"""

from __future__ import annotations

from .engine import Entity, StartResult, StateStore
from .errors import (
    BackendError,
    ConfigError,
    CorruptSavepointError,
    EncodeError,
    InvalidArgumentError,
    NoSavepointError,
    RunNotInitializedError,
    StaleWriterError,
    StateStoreError,
)
from .storage import Savepoint, SavepointInfo, Storage, open_storage

__version__ = "0.1.0"

__all__ = [
    "BackendError",
    "ConfigError",
    "CorruptSavepointError",
    "EncodeError",
    "Entity",
    "InvalidArgumentError",
    "NoSavepointError",
    "RunNotInitializedError",
    "Savepoint",
    "SavepointInfo",
    "StaleWriterError",
    "StartResult",
    "StateStore",
    "StateStoreError",
    "Storage",
    "open_storage",
]
