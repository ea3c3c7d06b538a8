"""The process-wide configured storage and the seed's functions that act on it.

Runbox configures one storage per node and calls module functions; these keep that
shape for code ported from it. New code may just as well hold a ``Storage`` object.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping
from typing import Any

from ..errors import ConfigError
from ._base import Savepoint, Storage
from ._registry import open_storage

__all__ = [
    "delete_old_savepoints",
    "delete_run",
    "get_config",
    "get_latest_savepoint",
    "init_config",
    "init_storage",
    "is_initialized",
    "last_persisted_timestamp",
    "save_run_state",
]

_lock = threading.Lock()
_configured: Storage | None = None
_owned = False  # whether init_config opened it (and so closes it when replaced)

StorageConfig = Storage | str | tuple[type[Storage], Mapping[str, Any]]


def init_config(config: StorageConfig) -> Storage:
    """Configure the process-wide storage: a Storage, a URL, or ``(StorageClass, options)``."""
    global _configured, _owned
    if isinstance(config, Storage):
        storage, owned = config, False
    elif isinstance(config, str):
        storage, owned = open_storage(config), True
    elif (
        isinstance(config, tuple)
        and len(config) == 2
        and isinstance(config[0], type)
        and issubclass(config[0], Storage)
        and isinstance(config[1], Mapping)
    ):
        try:
            storage, owned = config[0](**dict(config[1])), True
        except TypeError as exc:
            raise ConfigError(
                f"cannot construct {config[0].__name__} with options {sorted(config[1])}: {exc}"
            ) from None
    else:
        raise ConfigError(
            "init_config takes a Storage, a URL string or a (StorageClass, options) pair, "
            f"not {type(config).__name__}"
        )
    with _lock:
        previous, previous_owned = _configured, _owned
        _configured, _owned = storage, owned
    if previous is not None and previous_owned and previous is not storage:
        previous.close()
    return storage


def get_config() -> Storage:
    """The configured storage; ``ConfigError`` before :func:`init_config`."""
    storage = _configured
    if storage is None:
        raise ConfigError(
            "no storage is configured; call statestore.storage.init_config(...) first"
        )
    return storage


def init_storage(run_id: str) -> None:
    get_config().init_storage(run_id)


def is_initialized(run_id: str) -> bool:
    return get_config().is_initialized(run_id)


def get_latest_savepoint(run_id: str) -> Savepoint:
    return get_config().get_latest_savepoint(run_id)


def last_persisted_timestamp(run_id: str) -> int:
    """The latest savepoint's timestamp; ``NoSavepointError`` when the run has none."""
    return get_config().get_latest_savepoint_timestamp(run_id)


def save_run_state(run_id: str, timestamp: int, entities: Iterable[tuple[str, Any]]) -> None:
    get_config().save_savepoint(run_id, timestamp, entities)


def delete_old_savepoints(run_id: str, keep_n: int) -> None:
    get_config().delete_old_savepoints(run_id, keep_n)


def delete_run(run_id: str) -> None:
    get_config().delete_run(run_id)
