"""Hostile arguments to the engine, the module functions and the real backends.

``tests/test_hostile_input.py`` fuzzes the decoders and the Storage methods of the
memory backend. This extends it to the rest of the public surface: every
:class:`statestore.StateStore` and :class:`statestore.Entity` method, the schedule
functions and the module functions of :mod:`statestore.storage`, plus the Storage
methods of the SQLite and file backends (whose drivers raise their own exceptions).
The only outcomes allowed are a result or an error of :mod:`statestore.errors`; an
error changes nothing stored, and the engine keeps working correctly afterwards.
"""

from __future__ import annotations

import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from statestore import StateStore, StateStoreError, Storage, open_storage, schedule
from statestore import storage as functions
from statestore.storage import _functions

MAX_TS = 2**63 - 1

ANYTHING = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([0, 1, -1, 999, 1000, 2500, MAX_TS, MAX_TS + 1, 2**64]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    st.sampled_from(["", "\x00", "x" * 513, "e1", "e2", "run", "../run", "run\n"]),
    st.binary(max_size=20),
    st.lists(st.tuples(st.sampled_from(["e1", "e2", "e3", ""]), st.integers()), max_size=3),
    st.just([("e1", 1), ("e1", 2)]),
    st.just([("e1", object())]),
    st.just({"e1": 1}),
    st.just(object()),
    st.just(set()),
)


def fuzz(examples: int) -> settings:
    """Hypothesis settings of these tests: fixtures are set up once for all examples."""
    return settings(
        max_examples=examples,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture],
    )


def _snapshot(storage: Storage) -> list[Any]:
    view: list[Any] = []
    for run_id in storage.list_runs():
        rows = storage.list_savepoints(run_id)
        view.append((run_id, rows, [storage.get_savepoint(run_id, r.timestamp) for r in rows]))
    return view


def _call_or_refuse(storage: Storage, call: Callable[[], object]) -> bool:
    """Make the call; an error must be statestore's and leave the store as it was."""
    before = _snapshot(storage)
    try:
        call()
    except StateStoreError:
        assert _snapshot(storage) == before, "a refused call changed the store"
        return False
    return True


# ------------------------------------------------------------------ the engine

ENGINE_CALLS: dict[str, Callable[[StateStore, list[Any], Storage, list[Any]], object]] = {
    "StateStore()": lambda store, ents, storage, a: StateStore(a[0], a[1], storage, a[2]),
    "StateStore(storage=?)": lambda store, ents, storage, a: StateStore("run", 1000, a[0]),
    "start": lambda store, ents, storage, a: StateStore("other", 1000, storage).start(a[0], a[1]),
    "init_run_state": lambda store, ents, storage, a: StateStore(
        "other", 1000, storage
    ).init_run_state(a[0], a[1]),
    "save": lambda store, ents, storage, a: store.save(a[0], a[1], a[2]),
    "update_state": lambda store, ents, storage, a: ents[0].update_state(a[0], a[1]),
    "ack_processed_time": lambda store, ents, storage, a: ents[1].ack_processed_time(a[0]),
    "watermark": lambda store, ents, storage, a: store.ack_processed_time(a[0]),
    "add_entity": lambda store, ents, storage, a: store.add_entity(a[0], a[1], a[2]),
    "next_savepoint": lambda store, ents, storage, a: schedule.next_savepoint(a[0], a[1]),
    "previous_savepoint": lambda store, ents, storage, a: schedule.previous_savepoint(a[0], a[1]),
    "unreached_savepoints": lambda store, ents, storage, a: schedule.unreached_savepoints(
        a[0], a[1], a[2]
    ),
}


@fuzz(500)
@given(st.sampled_from(sorted(ENGINE_CALLS)), st.lists(ANYTHING, min_size=3, max_size=3))
def test_engine_calls_with_random_arguments(name: str, args: list[Any]) -> None:
    with open_storage(f"memory://hostile-{uuid.uuid4().hex}") as storage:
        store = StateStore("run", 1000, storage=storage, keep_savepoints=2)
        entities = store.init_run_state(0, [("e1", {"n": 0}), ("e2", {"n": 0})])
        for entity in entities:
            entity.ack_processed_time(1000)
        _call_or_refuse(storage, lambda: ENGINE_CALLS[name](store, entities, storage, args))
        # Whatever happened, the run goes on correctly from where its entities stand,
        # and past any savepoint a direct save filled (it stays filled as saved).
        entities = store.entities()  # with the one add_entity added, if it did
        now = max(entity.timestamp for entity in entities)
        if name == "save" and type(args[1]) is int:
            now = max(now, args[1])
        if now > MAX_TS // 2:
            return  # a valid call moved the run to the end of time
        upto = schedule.next_savepoint(1000, now)
        for entity in entities:
            entity.ack_processed_time(upto - 1)  # the inputs before upto - 1 first
            entity.update_state(upto - 1, {"n": upto, "id": entity.id})
            entity.ack_processed_time(upto)
        assert storage.get_latest_savepoint("run") == (
            upto,
            [(entity.id, {"n": upto, "id": entity.id}) for entity in entities],
        )
        assert [entity.id for entity in entities][:2] == ["e1", "e2"]


# ------------------------------------------------------------------ module functions

MODULE_CALLS: dict[str, int] = {
    "init_storage": 1,
    "is_initialized": 1,
    "get_latest_savepoint": 1,
    "last_persisted_timestamp": 1,
    "save_run_state": 3,
    "delete_old_savepoints": 2,
    "delete_run": 1,
}


@pytest.fixture
def own_config(monkeypatch: pytest.MonkeyPatch) -> None:
    """The process-wide configuration as it was once the test is done."""
    monkeypatch.setattr(_functions, "_configured", None)
    monkeypatch.setattr(_functions, "_owned", False)


@fuzz(300)
@given(st.sampled_from(sorted(MODULE_CALLS)), st.lists(ANYTHING, min_size=3, max_size=3))
def test_module_functions_with_random_arguments(
    own_config: None, name: str, args: list[Any]
) -> None:
    storage = functions.init_config(f"memory://hostile-{uuid.uuid4().hex}")
    try:
        functions.init_storage("run")
        functions.save_run_state("run", 1000, [("e1", 1)])
        call = getattr(functions, name)
        _call_or_refuse(storage, lambda: call(*args[: MODULE_CALLS[name]]))
    finally:
        storage.close()


@fuzz(100)
@given(ANYTHING)
def test_init_config_refuses_anything_but_a_configuration(own_config: None, config: Any) -> None:
    with functions.init_config("memory://") as configured:
        with pytest.raises(StateStoreError):
            functions.init_config(config)
        assert functions.get_config() is configured  # the refused one replaced nothing


# ------------------------------------------------------------------ real backends

STORAGE_CALLS = {
    "init_storage": 1,
    "is_initialized": 1,
    "save_savepoint": 3,
    "get_latest_savepoint": 1,
    "get_latest_savepoint_timestamp": 1,
    "get_savepoint": 2,
    "list_savepoints": 1,
    "delete_old_savepoints": 2,
    "delete_run": 1,
    "acquire_writer": 1,
    "encode_state": 3,
    "save_encoded_savepoint": 3,
}


@pytest.fixture(scope="module", params=["sqlite", "file"])
def real_storage(request: pytest.FixtureRequest) -> Iterator[Storage]:
    """One store for every example (hypothesis runs many against one fixture)."""
    with tempfile.TemporaryDirectory() as directory:
        url = (
            f"sqlite:///{directory}/hostile.db"
            if request.param == "sqlite"
            else f"file://{Path(directory)}/hostile"
        )
        with open_storage(url) as storage:
            yield storage


@fuzz(150)
@given(st.sampled_from(sorted(STORAGE_CALLS)), st.lists(ANYTHING, min_size=3, max_size=3))
def test_real_backends_with_random_arguments(
    real_storage: Storage, name: str, args: list[Any]
) -> None:
    real_storage.init_storage("run")
    real_storage.save_savepoint("run", 1000, [("e1", {"n": 1})])
    call = getattr(real_storage, name)
    _call_or_refuse(real_storage, lambda: call(*args[: STORAGE_CALLS[name]]))
    # The store still works for the run every example starts from (which a valid
    # delete_run("run") has just removed: initialize it again).
    real_storage.init_storage("run")
    real_storage.save_savepoint("run", 1000, [("e1", {"n": 2})])
    assert real_storage.get_savepoint("run", 1000) == (1000, [("e1", {"n": 2})])
