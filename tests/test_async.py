"""The coroutine twins beyond the conformance kit (which runs through them in
test_async_conformance.py): where the work runs, cancellation, timeouts, many tasks,
several loops and threads at once, and the engine's twins.

Stores are SQLite files (durable, one connection per thread) unless a test needs to
watch the storage from inside: then a MemoryStorage subclass, real storage with an
observer.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import logging
import random
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from statestore import Entity, StateStore, open_storage
from statestore.errors import BackendError, EncodeError, StateStoreError
from statestore.storage import MemoryStorage, SQLiteStorage, Storage
from statestore.storage.layout import SavepointRecord
from statestore.testing.through_async import TWINNED
from statestore.testing.worker import payload, wholeness_problem

MINUTE = 60_000
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path}/store.db"


@pytest.fixture
def storage(url: str) -> Iterator[Storage]:
    with open_storage(url) as opened:
        yield opened


def storage_url(storage: Storage) -> str:
    assert isinstance(storage, SQLiteStorage)
    return f"sqlite:///{storage.path}"


class WatchedStorage(MemoryStorage):
    """Memory storage that records the thread of each commit and can hold reads."""

    def __init__(self) -> None:
        super().__init__()
        self.commit_threads: list[str] = []
        self.reads = 0
        self.gate = threading.Event()
        self.gate.set()

    def _commit(self, run_id: str, record: SavepointRecord, writer_token: int | None) -> None:
        self.commit_threads.append(threading.current_thread().name)
        super()._commit(run_id, record, writer_token)

    def _run_exists(self, run_id: str) -> bool:
        self.gate.wait(10)
        self.reads += 1
        return super()._run_exists(run_id)


# ==================================================================== the surface


def test_every_twin_of_design_section_9_is_one_helper_s_coroutine() -> None:
    storage_twins = [f"a{name}" for name in TWINNED]
    engine_twins = ["astart", "asave", "aack_processed_time", "aremove_entity"]
    functions = [getattr(Storage, name) for name in storage_twins]
    functions += [getattr(StateStore, name) for name in engine_twins]
    functions.append(Entity.aack_processed_time)
    for function in [*functions, Storage.aclose]:
        assert inspect.iscoroutinefunction(function), function
    # No logic of its own per operation: every twin runs the same code, the helper's.
    assert {function.__code__ for function in functions} == {Storage.asave_savepoint.__code__}
    assert Storage.asave_savepoint.__name__ == "asave_savepoint"


def test_the_twins_do_what_the_blocking_calls_do(storage: Storage) -> None:
    async def main() -> None:
        async with storage as entered:
            assert entered is storage
            assert await storage.ais_initialized("run") is False
            await storage.ainit_storage("run")
            for ts in (MINUTE, 2 * MINUTE, 3 * MINUTE):
                await storage.asave_savepoint("run", ts, [("a", {"ts": ts})])
            assert await storage.ais_initialized("run") is True
            assert await storage.alist_runs() == ["run"]
            assert await storage.aget_latest_savepoint_timestamp("run") == 3 * MINUTE
            assert await storage.aget_latest_savepoint("run") == (
                3 * MINUTE,
                [("a", {"ts": 3 * MINUTE})],
            )
            assert await storage.aget_savepoint("run", MINUTE) == (MINUTE, [("a", {"ts": MINUTE})])
            await storage.adelete_old_savepoints("run", 1)
            assert [row.timestamp for row in await storage.alist_savepoints("run")] == [3 * MINUTE]
            with pytest.raises(EncodeError, match="'bad'"):  # errors are the blocking call's
                await storage.asave_savepoint("run", 4 * MINUTE, [("bad", object())])
            await storage.adelete_run("run")
            assert await storage.alist_runs() == []

    asyncio.run(main())
    with pytest.raises(BackendError, match="closed"):  # the pool is gone with the store
        asyncio.run(storage.alist_runs())


def test_the_work_runs_in_the_storage_s_worker_threads() -> None:
    storage = WatchedStorage()
    loop_thread = threading.current_thread().name

    async def main() -> None:
        await storage.ainit_storage("run")
        await asyncio.gather(*(storage.asave_savepoint("run", ts, payload(ts)) for ts in range(20)))

    asyncio.run(main())
    storage.close()
    assert loop_thread not in storage.commit_threads
    threads = set(storage.commit_threads)
    assert all(name.startswith("statestore-WatchedStorage") for name in threads), threads
    assert 1 < len(threads) <= storage.async_workers  # bounded, and used side by side


def test_close_inside_one_of_the_storage_s_own_calls_does_not_wait_for_itself() -> None:
    class ClosingStorage(MemoryStorage):
        def is_initialized(self, run_id: str) -> bool:
            self.close()  # waits for the other calls in flight, not for this one
            return False

    storage = ClosingStorage()
    assert asyncio.run(asyncio.wait_for(storage.ais_initialized("run"), 10)) is False
    with pytest.raises(BackendError, match="ClosingStorage is closed"):
        asyncio.run(storage.ais_initialized("run"))


def test_a_twin_s_call_sees_the_awaiting_task_s_context_variables() -> None:
    request: contextvars.ContextVar[str] = contextvars.ContextVar("request", default="none")
    seen: list[str] = []

    class ContextStorage(MemoryStorage):
        def _commit(self, run_id: str, record: SavepointRecord, writer_token: int | None) -> None:
            seen.append(request.get())  # a tracing span travels the same way
            super()._commit(run_id, record, writer_token)

    storage = ContextStorage()
    storage.init_storage("run")

    async def handle(name: str, timestamp: int) -> None:
        request.set(name)
        await storage.asave_savepoint("run", timestamp, [("a", timestamp)])

    async def main() -> None:
        await asyncio.gather(*(handle(f"request-{i}", i) for i in range(6)))

    asyncio.run(main())
    storage.close()
    assert sorted(seen) == [f"request-{i}" for i in range(6)]


# ==================================================================== cancellation


def test_a_cancelled_read_that_no_worker_took_never_runs() -> None:
    storage = WatchedStorage()
    storage.init_storage("run")
    storage.reads = 0
    storage.gate.clear()  # every read holds its worker until the gate opens

    async def main() -> None:
        busy = [asyncio.ensure_future(storage.ais_initialized("run")) for _ in range(4)]
        queued = asyncio.ensure_future(storage.ais_initialized("run"))
        await asyncio.sleep(0.05)
        queued.cancel()
        with pytest.raises(asyncio.CancelledError):  # at once, the workers still held
            await queued
        storage.gate.set()
        assert await asyncio.gather(*busy) == [True] * 4

    asyncio.run(main())
    storage.close()
    assert storage.reads == 4


def test_a_cancelled_write_that_no_worker_took_still_runs_before_the_cancel() -> None:
    storage = WatchedStorage()
    storage.init_storage("run")
    storage.gate.clear()

    async def main() -> None:
        busy = [asyncio.ensure_future(storage.ais_initialized("run")) for _ in range(4)]
        save = asyncio.ensure_future(storage.asave_savepoint("run", 1, payload(1)))
        await asyncio.sleep(0.05)
        save.cancel()
        await asyncio.sleep(0.05)
        assert not save.done()  # the cancel waits for the save, which waits for a worker
        storage.gate.set()
        with pytest.raises(asyncio.CancelledError):
            await save
        assert storage.list_savepoints("run")[-1].timestamp == 1  # done when cancelled
        await asyncio.gather(*busy)

    asyncio.run(main())
    storage.close()


def test_a_timeout_around_a_save_raises_once_the_save_is_whole(storage: Storage) -> None:
    storage.init_storage("run")
    big = [(f"e{i}", {"i": i, "pad": bytes(range(256)) * 400}) for i in range(100)]  # 10 MB

    async def main() -> None:
        started = time.perf_counter()
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(storage.asave_savepoint("run", 1, big), 0.001)
        assert time.perf_counter() - started > 0.001
        assert await storage.aget_latest_savepoint("run") == (1, big)
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.001):  # the 3.11 form, the same rule
                await storage.asave_savepoint("run", 2, big)
        assert await storage.aget_savepoint("run", 2) == (2, big)
        await storage.asave_savepoint("run", 3, payload(3))  # the store works on

    asyncio.run(main())
    assert [row.timestamp for row in storage.list_savepoints("run")] == [1, 2, 3]


def test_a_cancelled_write_that_fails_logs_its_error(
    storage: Storage, caplog: pytest.LogCaptureFixture
) -> None:
    async def main() -> None:
        save = asyncio.ensure_future(storage.asave_savepoint("never-initialized", 1, [("a", 1)]))
        await asyncio.sleep(0)
        save.cancel()
        with pytest.raises(asyncio.CancelledError):
            await save

    with caplog.at_level(logging.WARNING, logger="statestore"):
        asyncio.run(main())
    assert "RunNotInitializedError" in caplog.text
    assert "never-initialized" in caplog.text


def test_a_cancelled_aclose_still_closes_after_the_saves_in_flight(storage: Storage) -> None:
    storage.init_storage("run")

    async def main() -> None:
        saves = [
            asyncio.ensure_future(storage.asave_savepoint("run", ts, payload(ts)))
            for ts in range(8)
        ]
        await asyncio.sleep(0)
        closing = asyncio.ensure_future(storage.aclose())
        await asyncio.sleep(0)
        closing.cancel()
        with pytest.raises(asyncio.CancelledError):
            await closing
        assert all(save.done() for save in saves)  # closing waited for them
        await asyncio.gather(*saves)

    asyncio.run(main())
    with pytest.raises(BackendError, match="closed"):
        asyncio.run(storage.alist_runs())
    with open_storage(storage_url(storage)) as reopened:
        assert [row.timestamp for row in reopened.list_savepoints("run")] == list(range(8))


@pytest.mark.parametrize("seed", range(6))
def test_engine_calls_cancelled_at_random_points_leave_whole_savepoints(
    url: str, seed: int
) -> None:
    """Entities acknowledge minute after minute through the twins while a random task is
    cancelled now and then; every savepoint holds each entity's state of its minute,
    and the run resumes and goes on."""
    rng = random.Random(seed)
    ids = [f"e{i}" for i in range(5)]
    pad = bytes(range(256)) * 200  # 50 KB a state: saves take a while
    cancels: list[int] = []

    async def drive(store: StateStore, entities: list[Entity], minutes: range) -> None:
        for minute in minutes:
            calls = [entity.aack_processed_time(minute * MINUTE) for entity in entities]
            tasks = [asyncio.ensure_future(call) for call in calls]
            await asyncio.sleep(rng.random() * 0.003)
            victim = rng.choice(tasks)
            if victim.cancel():  # False when it had ended already
                cancels.append(minute)
            for task in tasks:  # a cancelled acknowledgement has still happened whole
                try:
                    await task
                except asyncio.CancelledError:
                    assert task is victim
            for entity in entities:
                assert entity.next_savepoint == (minute + 1) * MINUTE
                entity.update_state(minute * MINUTE, {"minute": minute, "pad": pad})

    async def main() -> None:
        with open_storage(url) as storage:
            store = StateStore("run", MINUTE, storage, keep_savepoints=20)
            start = await store.astart(
                0, [(entity_id, {"minute": 0, "pad": pad}) for entity_id in ids]
            )
            await drive(store, start.entities, range(1, 8))
        with open_storage(url) as storage:
            rows = storage.list_savepoints("run")
            assert [row.timestamp for row in rows] == [m * MINUTE for m in range(1, 8)]
            for row in rows:
                _, entities = storage.get_savepoint("run", row.timestamp)
                minute = row.timestamp // MINUTE - 1  # a savepoint at T holds inputs < T
                assert entities == [
                    (entity_id, {"minute": minute, "pad": pad}) for entity_id in ids
                ]
            store = StateStore("run", MINUTE, storage, keep_savepoints=20)
            resumed = await store.astart(0, [])
            assert resumed.resumed
            assert resumed.timestamp == 7 * MINUTE
            await drive(store, resumed.entities, range(8, 10))
            assert storage.get_latest_savepoint_timestamp("run") == 9 * MINUTE

    asyncio.run(main())
    assert cancels, "no call was cancelled before its end: nothing was tested"


# ==================================================================== concurrency


def test_many_tasks_on_one_store(storage: Storage) -> None:
    runs, saves = 10, 20

    async def main() -> None:
        await asyncio.gather(*(storage.ainit_storage(f"run-{r}") for r in range(runs)))
        await asyncio.gather(
            *(
                storage.asave_savepoint(f"run-{r}", ts, payload(ts))
                for r in range(runs)
                for ts in range(1, saves + 1)
            ),
            *(storage.alist_runs() for _ in range(20)),
        )
        for r in range(runs):
            assert len(await storage.alist_savepoints(f"run-{r}")) == saves
            latest = await storage.aget_latest_savepoint(f"run-{r}")
            assert latest.timestamp == saves
            assert wholeness_problem(latest) is None

    asyncio.run(main())


def test_sync_and_async_calls_from_several_threads_and_loops_at_once(storage: Storage) -> None:
    """Three threads each run an event loop of their own with tasks on the twins, two
    more call the blocking methods, all on one storage and one shared run."""
    storage.init_storage("shared")
    errors: list[BaseException] = []
    start = threading.Barrier(5)

    async def tasks(i: int) -> None:
        await storage.ainit_storage(f"async-{i}")
        saves = [
            storage.asave_savepoint(run_id, ts, payload(ts))
            for ts in range(i * 100, i * 100 + 10)
            for run_id in (f"async-{i}", "shared")
        ]
        await asyncio.gather(*saves, storage.adelete_old_savepoints("shared", 30))

    def run(i: int) -> None:
        try:
            start.wait()
            if i < 3:
                asyncio.run(tasks(i))
            else:
                storage.init_storage(f"sync-{i}")
                for ts in range(i * 100, i * 100 + 10):
                    storage.save_savepoint(f"sync-{i}", ts, payload(ts))
                    storage.save_savepoint("shared", ts, payload(ts))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(5)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
    for run_id in [*(f"async-{i}" for i in range(3)), *(f"sync-{i}" for i in (3, 4))]:
        rows = storage.list_savepoints(run_id)
        assert len(rows) == 10, run_id
        for row in rows:
            assert wholeness_problem(storage.get_savepoint(run_id, row.timestamp)) is None
    for row in storage.list_savepoints("shared"):
        assert wholeness_problem(storage.get_savepoint("shared", row.timestamp)) is None
    assert storage.get_latest_savepoint_timestamp("shared") == 409


# ==================================================================== the engine


def test_the_engine_twins_persist_as_the_blocking_calls_do(storage: Storage) -> None:
    async def main() -> None:
        store = StateStore("run", MINUTE, storage)
        resumed, since, entities = await store.astart(0, [("a", 0), ("b", 0)])
        assert (resumed, since) == (False, 0)
        a, _b = entities
        a.update_state(10, 1)
        assert await a.aack_processed_time(MINUTE) is a
        await store.asave("b", MINUTE, 2)  # completes the savepoint at one minute
        assert storage.get_latest_savepoint("run") == (MINUTE, [("a", 1), ("b", 2)])
        if hasattr(StateStore, "ack_processed_time"):  # the watermark's blocking method
            await store.aack_processed_time(2 * MINUTE)
            assert storage.get_latest_savepoint_timestamp("run") == 2 * MINUTE
        else:
            with pytest.raises(StateStoreError, match="ack_processed_time does not exist"):
                await store.aack_processed_time(2 * MINUTE)
        if not hasattr(StateStore, "remove_entity"):
            with pytest.raises(StateStoreError, match="remove_entity does not exist"):
                await store.aremove_entity("a", 2 * MINUTE)

    asyncio.run(main())


def test_an_entity_of_no_store_acknowledges_on_the_loop() -> None:
    entity = Entity(id="a", state=1, timestamp=0, schedule=MINUTE, next_savepoint=MINUTE)
    assert asyncio.run(entity.aack_processed_time(10)) is entity
    assert entity.timestamp == 10
    with pytest.raises(StateStoreError, match="belongs to no StateStore"):
        asyncio.run(entity.aack_processed_time(MINUTE))


# ==================================================================== the benchmark


def test_the_async_benchmark_runs_quick() -> None:
    """``python -m benchmarks.async_cost --quick`` still runs and reports every figure
    (the figures themselves belong to docs/async.md, not to a test)."""
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.async_cost", "--quick"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "A call's fixed cost (is_initialized on memory://" in done.stdout
    for row in ["| 100 | 5 |", "| 2,000 | 3 |"]:
        line = next(line for line in done.stdout.splitlines() if line.startswith(row))
        assert line.endswith(("| PASS |", "| MISS |")), line
    for label in ["nothing else running", "asave_savepoint, 20,000", "save_savepoint on the loop"]:
        assert f"| {label}" in done.stdout
