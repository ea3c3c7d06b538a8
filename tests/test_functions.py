"""The module functions of DESIGN §3: one process-wide configured storage, the seed's names."""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import Callable
from typing import Any

import pytest

import statestore.storage as functions
from statestore import (
    ConfigError,
    NoSavepointError,
    RunNotInitializedError,
    open_storage,
)
from statestore.storage import MemoryStorage, Storage, _functions

# Every function that acts on the configured storage, called with valid arguments.
CALLS: dict[str, Callable[[], object]] = {
    "get_config": functions.get_config,
    "init_storage": lambda: functions.init_storage("run"),
    "is_initialized": lambda: functions.is_initialized("run"),
    "get_latest_savepoint": lambda: functions.get_latest_savepoint("run"),
    "last_persisted_timestamp": lambda: functions.last_persisted_timestamp("run"),
    "save_run_state": lambda: functions.save_run_state("run", 60_000, [("a", 1)]),
    "delete_old_savepoints": lambda: functions.delete_old_savepoints("run", 1),
    "delete_run": lambda: functions.delete_run("run"),
}


class ClosingStorage(MemoryStorage):
    """A memory storage that records whether it was closed."""

    def __init__(self, name: str | None = None) -> None:
        super().__init__(name=name)
        self.closed = False

    def _close(self) -> None:
        self.closed = True


@pytest.fixture(autouse=True)
def unconfigured(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test starts with no configured storage and leaves none behind."""
    monkeypatch.setattr(_functions, "_configured", None)
    monkeypatch.setattr(_functions, "_owned", False)


def unique_name() -> str:
    return f"functions-{uuid.uuid4().hex}"


@pytest.mark.parametrize("name", CALLS.keys())
def test_every_function_needs_init_config_first(name: str) -> None:
    with pytest.raises(ConfigError, match="init_config"):
        CALLS[name]()


def test_a_fresh_interpreter_has_no_configured_storage() -> None:
    script = (
        "import statestore.storage as s\n"
        "from statestore import ConfigError\n"
        "try:\n"
        "    s.is_initialized('run')\n"
        "except ConfigError:\n"
        "    print('ConfigError')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=60
    )
    assert done.stdout.strip() == "ConfigError"


def exercise(storage: Storage) -> None:
    """Every function acts on the configured storage: check each through ``storage``."""
    assert functions.is_initialized("run") is False
    with pytest.raises(RunNotInitializedError):
        functions.save_run_state("run", 60_000, [("a", 1)])
    functions.init_storage("run")
    assert storage.is_initialized("run") is True
    assert functions.is_initialized("run") is True
    with pytest.raises(NoSavepointError):
        functions.last_persisted_timestamp("run")
    for ts in [60_000, 180_000, 120_000]:
        functions.save_run_state("run", ts, [("a", ts), ("b", (ts, "x"))])
    assert storage.get_latest_savepoint("run") == (180_000, [("a", 180_000), ("b", (180_000, "x"))])
    assert functions.get_latest_savepoint("run") == storage.get_latest_savepoint("run")
    assert functions.last_persisted_timestamp("run") == 180_000
    functions.delete_old_savepoints("run", 2)
    assert [row.timestamp for row in storage.list_savepoints("run")] == [120_000, 180_000]
    functions.delete_run("run")
    assert storage.is_initialized("run") is False
    assert functions.is_initialized("run") is False


def test_configured_with_a_storage_object() -> None:
    storage = open_storage("memory://")
    assert functions.init_config(storage) is storage
    assert functions.get_config() is storage
    exercise(storage)


def test_configured_with_a_url() -> None:
    name = unique_name()
    configured = functions.init_config(f"memory://{name}")
    assert isinstance(configured, MemoryStorage)
    assert functions.get_config() is configured
    with open_storage(f"memory://{name}") as same_store:
        exercise(same_store)


def test_configured_with_a_class_and_options() -> None:
    name = unique_name()
    configured = functions.init_config((MemoryStorage, {"name": name}))
    assert isinstance(configured, MemoryStorage)
    assert configured.name == name
    with open_storage(f"memory://{name}") as same_store:
        exercise(same_store)


@pytest.mark.parametrize(
    "config",
    [
        42,
        None,
        "not a url",
        "nosuchscheme://x",
        (MemoryStorage,),
        (int, {}),
        (MemoryStorage, "name=x"),
        [MemoryStorage, {}],
        MemoryStorage,
    ],
    ids=repr,
)
def test_bad_config_is_refused_and_keeps_the_configured_storage(config: Any) -> None:
    storage = functions.init_config(open_storage("memory://"))
    with pytest.raises(ConfigError):
        functions.init_config(config)
    assert functions.get_config() is storage


def test_bad_options_for_the_class_are_a_config_error() -> None:
    storage = functions.init_config(open_storage("memory://"))
    with pytest.raises(ConfigError):  # not a raw TypeError from the constructor
        functions.init_config((MemoryStorage, {"no_such_option": 1}))
    assert functions.get_config() is storage


def test_replacing_the_config_closes_only_what_init_config_opened() -> None:
    opened = functions.init_config((ClosingStorage, {"name": unique_name()}))
    assert isinstance(opened, ClosingStorage)
    given = ClosingStorage()
    functions.init_config(given)
    assert opened.closed is True  # init_config opened it, so it closes it
    functions.init_config(f"memory://{unique_name()}")
    assert given.closed is False  # the caller owns what the caller passed in
    assert functions.get_config() is not given


def test_errors_of_the_storage_reach_the_caller_unchanged() -> None:
    functions.init_config(open_storage("memory://"))
    with pytest.raises(NoSavepointError, match="'missing'"):
        functions.get_latest_savepoint("missing")
    with pytest.raises(ValueError, match="run_id"):  # InvalidArgumentError is a ValueError
        functions.init_storage("")
