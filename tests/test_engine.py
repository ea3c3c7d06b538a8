"""The state store engine (DESIGN §6) on memory:// and sqlite://, plus the documented decisions.

Tests that need to see what the engine asked of the storage (what was encoded, which
savepoints were written in which order), or to damage stored bytes, use MemoryStorage
subclasses: real storage, with an observer or a back door.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Iterable, Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import statestore.storage
from statestore import open_storage
from statestore.codecs import SafeCodec
from statestore.engine import Entity, StartResult, StateStore
from statestore.errors import (
    BackendError,
    ConfigError,
    CorruptSavepointError,
    EncodeError,
    InvalidArgumentError,
    NoSavepointError,
    RunNotInitializedError,
    StaleWriterError,
)
from statestore.storage import MemoryStorage, Storage
from statestore.storage.layout import SavepointRecord

RUN = "run-1"
MINUTE = 60_000


@pytest.fixture(params=["memory", "sqlite"])
def url(request: pytest.FixtureRequest, tmp_path: Any) -> str:
    if request.param == "memory":
        return f"memory://engine-{uuid.uuid4().hex}"
    return f"sqlite:///{tmp_path}/engine.db"


def _open(url: str) -> Storage:
    try:
        return open_storage(url)
    except ConfigError as exc:  # the backend has not landed in this tree
        pytest.skip(f"{url.split(':', maxsplit=1)[0]} backend unavailable: {exc}")


@pytest.fixture
def storage(url: str) -> Iterator[Storage]:
    with _open(url) as opened:
        yield opened


class RecordingCodec(SafeCodec):
    """The safe codec, noting each state it encodes (the engine encodes through it)."""

    def __init__(self) -> None:
        super().__init__()
        self.encoded: list[Any] = []
        self._notes = threading.Lock()

    def encode(self, value: object) -> bytes:
        with self._notes:
            self.encoded.append(value)
        return super().encode(value)

    def encode_many(self, values: Iterable[object]) -> list[bytes]:
        return [self.encode(value) for value in values]


class RecordingStorage(MemoryStorage):
    """Memory storage noting each state encoded and each savepoint write, in call order."""

    def __init__(self, name: str | None = None) -> None:
        self.recorder = RecordingCodec()
        super().__init__(name, codec=self.recorder)
        self.encoded = self.recorder.encoded
        self.written: list[int] = []
        self._notes = threading.Lock()

    def save_encoded_savepoint(
        self,
        run_id: str,
        timestamp: int,
        encoded_entities: Iterable[tuple[str, bytes]],
        *,
        writer_token: int | None = None,
        state_version: int = 1,
    ) -> None:
        with self._notes:
            self.written.append(timestamp)
        super().save_encoded_savepoint(
            run_id,
            timestamp,
            encoded_entities,
            writer_token=writer_token,
            state_version=state_version,
        )


class FailingStorage(MemoryStorage):
    """Memory storage whose next ``failures`` commits fail as a lost server would."""

    failures = 0

    def _commit(self, run_id: str, record: SavepointRecord, fence: int | None) -> None:
        if self.failures:
            self.failures -= 1
            raise BackendError(f"run {run_id!r}: the store went away")
        super()._commit(run_id, record, fence)


def corrupt(storage: MemoryStorage, run_id: str, timestamp: int) -> None:
    """Flip a byte in the middle of a stored manifest (the back door of test_memory.py)."""
    saved = storage._store.runs[run_id].savepoints[timestamp]
    middle = len(saved.manifest) // 2
    saved.manifest = (
        saved.manifest[:middle]
        + bytes([saved.manifest[middle] ^ 0xFF])
        + saved.manifest[middle + 1 :]
    )


def stored(storage: Storage, run_id: str = RUN) -> dict[int, list[tuple[str, Any]]]:
    """Every savepoint of the run: timestamp -> entities, as stored."""
    return {
        row.timestamp: storage.get_savepoint(run_id, row.timestamp).entities
        for row in storage.list_savepoints(run_id)
    }


def ack_all(entities: list[Entity], timestamp: int) -> None:
    for entity in entities:
        entity.ack_processed_time(timestamp)


# ------------------------------------------------------------------ the grid


def test_start_off_the_grid_has_its_first_savepoint_on_it(storage: Storage) -> None:
    store = StateStore(RUN, MINUTE, storage=storage)
    entities = store.init_run_state(10_000, [("a", 0), ("b", 0)])
    assert [e.next_savepoint for e in entities] == [60_000, 60_000]
    ack_all(entities, 60_000)
    ack_all(entities, 120_000)
    assert [row.timestamp for row in storage.list_savepoints(RUN)] == [60_000, 120_000]


def test_start_on_the_grid_has_its_first_savepoint_one_interval_later(storage: Storage) -> None:
    store = StateStore(RUN, MINUTE, storage=storage)
    entities = store.init_run_state(60_000, [("a", 0)])
    assert entities[0].next_savepoint == 120_000
    ack_all(entities, 60_000)
    ack_all(entities, 119_999)
    assert storage.list_savepoints(RUN) == []
    ack_all(entities, 120_000)
    assert [row.timestamp for row in storage.list_savepoints(RUN)] == [120_000]


def test_ack_at_the_boundary_saves_and_moves_past_it(storage: Storage) -> None:
    store = StateStore(RUN, MINUTE, storage=storage)
    (entity,) = store.init_run_state(0, [("a", "initial")])
    entity.update_state(59_999, "before")
    assert entity.ack_processed_time(59_999) is entity
    assert storage.list_savepoints(RUN) == []
    assert (entity.next_savepoint, entity.last_savepoint) == (60_000, None)
    entity.ack_processed_time(60_000)
    assert (entity.timestamp, entity.next_savepoint, entity.last_savepoint) == (
        60_000,
        120_000,
        60_000,
    )
    assert storage.get_latest_savepoint(RUN) == (60_000, [("a", "before")])


# ------------------------------------------------------------------ completion


def test_a_savepoint_persists_when_every_entity_filled_it_in_registration_order(
    storage: Storage,
) -> None:
    store = StateStore(RUN, MINUTE, storage=storage)
    a, b, c = store.init_run_state(0, [("a", "a0"), ("b", "b0"), ("c", "c0")])
    c.ack_processed_time(60_000)
    a.ack_processed_time(60_000)
    assert storage.list_savepoints(RUN) == []  # b has not filled it yet
    b.ack_processed_time(60_000)  # the call that completes it persists it before returning
    assert stored(storage) == {60_000: [("a", "a0"), ("b", "b0"), ("c", "c0")]}


def test_savepoints_persist_in_ascending_order() -> None:
    storage = RecordingStorage()
    store = StateStore(RUN, 1_000, storage=storage, keep_savepoints=100)
    a, b = store.init_run_state(0, [("a", 0), ("b", 0)])
    a.ack_processed_time(5_500)  # fills 1000..5000
    b.ack_processed_time(2_000)  # completes 1000, 2000
    b.ack_processed_time(9_000)  # completes 3000..5000
    a.ack_processed_time(9_000)  # completes 6000..9000
    assert storage.written == list(range(1_000, 9_001, 1_000))
    assert [row.timestamp for row in storage.list_savepoints(RUN)] == storage.written


def test_retention_keeps_the_newest(storage: Storage) -> None:
    store = StateStore(RUN, MINUTE, storage=storage, keep_savepoints=2)
    entities = store.init_run_state(0, [("a", 0)])
    for minute in range(1, 6):
        entities[0].update_state(minute * MINUTE - 1, minute)
        ack_all(entities, minute * MINUTE)
        kept = [row.timestamp for row in storage.list_savepoints(RUN)]
        assert kept == [m * MINUTE for m in range(max(1, minute - 1), minute + 1)]
    assert storage.get_latest_savepoint(RUN) == (300_000, [("a", 5)])


# ------------------------------------------------------------------ jumps and value capture


def test_a_jump_fills_every_savepoint_with_one_encoding() -> None:
    storage = RecordingStorage()
    store = StateStore(RUN, MINUTE, storage=storage, keep_savepoints=10)
    a, b = store.init_run_state(0, [("a", "a0"), ("b", "b0")])
    storage.encoded.clear()  # init encodes each initial state once, to refuse bad ones early
    a.update_state(1, "a1")
    a.ack_processed_time(250_000)  # 60k, 120k, 180k, 240k at once
    assert storage.encoded == ["a1"]  # encoded once for all four
    assert (a.next_savepoint, a.last_savepoint) == (300_000, 240_000)
    b.ack_processed_time(250_000)
    assert storage.encoded == ["a1", "b0"]
    assert storage.written == [60_000, 120_000, 180_000, 240_000]  # each written once
    assert stored(storage) == {
        ts: [("a", "a1"), ("b", "b0")] for ts in (60_000, 120_000, 180_000, 240_000)
    }


@pytest.mark.timeout(60)  # written naively, this jump would never end
def test_a_jump_past_retention_writes_only_what_is_kept() -> None:
    storage = RecordingStorage()
    store = StateStore(RUN, 1, storage=storage, keep_savepoints=3)
    (entity,) = store.init_run_state(0, [("a", "state")])
    entity.ack_processed_time(10**12)  # a trillion savepoints completed by one call
    assert storage.written == [10**12 - 2, 10**12 - 1, 10**12]
    assert [row.timestamp for row in storage.list_savepoints(RUN)] == storage.written


def test_states_are_captured_by_value_at_save_time(storage: Storage) -> None:
    store = StateStore(RUN, MINUTE, storage=storage, keep_savepoints=5)
    a, b = store.init_run_state(0, [("a", {"seen": []}), ("b", None)])
    a.state["seen"].append(1)
    a.ack_processed_time(60_000)
    a.state["seen"].append(2)  # after the save: must not reach savepoint 60_000
    b.ack_processed_time(60_000)
    a.state["seen"].append(3)
    store.save("a", 120_000, a.state)
    a.state["seen"].append(4)
    store.save("b", 120_000, "b")
    assert stored(storage) == {
        60_000: [("a", {"seen": [1]}), ("b", None)],
        120_000: [("a", {"seen": [1, 2, 3]}), ("b", "b")],
    }


# ------------------------------------------------------------------ threads


def test_entities_saving_from_many_threads_make_whole_savepoints() -> None:
    storage = RecordingStorage()
    schedule, end, count = 10_000, 400_000, 8
    store = StateStore(RUN, schedule, storage=storage, keep_savepoints=1_000)
    entities = store.init_run_state(0, [(f"e{i}", 0) for i in range(count)])
    steps = [1_000 * (i + 1) + 700 * i for i in range(count)]  # jumps of every size
    barrier = threading.Barrier(count)
    errors: list[BaseException] = []

    def drive(entity: Entity, step: int) -> None:
        try:
            barrier.wait()
            for ts in [*range(step, end, step), end]:
                entity.ack_processed_time(ts)  # every input below ts is processed
                entity.update_state(ts, ts)  # process the input at ts
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    threads = [
        threading.Thread(target=drive, args=(entity, step))
        for entity, step in zip(entities, steps, strict=True)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    grid = list(range(schedule, end + 1, schedule))
    assert storage.written == grid  # ascending, each once
    saved = stored(storage)
    assert list(saved) == grid
    for ts, states in saved.items():
        # The state saved into ts is the last input before ts: the largest step multiple < ts.
        assert states == [(f"e{i}", (ts - 1) // step * step) for i, step in enumerate(steps)], ts


# ------------------------------------------------------------------ resume


def test_load_run_state_gives_back_the_states_and_timestamp(url: str) -> None:
    with _open(url) as storage:
        store = StateStore(RUN, MINUTE, storage=storage)
        a, b = store.init_run_state(5_000, [("a", {"n": 0}), ("b", [1, 2])])
        ack_all([a, b], 70_000)  # before the inputs at 70_000 and later: the right order
        a.update_state(70_000, {"n": 7})
        b.update_state(80_000, [3])
        ack_all([a, b], 125_000)
    with _open(url) as storage:  # a new process, as far as the store can tell
        store = StateStore(RUN, MINUTE, storage=storage)
        timestamp, entities = store.load_run_state()
        assert timestamp == 120_000
        assert entities == [
            Entity("a", {"n": 7}, 120_000, MINUTE, 180_000, 120_000),
            Entity("b", [3], 120_000, MINUTE, 180_000, 120_000),
        ]
        # The resumed run carries on saving.
        ack_all(entities, 180_000)
        assert storage.get_latest_savepoint(RUN) == (180_000, [("a", {"n": 7}), ("b", [3])])


def test_start_initializes_then_resumes(url: str) -> None:
    defs = [("a", 0), ("b", 0)]
    with _open(url) as storage:
        store = StateStore(RUN, MINUTE, storage=storage)
        started = store.start(10_000, defs)
        assert isinstance(started, StartResult)
        assert (started.resumed, started.timestamp) == (False, 10_000)
        assert [(e.id, e.state, e.next_savepoint) for e in started.entities] == [
            ("a", 0, 60_000),
            ("b", 0, 60_000),
        ]
        for entity in started.entities:
            entity.update_state(30_000, entity.id * 2)
        ack_all(started.entities, 61_000)
    with _open(url) as storage:
        resumed, timestamp, entities = StateStore(RUN, MINUTE, storage=storage).start(10_000, defs)
        assert (resumed, timestamp) == (True, 60_000)
        assert [(e.id, e.state, e.next_savepoint) for e in entities] == [
            ("a", "aa", 120_000),
            ("b", "bb", 120_000),
        ]


def test_start_warns_when_the_definitions_name_other_entities(
    storage: Storage, caplog: pytest.LogCaptureFixture
) -> None:
    entities = StateStore(RUN, MINUTE, storage=storage).init_run_state(0, [("a", 0), ("b", 0)])
    ack_all(entities, MINUTE)
    caplog.set_level(logging.WARNING, logger="statestore")
    started = StateStore(RUN, MINUTE, storage=storage).start(0, [("a", 0), ("c", 0)])
    assert [e.id for e in started.entities] == ["a", "b"]  # the savepoint's entities
    (warning,) = caplog.records
    assert "['c']" in warning.getMessage()  # b, only in the savepoint, is what add_entity makes


# ------------------------------------------------------------------ corrupt savepoints


def _three_savepoints(storage: MemoryStorage, keep: int = 3) -> list[Entity]:
    entities = StateStore(RUN, MINUTE, storage=storage, keep_savepoints=keep).init_run_state(
        0, [("a", 0), ("b", 0)]
    )
    for minute in range(1, 4):
        for entity in entities:
            entity.update_state(minute * MINUTE - 1, minute)
        ack_all(entities, minute * MINUTE)
    return entities


def test_a_corrupt_latest_savepoint_falls_back_with_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    storage = MemoryStorage()
    _three_savepoints(storage)
    corrupt(storage, RUN, 180_000)
    caplog.set_level(logging.WARNING, logger="statestore")
    started = StateStore(RUN, MINUTE, storage=storage).start(0, [("a", 0), ("b", 0)])
    assert (started.resumed, started.timestamp) == (True, 120_000)
    assert [(e.id, e.state) for e in started.entities] == [("a", 2), ("b", 2)]
    warnings = [r for r in caplog.records if r.name == "statestore"]
    assert any("180000" in r.getMessage() for r in warnings)
    assert all(r.levelno == logging.WARNING for r in warnings)


def test_fallback_skips_every_corrupt_savepoint_and_names_each(
    caplog: pytest.LogCaptureFixture,
) -> None:
    storage = MemoryStorage()
    _three_savepoints(storage)
    corrupt(storage, RUN, 180_000)
    corrupt(storage, RUN, 120_000)
    caplog.set_level(logging.WARNING, logger="statestore")
    timestamp, entities = StateStore(RUN, MINUTE, storage=storage).load_run_state()
    assert timestamp == 60_000
    assert [e.state for e in entities] == [1, 1]
    skipped = [r.getMessage() for r in caplog.records if "corrupt savepoint" in r.getMessage()]
    assert len(skipped) == 2
    assert "180000" in skipped[0]
    assert "120000" in skipped[1]


def test_strict_start_raises_on_a_corrupt_latest_savepoint() -> None:
    storage = MemoryStorage()
    _three_savepoints(storage)
    corrupt(storage, RUN, 180_000)
    store = StateStore(RUN, MINUTE, storage=storage)
    with pytest.raises(CorruptSavepointError, match="180000"):
        store.start(0, [("a", 0), ("b", 0)], strict=True)
    with pytest.raises(CorruptSavepointError, match="180000"):
        store.load_run_state(strict=True)


def test_no_intact_savepoint_raises() -> None:
    storage = MemoryStorage()
    _three_savepoints(storage)
    for ts in (60_000, 120_000, 180_000):
        corrupt(storage, RUN, ts)
    with pytest.raises(CorruptSavepointError, match="no intact savepoint"):
        StateStore(RUN, MINUTE, storage=storage).start(0, [("a", 0), ("b", 0)])


def test_after_a_fallback_retention_never_deletes_good_savepoints_for_corrupt_ones() -> None:
    storage = MemoryStorage()
    entities = StateStore(RUN, MINUTE, storage=storage, keep_savepoints=5).init_run_state(
        0, [("a", 0)]
    )
    for minute in range(1, 6):
        ack_all(entities, minute * MINUTE)
    for minute in range(2, 6):  # every savepoint but the oldest damaged
        corrupt(storage, RUN, minute * MINUTE)
    # Resumed with a smaller retention: the four corrupt savepoints are the newest.
    store = StateStore(RUN, MINUTE, storage=storage, keep_savepoints=2)
    timestamp, entities = store.load_run_state()
    assert timestamp == 60_000
    entities[0].update_state(60_000, "redone")
    ack_all(entities, 120_000)
    assert storage.get_savepoint(RUN, 60_000).entities == [("a", 0)]
    assert storage.get_savepoint(RUN, 120_000).entities == [("a", "redone")]
    # Crashing now resumes from what the resumed run wrote, not further back.
    timestamp, entities = StateStore(RUN, MINUTE, storage=storage, keep_savepoints=2).start(0, [])[
        1:
    ]
    assert timestamp == 120_000
    ack_all(entities, 300_000)  # past every corrupt one: retention applies again
    assert stored(storage) == {240_000: [("a", "redone")], 300_000: [("a", "redone")]}


# ------------------------------------------------------------------ one writer per run


def test_a_superseded_writer_stores_nothing(url: str) -> None:
    with _open(url) as first_storage, _open(url) as second_storage:
        old = StateStore(RUN, MINUTE, storage=first_storage)
        old_entities = old.init_run_state(0, [("a", "old"), ("b", "old")])
        ack_all(old_entities, MINUTE)
        before = stored(second_storage)
        new = StateStore(RUN, MINUTE, storage=second_storage)
        _timestamp, new_entities = new.load_run_state()  # takes the writer token
        old_a, old_b = old_entities
        old_a.ack_processed_time(2 * MINUTE)  # fills only: nothing to persist yet
        with pytest.raises(StaleWriterError):
            old_b.ack_processed_time(2 * MINUTE)  # would persist 120_000
        assert old_b.next_savepoint == 2 * MINUTE  # left as it was
        assert stored(second_storage) == before
        with pytest.raises(StaleWriterError):
            old.save("a", 3 * MINUTE, "old")
        assert stored(second_storage) == before
        for entity in new_entities:
            entity.update_state(MINUTE, "new")
        ack_all(new_entities, 2 * MINUTE)  # the new writer carries on
        assert first_storage.get_latest_savepoint(RUN) == (
            2 * MINUTE,
            [("a", "new"), ("b", "new")],
        )


def test_a_writer_superseded_by_init_is_refused_too(storage: Storage) -> None:
    store = StateStore(RUN, MINUTE, storage=storage)
    entities = store.init_run_state(0, [("a", 1)])
    StateStore(RUN, MINUTE, storage=storage).init_run_state(0, [("a", 2)])
    with pytest.raises(StaleWriterError):
        ack_all(entities, MINUTE)
    assert storage.list_savepoints(RUN) == []


# ------------------------------------------------------------------ documented decisions


def test_init_on_a_run_with_savepoints_is_refused_and_changes_nothing(storage: Storage) -> None:
    store = StateStore(RUN, MINUTE, storage=storage)
    entities = store.init_run_state(0, [("a", "kept")])
    ack_all(entities, MINUTE)
    before = stored(storage)
    with pytest.raises(InvalidArgumentError, match="already has savepoints"):
        StateStore(RUN, MINUTE, storage=storage).init_run_state(0, [("a", "new")])
    assert stored(storage) == before
    ack_all(entities, 2 * MINUTE)  # the refused init did not take the writer token
    assert storage.get_latest_savepoint_timestamp(RUN) == 2 * MINUTE


def test_a_run_initialized_without_a_savepoint(storage: Storage) -> None:
    store = StateStore(RUN, MINUTE, storage=storage)
    store.init_run_state(0, [("a", "first")])  # then the process dies before 60_000
    assert store.is_initialized()
    again = StateStore(RUN, MINUTE, storage=storage)
    with pytest.raises(NoSavepointError, match="no savepoint yet"):
        again.load_run_state()
    started = again.start(5_000, [("a", "second")])  # nothing durable: start over
    assert (started.resumed, started.timestamp) == (False, 5_000)
    assert [(e.id, e.state) for e in started.entities] == [("a", "second")]
    ack_all(started.entities, MINUTE)
    assert storage.get_latest_savepoint(RUN) == (MINUTE, [("a", "second")])


def test_load_on_an_unknown_run(storage: Storage) -> None:
    with pytest.raises(RunNotInitializedError):
        StateStore(RUN, MINUTE, storage=storage).load_run_state()
    assert not storage.is_initialized(RUN)


def test_a_second_save_into_a_filled_savepoint_is_ignored(storage: Storage) -> None:
    store = StateStore(RUN, MINUTE, storage=storage, keep_savepoints=5)
    store.init_run_state(0, [("a", None), ("b", None)])
    store.save("a", 60_000, "first")
    store.save("a", 70_000, "second")  # 60_000 is filled: kept as it was
    store.save("a", 120_000, "third")  # 120_000 is not: filled now
    store.save("b", 120_000, "b")
    assert stored(storage) == {
        60_000: [("a", "first"), ("b", "b")],
        120_000: [("a", "third"), ("b", "b")],
    }


def test_older_saves_and_acks_change_nothing(storage: Storage) -> None:
    store = StateStore(RUN, MINUTE, storage=storage, keep_savepoints=5)
    a, b = store.init_run_state(0, [("a", "a0"), ("b", "b0")])
    a.ack_processed_time(130_000)
    a.update_state(130_000, "later")
    assert a.ack_processed_time(70_000) is a  # older than a's timestamp: implied already
    assert (a.timestamp, a.next_savepoint, a.last_savepoint) == (130_000, 180_000, 120_000)
    store.save("a", 70_000, "older")  # 60_000 is filled: ignored
    b.ack_processed_time(130_000)
    assert stored(storage) == {
        60_000: [("a", "a0"), ("b", "b0")],
        120_000: [("a", "a0"), ("b", "b0")],
    }


def test_update_state_with_an_older_timestamp_keeps_the_entity_time(storage: Storage) -> None:
    (entity,) = StateStore(RUN, MINUTE, storage=storage).init_run_state(0, [("a", 0)])
    entity.update_state(50_000, 1)
    assert entity.update_state(40_000, 2) is entity
    assert (entity.state, entity.timestamp) == (2, 50_000)


def test_without_a_schedule_nothing_is_ever_saved(storage: Storage) -> None:
    store = StateStore(RUN, None, storage=storage)
    started = store.start(10_000, [("a", 0)])
    (entity,) = started.entities
    assert (entity.schedule, entity.next_savepoint, entity.last_savepoint) == (None, None, None)
    entity.update_state(10**9, 1)
    entity.ack_processed_time(10**12)
    store.save("a", 10**12, 2)
    assert entity.timestamp == 10**12
    assert store.is_initialized()
    assert storage.list_savepoints(RUN) == []
    restarted = StateStore(RUN, None, storage=storage).start(10_000, [("a", 0)])
    assert (restarted.resumed, restarted.timestamp) == (False, 10_000)


# ------------------------------------------------------------------ failures and bad input


def test_a_failed_persist_is_retried_by_the_next_call() -> None:
    storage = FailingStorage()
    store = StateStore(RUN, MINUTE, storage=storage)
    (entity,) = store.init_run_state(0, [("a", "x")])
    storage.failures = 1
    with pytest.raises(BackendError, match="went away"):
        entity.ack_processed_time(MINUTE)
    assert (entity.timestamp, entity.next_savepoint) == (0, MINUTE)  # unchanged
    assert storage.list_savepoints(RUN) == []
    entity.ack_processed_time(MINUTE)
    assert storage.get_latest_savepoint(RUN) == (MINUTE, [("a", "x")])


def test_an_unencodable_initial_state_is_refused_before_anything_is_written(
    storage: Storage,
) -> None:
    store = StateStore(RUN, MINUTE, storage=storage)
    with pytest.raises(EncodeError, match="'b'"):
        store.init_run_state(0, [("a", 1), ("b", object())])
    assert not storage.is_initialized(RUN)


def test_an_unencodable_state_at_save_changes_nothing(storage: Storage) -> None:
    store = StateStore(RUN, MINUTE, storage=storage)
    (entity,) = store.init_run_state(0, [("a", 1)])
    entity.update_state(1, object())
    with pytest.raises(EncodeError, match="'a'"):
        entity.ack_processed_time(MINUTE)
    assert entity.next_savepoint == MINUTE
    entity.update_state(2, "fine")
    entity.ack_processed_time(MINUTE)
    assert storage.get_latest_savepoint(RUN) == (MINUTE, [("a", "fine")])


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (("", MINUTE), "run_id"),
        ((RUN, 0), "schedule"),
        ((RUN, True), "schedule"),
        ((RUN, 1.5), "schedule"),
        ((RUN, MINUTE, None, 0), "keep_savepoints"),
        ((RUN, MINUTE, None, True), "keep_savepoints"),
        ((RUN, MINUTE, "memory://"), "storage"),
    ],
)
def test_bad_constructor_arguments(args: tuple[Any, ...], match: str) -> None:
    with pytest.raises(InvalidArgumentError, match=match):
        StateStore(*args)


@pytest.mark.parametrize(
    ("timestamp", "defs", "match"),
    [
        (-1, [("a", 0)], "timestamp"),
        (1.0, [("a", 0)], "timestamp"),
        (0, [("a", 0), ("a", 1)], "duplicate"),
        (0, [(1, 0)], "id must be a str"),
        (0, {"a": 0}, "entities"),
        (0, "ab", "entities"),
    ],
)
def test_bad_start_arguments_write_nothing(
    storage: Storage, timestamp: Any, defs: Any, match: str
) -> None:
    store = StateStore(RUN, MINUTE, storage=storage)
    with pytest.raises(InvalidArgumentError, match=match):
        store.start(timestamp, defs)
    with pytest.raises(InvalidArgumentError, match=match):
        store.init_run_state(timestamp, defs)
    assert not storage.is_initialized(RUN)


def test_saves_the_store_cannot_place_are_refused(storage: Storage) -> None:
    store = StateStore(RUN, MINUTE, storage=storage)
    with pytest.raises(RunNotInitializedError, match="not started"):
        store.save("a", MINUTE, 1)
    first = store.init_run_state(0, [("a", 1)])
    with pytest.raises(InvalidArgumentError, match="unknown entity id 'z'"):
        store.save("z", MINUTE, 1)
    with pytest.raises(InvalidArgumentError, match="timestamp"):
        store.save("a", -5, 1)
    with pytest.raises(InvalidArgumentError, match="timestamp"):
        first[0].ack_processed_time(True)
    store.init_run_state(0, [("a", 2)])  # started again: entities of the first start are old
    with pytest.raises(InvalidArgumentError, match="earlier start"):
        first[0].ack_processed_time(MINUTE)
    assert storage.list_savepoints(RUN) == []


def test_a_detached_entity_cannot_save() -> None:
    entity = Entity("a", 0, 0, MINUTE, MINUTE)
    entity.ack_processed_time(MINUTE - 1)  # nothing to save: fine
    with pytest.raises(RunNotInitializedError, match="belongs to no StateStore"):
        entity.ack_processed_time(MINUTE)


def test_storage_none_uses_the_configured_storage(monkeypatch: pytest.MonkeyPatch) -> None:
    from statestore.storage import _functions

    monkeypatch.setattr(_functions, "_configured", None)
    with pytest.raises(ConfigError):
        StateStore(RUN, MINUTE)
    configured = MemoryStorage()
    statestore.storage.init_config(configured)
    store = StateStore(RUN, MINUTE)
    assert store.storage is configured
    ack_all(store.init_run_state(0, [("a", 1)]), MINUTE)
    assert statestore.storage.last_persisted_timestamp(RUN) == MINUTE


# ------------------------------------------------------------------ against a model


@settings(max_examples=60, deadline=None)
@given(
    entity_count=st.integers(min_value=1, max_value=4),
    keep=st.sampled_from([1, 2, 3, 10_000]),
    steps=st.lists(st.tuples(st.integers(0, 3), st.integers(0, 35), st.integers()), max_size=60),
)
def test_random_acks_make_the_savepoints_a_model_predicts(
    entity_count: int, keep: int, steps: list[tuple[int, int, int]]
) -> None:
    schedule = 10
    storage = MemoryStorage()
    store = StateStore(RUN, schedule, storage=storage, keep_savepoints=keep)
    entities = store.init_run_state(3, [(f"e{i}", -i) for i in range(entity_count)])
    acks: list[list[tuple[int, int]]] = [[] for _ in entities]  # (ack ts, state then)
    for index, delta, value in steps:
        entity = entities[index % entity_count]
        ts = entity.timestamp + delta
        acks[index % entity_count].append((ts, entity.state))
        entity.ack_processed_time(ts)
        entity.update_state(ts, value)

    # The savepoint at S holds each entity's state at its first ack at or after S,
    # and exists once every entity has acked that far.
    reached = min((max((ts for ts, _ in log), default=0) for log in acks), default=0)
    complete = list(range(schedule, reached + 1, schedule))
    expected = {
        savepoint: [
            (f"e{i}", next(state for ts, state in log if ts >= savepoint))
            for i, log in enumerate(acks)
        ]
        for savepoint in complete[-keep:]
    }
    assert stored(storage) == expected
