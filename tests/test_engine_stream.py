"""The engine for stream jobs (DESIGN §6, issue 14): the watermark, the order check,
entities that come and go, stalls and the store's status.

Real storage throughout (memory:// and sqlite://); the failing and counting storages are
MemoryStorage subclasses, as in test_engine.py.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Iterable, Iterator
from typing import Any

import pytest

from statestore import open_storage
from statestore.codecs import SafeCodec
from statestore.engine import STALL_WARNING_SAVEPOINTS, Entity, StateStore, StoreStatus
from statestore.errors import (
    BackendError,
    EncodeError,
    InvalidArgumentError,
    RunNotInitializedError,
    StaleWriterError,
)
from statestore.storage import MemoryStorage, Storage
from statestore.storage.layout import SavepointRecord

RUN = "run-1"
MINUTE = 60_000


@pytest.fixture(params=["memory", "sqlite"])
def storage(request: pytest.FixtureRequest, tmp_path: Any) -> Iterator[Storage]:
    if request.param == "memory":
        url = f"memory://stream-{uuid.uuid4().hex}"
    else:
        url = f"sqlite:///{tmp_path}/stream.db"
    with open_storage(url) as opened:
        yield opened


class CountingCodec(SafeCodec):
    """The safe codec, counting the states it encodes (one by one or in bulk)."""

    def __init__(self) -> None:
        super().__init__()
        self.encodes = 0

    def encode(self, value: object) -> bytes:
        self.encodes += 1
        return super().encode(value)

    def encode_many(self, values: Iterable[object]) -> list[bytes]:
        values = list(values)
        self.encodes += len(values)
        return [SafeCodec.encode(self, value) for value in values]


class FailingStorage(MemoryStorage):
    """Memory storage whose commits fail as a lost server would, after ``good`` succeed."""

    good = 0
    failures = 0

    def _commit(self, run_id: str, record: SavepointRecord, fence: int | None) -> None:
        if self.good:
            self.good -= 1
        elif self.failures:
            self.failures -= 1
            raise BackendError(f"run {run_id!r}: the store went away")
        super()._commit(run_id, record, fence)


def stored(storage: Storage, run_id: str = RUN) -> dict[int, list[tuple[str, Any]]]:
    return {
        row.timestamp: storage.get_savepoint(run_id, row.timestamp).entities
        for row in storage.list_savepoints(run_id)
    }


def where(entities: list[Entity]) -> list[tuple[str, int, int | None, int | None]]:
    """What a failed call must leave as it was: each entity's place on the grid."""
    return [(e.id, e.timestamp, e.next_savepoint, e.last_savepoint) for e in entities]


# ------------------------------------------------------------------ the watermark


def test_the_watermark_saves_every_entity_even_idle_ones(storage: Storage) -> None:
    store = StateStore(RUN, MINUTE, storage=storage)
    a, b, c = store.init_run_state(5_000, [("a", 0), ("b", 0), ("c", 0)])
    a.update_state(10_000, 1)  # b and c get no input at all
    store.ack_processed_time(61_000)
    assert stored(storage) == {MINUTE: [("a", 1), ("b", 0), ("c", 0)]}
    assert store.status().last_persisted == MINUTE
    for entity in (a, b, c):
        assert (entity.timestamp, entity.last_savepoint, entity.next_savepoint) == (
            61_000,
            MINUTE,
            2 * MINUTE,
        )
    store.ack_processed_time(100_000)  # before the next savepoint: time moves, nothing saved
    assert [e.timestamp for e in (a, b, c)] == [100_000] * 3
    assert list(stored(storage)) == [MINUTE]
    store.ack_processed_time(90_000)  # an older watermark is implied by the newer one
    assert [e.timestamp for e in (a, b, c)] == [100_000] * 3


def test_the_watermark_encodes_each_due_state_once_per_call(tmp_path: Any) -> None:
    codec = CountingCodec()
    storage = MemoryStorage(codec=codec)
    store = StateStore(RUN, MINUTE, storage=storage, keep_savepoints=2)
    entities = store.init_run_state(0, [(f"e{i}", i) for i in range(50)])
    codec.encodes = 0
    store.ack_processed_time(10 * MINUTE + 1)  # ten savepoints at once: one encoding each
    assert codec.encodes == 50
    assert list(stored(storage)) == [9 * MINUTE, 10 * MINUTE]  # only the kept are written
    assert stored(storage)[10 * MINUTE] == [(f"e{i}", i) for i in range(50)]
    assert all(e.next_savepoint == 11 * MINUTE for e in entities)


@pytest.mark.parametrize("trust", [False, True])
def test_an_in_place_mutation_is_saved_by_default_and_not_when_trusting_updates(
    storage: Storage, trust: bool
) -> None:
    store = StateStore(RUN, MINUTE, storage=storage, trust_update_state=trust)
    a, b = store.init_run_state(0, [("a", {"seen": []}), ("b", 0)])
    store.ack_processed_time(MINUTE)
    a.state["seen"].append(1)  # changed in place, update_state never called
    b.update_state(MINUTE + 1, 1)
    store.ack_processed_time(2 * MINUTE)
    # The default mode encodes every state and sees the change; the trust mode saves
    # only b, whose update_state was called, as documented: a keeps its last saved state.
    expected_a = {"seen": []} if trust else {"seen": [1]}
    assert stored(storage)[2 * MINUTE] == [("a", expected_a), ("b", 1)]
    a.update_state(2 * MINUTE + 1, a.state)  # the documented way to hand over the change
    store.ack_processed_time(3 * MINUTE)
    assert stored(storage)[3 * MINUTE] == [("a", {"seen": [1]}), ("b", 1)]


def test_trusting_updates_encodes_only_the_updated_states() -> None:
    codec = CountingCodec()
    storage = MemoryStorage(codec=codec)
    store = StateStore(RUN, MINUTE, storage=storage, trust_update_state=True)
    entities = store.init_run_state(0, [(f"e{i}", i) for i in range(100)])
    store.ack_processed_time(MINUTE)
    for step in range(2, 5):
        codec.encodes = 0
        entities[step].update_state(step * MINUTE - 1, -step)
        store.ack_processed_time(step * MINUTE)
        assert codec.encodes == 1
    assert stored(storage)[4 * MINUTE] == [
        (f"e{i}", -i if i in (2, 3, 4) else i) for i in range(100)
    ]
    store.add_entity("new", 4 * MINUTE, "n")
    store.remove_entity("e0", 4 * MINUTE + 1)
    codec.encodes = 0
    store.ack_processed_time(5 * MINUTE)
    assert codec.encodes == 1  # the added entity only; e0 left after 240_000
    assert stored(storage)[5 * MINUTE][-1] == ("new", "n")
    assert stored(storage)[5 * MINUTE][0] == ("e1", 1)


def test_the_watermark_after_entities_acknowledged_on_their_own(storage: Storage) -> None:
    store = StateStore(RUN, MINUTE, storage=storage)
    a, b = store.init_run_state(0, [("a", "a0"), ("b", "b0")])
    a.ack_processed_time(2 * MINUTE)  # a fills 60_000 and 120_000 alone: nothing complete
    a.update_state(2 * MINUTE, "a2")
    b.update_state(MINUTE - 1, "b1")
    assert storage.list_savepoints(RUN) == []
    store.ack_processed_time(2 * MINUTE + 5)  # b is due, a has filled 120_000 already
    assert stored(storage) == {
        MINUTE: [("a", "a0"), ("b", "b1")],
        2 * MINUTE: [("a", "a0"), ("b", "b1")],
    }
    store.ack_processed_time(3 * MINUTE)
    assert stored(storage)[3 * MINUTE] == [("a", "a2"), ("b", "b1")]


def test_without_a_schedule_the_watermark_only_moves_time(storage: Storage) -> None:
    store = StateStore(RUN, None, storage=storage)
    (entity,) = store.init_run_state(0, [("a", 0)])
    store.ack_processed_time(10**9)
    entity.update_state(10**9, 1)  # no savepoint to wait for
    assert entity.timestamp == 10**9
    added = store.add_entity("b", 10**9, 2)
    store.save("b", 10**10, 3)  # known to the store, saves nothing
    added.ack_processed_time(10**10)
    store.remove_entity("a", 10**10)
    assert [e.id for e in store.entities()] == ["b"]
    assert storage.list_savepoints(RUN) == []


def test_the_watermark_needs_a_started_store() -> None:
    with pytest.raises(RunNotInitializedError, match="not started"):
        StateStore(RUN, MINUTE, storage=MemoryStorage()).ack_processed_time(MINUTE)
    with pytest.raises(InvalidArgumentError, match="timestamp"):
        StateStore(RUN, MINUTE, storage=MemoryStorage()).ack_processed_time(-1)


# ------------------------------------------------------------------ all or nothing


def test_a_state_the_codec_refuses_fails_the_watermark_with_nothing_changed(
    storage: Storage,
) -> None:
    store = StateStore(RUN, MINUTE, storage=storage)
    entities = store.init_run_state(0, [("a", 1), ("b", 2), ("c", 3)])
    entities[1].update_state(5, object())
    before = where(entities)
    with pytest.raises(EncodeError, match="'b'"):
        store.ack_processed_time(MINUTE)
    assert where(entities) == before
    assert storage.list_savepoints(RUN) == []
    assert store.status().pending_savepoints == 0  # nothing was filled, not even a's
    entities[0].update_state(6, 10)  # the job goes on; the fixed state is the one saved
    entities[1].update_state(7, "fixed")
    store.ack_processed_time(MINUTE)
    assert stored(storage) == {MINUTE: [("a", 10), ("b", "fixed"), ("c", 3)]}


def test_a_failed_write_leaves_every_entity_as_it_was_and_a_retry_writes_it() -> None:
    storage = FailingStorage()
    store = StateStore(RUN, MINUTE, storage=storage)
    entities = store.init_run_state(0, [("a", 1), ("b", 2)])
    storage.failures = 1
    before = where(entities)
    with pytest.raises(BackendError, match="went away"):
        store.ack_processed_time(MINUTE)
    assert where(entities) == before
    assert storage.list_savepoints(RUN) == []
    store.ack_processed_time(MINUTE)  # the same call again
    assert stored(storage) == {MINUTE: [("a", 1), ("b", 2)]}
    assert [e.next_savepoint for e in entities] == [2 * MINUTE] * 2


def test_a_write_failing_midway_through_a_jump_fills_every_savepoint_for_the_retry() -> None:
    storage = FailingStorage()
    store = StateStore(RUN, MINUTE, storage=storage, keep_savepoints=3)
    entities = store.init_run_state(0, [("a", 1), ("b", 2)])
    storage.good, storage.failures = 1, 1  # 60_000 is written, 120_000 fails
    with pytest.raises(BackendError, match="went away"):
        store.ack_processed_time(3 * MINUTE)
    assert [e.next_savepoint for e in entities] == [MINUTE] * 2  # as they were
    assert list(stored(storage)) == [MINUTE]
    # The savepoints the call covered stay filled: an update now cannot reach them.
    with pytest.raises(InvalidArgumentError, match="acknowledge first"):
        entities[0].update_state(3 * MINUTE, 99)
    store.ack_processed_time(3 * MINUTE)
    assert stored(storage) == {t * MINUTE: [("a", 1), ("b", 2)] for t in (1, 2, 3)}


def test_a_stale_writer_stores_nothing_from_the_watermark(storage: Storage) -> None:
    store = StateStore(RUN, MINUTE, storage=storage)
    entities = store.init_run_state(0, [("a", 1), ("b", 2)])
    store.ack_processed_time(MINUTE)
    StateStore(RUN, MINUTE, storage=storage).load_run_state()  # another writer takes over
    before = where(entities)
    with pytest.raises(StaleWriterError):
        store.ack_processed_time(2 * MINUTE)
    assert where(entities) == before
    assert list(stored(storage)) == [MINUTE]
    with pytest.raises(StaleWriterError):  # and from then on, at once
        store.ack_processed_time(3 * MINUTE)


# ------------------------------------------------------------------ the right order


def test_an_input_past_the_next_savepoint_must_wait_for_the_acknowledgement(
    storage: Storage,
) -> None:
    store = StateStore(RUN, MINUTE, storage=storage)
    (entity,) = store.init_run_state(0, [("a", 0)])
    entity.update_state(MINUTE - 1, 1)  # before the savepoint: fine
    with pytest.raises(InvalidArgumentError, match=r"acknowledge first") as refused:
        entity.update_state(MINUTE, 2)
    assert "store.ack_processed_time(60000)" in str(refused.value)
    assert (entity.state, entity.timestamp) == (1, MINUTE - 1)  # unchanged
    store.ack_processed_time(MINUTE)
    entity.update_state(MINUTE, 2)
    entity.ack_processed_time(2 * MINUTE + 7)  # the entity's own acknowledgement works too
    entity.update_state(2 * MINUTE + 7, 3)
    assert stored(storage) == {MINUTE: [("a", 1)], 2 * MINUTE: [("a", 2)]}


# ------------------------------------------------------------------ entities come and go


def test_an_added_entity_takes_part_in_the_savepoints_after_it(storage: Storage) -> None:
    store = StateStore(RUN, MINUTE, storage=storage)
    store.init_run_state(0, [("a", "a")])
    late = store.add_entity("b", MINUTE, "b")  # on the grid: not in the savepoint at 60_000
    assert (late.timestamp, late.next_savepoint, late.last_savepoint) == (MINUTE, 2 * MINUTE, None)
    store.ack_processed_time(MINUTE)
    store.add_entity("c", MINUTE + 1, "c")
    store.ack_processed_time(2 * MINUTE)
    assert stored(storage) == {
        MINUTE: [("a", "a")],
        2 * MINUTE: [("a", "a"), ("b", "b"), ("c", "c")],
    }
    assert [e.id for e in store.entities()] == ["a", "b", "c"]


def test_adding_a_known_id_returns_that_entity_and_ignores_the_state(storage: Storage) -> None:
    store = StateStore(RUN, MINUTE, storage=storage)
    (a,) = store.init_run_state(0, [("a", {"n": 5})])
    assert store.add_entity("a", 10, {"n": 0}) is a
    assert a.state == {"n": 5}


def test_an_added_entity_does_not_hold_back_savepoints_before_it(storage: Storage) -> None:
    store = StateStore(RUN, MINUTE, storage=storage)
    (a,) = store.init_run_state(0, [("a", 0)])
    a.ack_processed_time(2 * MINUTE - 1)  # a fills 60_000, which persists
    late = store.add_entity("late", 2 * MINUTE + 5, "x")  # joins after 120_000
    a.ack_processed_time(3 * MINUTE)  # a fills 120_000 (complete: late is not in it) and 180_000
    assert stored(storage) == {MINUTE: [("a", 0)], 2 * MINUTE: [("a", 0)]}
    late.ack_processed_time(3 * MINUTE)
    assert stored(storage)[3 * MINUTE] == [("a", 0), ("late", "x")]


def test_adds_that_would_miss_a_savepoint_or_cannot_be_encoded_are_refused(
    storage: Storage,
) -> None:
    store = StateStore(RUN, MINUTE, storage=storage)
    with pytest.raises(RunNotInitializedError):
        store.add_entity("a", 0, 1)
    store.init_run_state(0, [("a", 1)])
    store.ack_processed_time(2 * MINUTE)
    with pytest.raises(InvalidArgumentError, match="savepoint 120000 is persisted"):
        store.add_entity("b", MINUTE + 5, 1)
    with pytest.raises(EncodeError, match="'b'"):
        store.add_entity("b", 2 * MINUTE, object())
    with pytest.raises(InvalidArgumentError, match="id must be a str"):
        store.add_entity(7, 2 * MINUTE, 1)  # type: ignore[arg-type]
    assert [e.id for e in store.entities()] == ["a"]
    store.ack_processed_time(3 * MINUTE)
    assert stored(storage)[3 * MINUTE] == [("a", 1)]


def test_a_removed_entity_fills_what_is_pending_then_leaves(storage: Storage) -> None:
    store = StateStore(RUN, MINUTE, storage=storage)
    a, b = store.init_run_state(0, [("a", "a0"), ("b", "b0")])
    a.ack_processed_time(3 * MINUTE)  # 60_000 .. 180_000 wait for b
    b.update_state(10, "b1")
    store.remove_entity("b", 2 * MINUTE + 1)  # b fills 60_000 and 120_000, not 180_000
    assert stored(storage) == {
        MINUTE: [("a", "a0"), ("b", "b1")],
        2 * MINUTE: [("a", "a0"), ("b", "b1")],
        3 * MINUTE: [("a", "a0")],
    }
    assert store.entities() == [a]
    with pytest.raises(InvalidArgumentError, match="was removed"):
        b.ack_processed_time(4 * MINUTE)
    store.remove_entity("b", 4 * MINUTE)  # an id the run does not have: nothing happens
    store.remove_entity("nobody", 4 * MINUTE)
    with pytest.raises(InvalidArgumentError, match="processed time up to"):
        store.remove_entity("a", 10)


def test_a_removed_id_added_again_comes_back_at_the_end(storage: Storage) -> None:
    store = StateStore(RUN, MINUTE, storage=storage)
    store.init_run_state(0, [("a", 1), ("b", 2), ("c", 3)])
    store.remove_entity("a", 30_000)  # in no savepoint at all
    store.ack_processed_time(MINUTE)
    store.add_entity("a", MINUTE + 5, 10)
    store.remove_entity("b", MINUTE + 6)
    store.ack_processed_time(2 * MINUTE)
    assert stored(storage) == {
        MINUTE: [("b", 2), ("c", 3)],
        2 * MINUTE: [("c", 3), ("a", 10)],
    }


def test_an_id_removed_while_savepoints_pend_comes_back_after_its_removal(
    storage: Storage,
) -> None:
    store = StateStore(RUN, MINUTE, storage=storage)
    store.init_run_state(0, [("a", 1), ("b", 2)])
    store.remove_entity("b", MINUTE + 10)  # b fills 60_000, which waits for a
    with pytest.raises(InvalidArgumentError, match="removed at savepoint 60000"):
        store.add_entity("b", 5, 0)  # it would be in 60_000 twice
    store.add_entity("b", MINUTE + 20, 7)
    store.ack_processed_time(2 * MINUTE)
    assert stored(storage) == {MINUTE: [("a", 1), ("b", 2)], 2 * MINUTE: [("a", 1), ("b", 7)]}


def test_removing_the_last_entity_persists_what_it_held_back(storage: Storage) -> None:
    store = StateStore(RUN, MINUTE, storage=storage)
    store.init_run_state(0, [("a", 1)])
    store.remove_entity("a", MINUTE)
    assert stored(storage) == {MINUTE: [("a", 1)]}
    store.add_entity("b", 2 * MINUTE, 2)
    store.ack_processed_time(4 * MINUTE)
    # 120_000 would hold no entity (b joins after it): it is not written. A resume from
    # 60_000 replays the removal of a and the add of b, and ends the same.
    assert stored(storage) == {MINUTE: [("a", 1)], 3 * MINUTE: [("b", 2)], 4 * MINUTE: [("b", 2)]}
    resumed = StateStore(RUN, MINUTE, storage=storage).start(0, [])
    assert [(e.id, e.state) for e in resumed.entities] == [("b", 2)]


def test_a_resume_gives_exactly_the_entities_of_its_savepoint(storage: Storage) -> None:
    store = StateStore(RUN, MINUTE, storage=storage)
    store.init_run_state(0, [("a", 1), ("b", 2)])
    store.add_entity("c", 30_000, 3)
    store.remove_entity("a", 40_000)
    store.ack_processed_time(MINUTE)
    resumed = StateStore(RUN, MINUTE, storage=storage).start(0, [("a", 0), ("b", 0)])
    assert (resumed.resumed, resumed.timestamp) == (True, MINUTE)
    assert [(e.id, e.state) for e in resumed.entities] == [("b", 2), ("c", 3)]


# ------------------------------------------------------------------ stalls and status


def test_a_stall_is_warned_about_and_shown_in_the_status(
    storage: Storage, caplog: pytest.LogCaptureFixture
) -> None:
    store = StateStore(RUN, MINUTE, storage=storage)
    assert store.status() == StoreStatus(0, (), None, None)
    fast, slow = store.init_run_state(0, [("fast", 0), ("slow", 0)])
    store.ack_processed_time(MINUTE)
    caplog.set_level(logging.WARNING, logger="statestore")
    fast.ack_processed_time((STALL_WARNING_SAVEPOINTS) * MINUTE)  # one short of the threshold
    assert not caplog.records
    assert store.status() == StoreStatus(STALL_WARNING_SAVEPOINTS - 1, ("slow",), MINUTE, MINUTE)
    fast.ack_processed_time((STALL_WARNING_SAVEPOINTS + 1) * MINUTE)
    (warning,) = caplog.records
    assert warning.levelno == logging.WARNING
    message = warning.getMessage()
    assert f"{STALL_WARNING_SAVEPOINTS} savepoints" in message
    assert "'slow'" in message
    assert "'fast'" not in message
    fast.ack_processed_time((STALL_WARNING_SAVEPOINTS + 5) * MINUTE)
    assert len(caplog.records) == 1  # told again only when the count doubles
    fast.ack_processed_time((2 * STALL_WARNING_SAVEPOINTS + 1) * MINUTE)
    assert len(caplog.records) == 2
    slow.ack_processed_time((2 * STALL_WARNING_SAVEPOINTS + 1) * MINUTE)
    last = (2 * STALL_WARNING_SAVEPOINTS + 1) * MINUTE
    assert store.status() == StoreStatus(0, (), last, last)


# ------------------------------------------------------------------ threads


def test_threads_drive_their_entities_and_the_watermark_runs_between(storage: Storage) -> None:
    store = StateStore(RUN, MINUTE, storage=storage, keep_savepoints=100)
    entities = store.init_run_state(0, [(f"e{i}", 0) for i in range(8)])

    def drive(mine: list[Entity], minute: int) -> None:
        for entity in mine:
            for step in range(5):
                entity.update_state(minute * MINUTE + step, entity.state + 1)

    for minute in range(1, 6):
        threads = [
            threading.Thread(target=drive, args=(entities[i::4], minute - 1)) for i in range(4)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        store.ack_processed_time(minute * MINUTE)  # no thread drives an entity now
    assert stored(storage) == {
        m * MINUTE: [(f"e{i}", 5 * m) for i in range(8)] for m in range(1, 6)
    }


def test_a_run_without_entities_writes_nothing_until_one_joins(storage: Storage) -> None:
    store = StateStore(RUN, MINUTE, storage=storage)
    assert store.start(0, []).entities == []
    store.ack_processed_time(5 * MINUTE)
    assert storage.list_savepoints(RUN) == []
    store.add_entity("a", 5 * MINUTE, "a")
    store.ack_processed_time(6 * MINUTE)
    assert stored(storage) == {6 * MINUTE: [("a", "a")]}


def test_the_status_shows_a_savepoint_whose_write_failed() -> None:
    storage = FailingStorage()
    store = StateStore(RUN, MINUTE, storage=storage)
    store.init_run_state(0, [("a", 1)])
    storage.failures = 1
    with pytest.raises(BackendError):
        store.ack_processed_time(MINUTE)
    assert store.status() == StoreStatus(1, ("a",), MINUTE, None)
    store.ack_processed_time(MINUTE)
    assert store.status() == StoreStatus(0, (), MINUTE, MINUTE)


def test_a_failed_change_set_leaves_every_entity_as_it_was_and_a_retry_writes_it() -> None:
    storage = FailingStorage()
    store = StateStore(RUN, MINUTE, storage=storage, trust_update_state=True)
    entities = store.init_run_state(0, [("a", 1), ("b", 2)])
    store.ack_processed_time(MINUTE)  # a whole savepoint: the change sets' base
    entities[1].update_state(MINUTE + 1, 20)
    storage.failures = 1
    before = where(entities)
    with pytest.raises(BackendError, match="went away"):
        store.ack_processed_time(2 * MINUTE)
    assert where(entities) == before
    assert list(stored(storage)) == [MINUTE]
    store.ack_processed_time(2 * MINUTE)
    assert stored(storage)[2 * MINUTE] == [("a", 1), ("b", 20)]
