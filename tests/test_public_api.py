"""The public names of DESIGN.md exist, and ``__all__`` lists exactly the public names."""

from __future__ import annotations

import importlib
import inspect
import subprocess
import sys
from types import ModuleType

import pytest

import statestore
from statestore import errors

PUBLIC_MODULES = [
    "statestore",
    "statestore.errors",
    "statestore.storage",
    "statestore.codecs",
    "statestore.schedule",
    "statestore.engine",
    "statestore.ops",
    "statestore.testing",
    "statestore.observe",
    "statestore.web",
]


def public_names(module: ModuleType) -> set[str]:
    """Names a user reaches: defined in the package (not imported helpers), not private."""
    names = set()
    for name, value in vars(module).items():
        if name.startswith("_") or inspect.ismodule(value):
            continue
        if name in {"annotations", "TYPE_CHECKING"}:
            continue
        origin = getattr(value, "__module__", module.__name__) or ""
        if origin.startswith("statestore") or not callable(value):
            names.add(name)
    return names


@pytest.mark.parametrize("module_name", PUBLIC_MODULES)
def test_all_matches_the_public_names(module_name: str) -> None:
    module = importlib.import_module(module_name)
    assert public_names(module) <= set(module.__all__)  # nothing public left unlisted
    for name in module.__all__:  # and everything listed is there (some load lazily)
        assert getattr(module, name) is not None, name


def test_design_names_exist() -> None:
    for name in [
        "StateStore",
        "Entity",
        "open_storage",
        "Savepoint",
        "StateStoreError",
        "NoSavepointError",
        "RunNotInitializedError",
        "CorruptSavepointError",
        "ConfigError",
        "InvalidArgumentError",
        "EncodeError",
        "StaleWriterError",
    ]:
        assert hasattr(statestore, name), name
    storage = importlib.import_module("statestore.storage")
    for name in [
        "Storage",
        "init_config",
        "get_config",
        "init_storage",
        "is_initialized",
        "get_latest_savepoint",
        "last_persisted_timestamp",
        "save_run_state",
        "delete_old_savepoints",
        "delete_run",
    ]:
        assert callable(getattr(storage, name)), name
    schedule = importlib.import_module("statestore.schedule")
    for name in ["next_savepoint", "previous_savepoint", "unreached_savepoints"]:
        assert callable(getattr(schedule, name)), name
    assert callable(importlib.import_module("statestore.codecs").PickleCodec)


def test_error_tree() -> None:
    for name in errors.__all__:
        assert issubclass(getattr(errors, name), errors.StateStoreError)
    assert issubclass(errors.NoSavepointError, LookupError)
    assert issubclass(errors.RunNotInitializedError, LookupError)
    assert issubclass(errors.InvalidArgumentError, ValueError)
    assert issubclass(errors.EncodeError, TypeError)


def test_backend_classes_import_from_statestore_storage() -> None:
    from statestore.storage import (
        FileStorage,
        MemoryStorage,
        PostgresStorage,
        S3Storage,
        SQLiteStorage,
    )

    for cls in (FileStorage, MemoryStorage, PostgresStorage, S3Storage, SQLiteStorage):
        assert issubclass(cls, statestore.storage.Storage), cls
        assert cls.__name__ in statestore.storage.__all__
    assert isinstance(statestore.open_storage("memory://"), MemoryStorage)


def test_statestore_storage_does_not_load_psycopg() -> None:
    # PostgresStorage is exported lazily: psycopg stays an optional extra.
    code = (
        "import sys, statestore, statestore.storage\n"
        "from statestore.storage import SQLiteStorage, FileStorage, MemoryStorage\n"
        "assert 'psycopg' not in sys.modules, 'psycopg loaded'\n"
        "from statestore.storage import PostgresStorage\n"
        "assert 'psycopg' in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_statestore_storage_does_not_load_obstore() -> None:
    # S3Storage is exported lazily too: obstore is the s3 extra.
    code = (
        "import sys, statestore, statestore.storage\n"
        "assert 'obstore' not in sys.modules, 'obstore loaded'\n"
        "from statestore.storage import S3Storage\n"
        "assert 'obstore' in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
