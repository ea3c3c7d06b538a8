"""Storage: the contract (:class:`Storage`), backends chosen by URL, and the module functions.

Layout of this package, one concern per module:

* ``_base.py``: the :class:`Storage` base, every rule of the contract, the primitives
* ``layout/``: savepoint bytes (manifest, table chain, packs, checksums), the format
* ``validate.py``: argument checks (public: the engine and the operations use them too)
* ``_registry.py``: URL scheme to backend, :func:`open_storage`
* ``_functions.py``: the process-wide configured storage and the seed's functions
* ``_memory.py``, ``_sqlite.py``, ``_files.py``, ``_postgres/``, ``_s3/``: one backend each
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._base import (
    Capabilities,
    EncodedSavepoint,
    MissingBlobsError,
    Savepoint,
    SavepointInfo,
    SavepointLayout,
    SavepointParts,
    SavepointSummary,
    Storage,
    StoredSavepoint,
    StoredState,
    WriterToken,
    epoch_ms,
)
from ._files import FileStorage
from ._functions import (
    delete_old_savepoints,
    delete_run,
    get_config,
    get_latest_savepoint,
    init_config,
    init_storage,
    is_initialized,
    last_persisted_timestamp,
    save_run_state,
)
from ._memory import MemoryStorage
from ._registry import missing_store, open_storage
from ._sqlite import SQLiteStorage
from .layout import LIMIT_OPTION, MAX_SAVEPOINT_BYTES, MAX_STATE_BYTES, SavepointRecord
from .url import redact_url

if TYPE_CHECKING:
    from ._postgres import PostgresStorage
    from ._s3 import S3Storage

__all__ = [
    "LIMIT_OPTION",
    "MAX_SAVEPOINT_BYTES",
    "MAX_STATE_BYTES",
    "Capabilities",
    "EncodedSavepoint",
    "FileStorage",
    "MemoryStorage",
    "MissingBlobsError",
    "PostgresStorage",
    "S3Storage",
    "SQLiteStorage",
    "Savepoint",
    "SavepointInfo",
    "SavepointLayout",
    "SavepointParts",
    "SavepointRecord",
    "SavepointSummary",
    "Storage",
    "StoredSavepoint",
    "StoredState",
    "WriterToken",
    "delete_old_savepoints",
    "delete_run",
    "epoch_ms",
    "get_config",
    "get_latest_savepoint",
    "init_config",
    "init_storage",
    "is_initialized",
    "last_persisted_timestamp",
    "missing_store",
    "open_storage",
    "redact_url",
    "save_run_state",
]


def __getattr__(name: str) -> Any:
    # PostgresStorage and S3Storage are imported only when asked for: psycopg and obstore
    # are optional extras, and ``import statestore`` must neither need them nor pay for
    # loading them.
    if name == "PostgresStorage":
        from ._postgres import PostgresStorage  # noqa: PLC0415

        return PostgresStorage
    if name == "S3Storage":
        from ._s3 import S3Storage  # noqa: PLC0415

        return S3Storage
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
