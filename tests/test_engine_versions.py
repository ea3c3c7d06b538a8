"""State versions (DESIGN §6): every stored state records the version it was written with,
and a store at a newer version upgrades older states on load, step by step.

Real storage (memory:// and sqlite://): what is checked is what the storage recorded.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from statestore import open_storage
from statestore.engine import StateStore
from statestore.errors import ConfigError, InvalidArgumentError
from statestore.storage import Storage

RUN = "run-1"
MINUTE = 60_000


@pytest.fixture(params=["memory", "sqlite"])
def storage(request: pytest.FixtureRequest, tmp_path: Any) -> Iterator[Storage]:
    if request.param == "memory":
        url = f"memory://versions-{uuid.uuid4().hex}"
    else:
        url = f"sqlite:///{tmp_path}/versions.db"
    with open_storage(url) as opened:
        yield opened


def _to_2(entity_id: str, state: Any) -> Any:
    """Version 1 -> 2: an int count becomes a dict that names its entity."""
    return {"count": state, "id": entity_id}


def _to_3(entity_id: str, state: Any) -> Any:
    """Version 2 -> 3: a field is added."""
    return {**state, "unit": "C"}


def _written_at_version_1(storage: Storage) -> None:
    store = StateStore(RUN, MINUTE, storage=storage)  # state_version=1, as code before it
    store.init_run_state(0, [("a", 1), ("b", 2)])
    store.ack_processed_time(MINUTE)


@pytest.mark.parametrize(
    ("state_version", "upgrades", "error", "match"),
    [
        (0, None, InvalidArgumentError, "state_version"),
        (True, None, InvalidArgumentError, "state_version"),
        ("2", None, InvalidArgumentError, "state_version"),
        (2, [_to_2], InvalidArgumentError, "upgrades must be a dict"),
        (2, {"1": _to_2}, InvalidArgumentError, "version must be an int"),
        (2, {1: "not a function"}, InvalidArgumentError, r"upgrades\[1\] must be a function"),
        (4, {1: _to_2, 3: _to_3}, ConfigError, r"no upgrade step from state version 2 to 3"),
        (2, {1: _to_2, 2: _to_3}, ConfigError, r"upgrades\[2\] upgrades version 2 to 3, past"),
    ],
)
def test_bad_versions_are_refused_at_construction(
    state_version: Any, upgrades: Any, error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        StateStore(RUN, MINUTE, state_version=state_version, upgrades=upgrades)


def test_every_saved_state_records_the_store_version(storage: Storage) -> None:
    store = StateStore(RUN, MINUTE, storage=storage, state_version=3, upgrades={1: _to_2, 2: _to_3})
    entities = store.init_run_state(0, [("a", {"count": 1}), ("b", {"count": 2})])
    store.ack_processed_time(MINUTE)  # the watermark
    entities[0].ack_processed_time(2 * MINUTE)  # an entity's own acknowledgement
    store.remove_entity("b", 2 * MINUTE)
    for timestamp in (MINUTE, 2 * MINUTE):
        assert storage.load_savepoint(RUN, timestamp).versions == [3, 3]


def test_older_states_are_upgraded_in_order_on_resume(storage: Storage) -> None:
    _written_at_version_1(storage)
    store = StateStore(RUN, MINUTE, storage=storage, state_version=3, upgrades={1: _to_2, 2: _to_3})
    resumed = store.start(0, [])
    assert [(e.id, e.state) for e in resumed.entities] == [
        ("a", {"count": 1, "id": "a", "unit": "C"}),
        ("b", {"count": 2, "id": "b", "unit": "C"}),
    ]
    store.ack_processed_time(2 * MINUTE)  # the default mode writes every state anew, at 3
    saved = storage.load_savepoint(RUN)
    assert (saved.timestamp, saved.versions) == (2 * MINUTE, [3, 3])
    assert saved.entities == [(e.id, e.state) for e in resumed.entities]


def test_an_incremental_savepoint_mixes_versions_and_each_is_upgraded(storage: Storage) -> None:
    _written_at_version_1(storage)
    store = StateStore(
        RUN, MINUTE, storage=storage, state_version=2, upgrades={1: _to_2}, trust_update_state=True
    )
    a, _b = store.start(0, []).entities
    a.update_state(MINUTE + 1, {**a.state, "count": 10})  # only a changes
    store.ack_processed_time(2 * MINUTE)
    saved = storage.load_savepoint(RUN)
    # b's state is the one written at version 1, reused unchanged by the change set.
    assert (saved.versions, saved.entities) == ([2, 1], [("a", {"count": 10, "id": "a"}), ("b", 2)])
    # Code at version 3 upgrades a once (2 -> 3) and b twice (1 -> 2 -> 3).
    newer = StateStore(RUN, MINUTE, storage=storage, state_version=3, upgrades={1: _to_2, 2: _to_3})
    _since, entities = newer.load_run_state()
    assert [(e.id, e.state) for e in entities] == [
        ("a", {"count": 10, "id": "a", "unit": "C"}),
        ("b", {"count": 2, "id": "b", "unit": "C"}),
    ]


def test_a_state_newer_than_the_code_is_a_config_error(storage: Storage) -> None:
    store = StateStore(RUN, MINUTE, storage=storage, state_version=2, upgrades={1: _to_2})
    store.init_run_state(0, [("a", {"count": 1})])
    store.ack_processed_time(MINUTE)
    older = StateStore(RUN, MINUTE, storage=storage)
    with pytest.raises(ConfigError, match=r"entity 'a' was written with state version 2, newer"):
        older.start(0, [])
    assert [row.timestamp for row in storage.list_savepoints(RUN)] == [MINUTE]


def test_a_missing_upgrade_step_is_a_config_error_at_load_naming_it(storage: Storage) -> None:
    _written_at_version_1(storage)
    no_steps = StateStore(RUN, MINUTE, storage=storage, state_version=3, upgrades={2: _to_3})
    with pytest.raises(
        ConfigError, match=r"savepoint 60000: no upgrade step .* 1 to 2 \(upgrades\[1\]\)"
    ):
        no_steps.load_run_state()
    with pytest.raises(ConfigError, match=r"upgrades\[1\]"):
        StateStore(RUN, MINUTE, storage=storage, state_version=2).start(0, [])


def test_a_failing_upgrade_step_is_named(storage: Storage) -> None:
    _written_at_version_1(storage)

    def broken(entity_id: str, state: Any) -> Any:
        raise KeyError(entity_id)

    store = StateStore(RUN, MINUTE, storage=storage, state_version=2, upgrades={1: broken})
    with pytest.raises(ConfigError, match=r"upgrades\[1\] failed on entity 'a': KeyError"):
        store.start(0, [])
