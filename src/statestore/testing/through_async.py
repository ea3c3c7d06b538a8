"""The conformance suite driven through the coroutine twins (``asave_savepoint`` ...).

:class:`ThroughAsyncAPI` is a mixin for a backend's test class: every handle the suite
opens is wrapped in :class:`AsyncDriven`, which presents the blocking names the suite
calls and runs each through its coroutine twin on an event loop: one per thread and
handle, so the suite's threads drive one storage from several loops at once (nothing
may bind to one loop). The same tests then check the async surface, with no second
copy of them::

    class TestMyBackendThroughAsync(ThroughAsyncAPI, TestMyBackend):
        pass

Operations without a twin (``acquire_writer``, ``encode_state`` ...) and attributes
pass through to the wrapped storage unchanged; the back doors get the wrapped storage.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import threading
from collections.abc import Coroutine
from types import TracebackType
from typing import Any, ClassVar, cast

from ..codecs import Codec
from ..storage import Storage
from .hooks import BackendHooks
from .worker import payload, wholeness_problem

__all__ = ["TWINNED", "AsyncDriven", "ThroughAsyncAPI", "cancel_saves"]

#: The blocking operations that have an ``a``-prefixed twin (DESIGN §9); ``close`` and
#: the context manager go through ``aclose`` and ``async with``.
TWINNED = (
    "is_initialized",
    "init_storage",
    "save_savepoint",
    "get_latest_savepoint",
    "get_latest_savepoint_timestamp",
    "get_savepoint",
    "list_savepoints",
    "list_runs",
    "delete_old_savepoints",
    "delete_run",
)


class AsyncDriven:
    """A storage whose twinned operations are called through their coroutines."""

    def __init__(self, storage: Storage) -> None:
        object.__setattr__(self, "wrapped", storage)
        object.__setattr__(self, "_runners", {})  # thread id: its event loop's runner
        object.__setattr__(self, "_runners_lock", threading.Lock())

    @property  # type: ignore[misc]
    def __class__(self) -> type[Storage]:  # type: ignore[override]
        # isinstance() asks for __class__: the suite hands the wrapper to StateStore,
        # which accepts Storage objects (as unittest.mock's spec'd mocks pass isinstance).
        return type(self.wrapped)

    def __getattr__(self, name: str) -> Any:
        twin = getattr(self.wrapped, f"a{name}") if name in TWINNED else None
        if twin is None:
            return getattr(self.wrapped, name)

        def blocking(*args: Any, **kwargs: Any) -> Any:
            return self._run(twin(*args, **kwargs))

        return blocking

    def _run(self, coroutine: Coroutine[Any, Any, Any]) -> Any:
        """Run ``coroutine`` on this thread's event loop for this handle."""
        with self._runners_lock:
            runner = self._runners.get(threading.get_ident())
            if runner is None:
                runner = self._runners[threading.get_ident()] = asyncio.Runner()
        return runner.run(coroutine)

    def _close_loops(self) -> None:
        with self._runners_lock:
            runners = list(self._runners.values())
            self._runners.clear()
        for runner in runners:
            runner.close()

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self.wrapped, name, value)  # max_savepoint_bytes, as the suite sets it

    def close(self) -> None:
        self._run(self.wrapped.aclose())
        self._close_loops()

    def __enter__(self) -> AsyncDriven:
        self._run(self.wrapped.__aenter__())
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._run(self.wrapped.__aexit__(exc_type, exc, traceback))
        self._close_loops()

    def __repr__(self) -> str:
        return f"AsyncDriven({self.wrapped!r})"


async def cancel_saves(
    storage: Storage, run_id: str, seed: int, first: int, saves: int = 8
) -> tuple[list[int], list[int]]:
    """Start ``saves`` saves of :func:`~statestore.testing.worker.payload` one after
    another, at timestamps from ``first``, each cancelled after a random delay (while
    queued, inside or after its save), beside a read cancelled with it; returns the
    timestamps of the saves that ended before the cancel and of those cancelled."""
    rng = random.Random(seed)  # noqa: S311 - replayable delays, not secrets
    done: list[int] = []
    cancelled: list[int] = []
    for timestamp in range(first, first + saves):
        save = asyncio.ensure_future(storage.asave_savepoint(run_id, timestamp, payload(timestamp)))
        read = asyncio.ensure_future(storage.aget_latest_savepoint(run_id))
        await asyncio.sleep(0)  # both calls are made: queued for a worker or running
        await asyncio.sleep(rng.random() * 0.004)
        read.cancel()
        if save.done():
            save.result()  # raises what the save raised
            done.append(timestamp)
        else:
            save.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await save
            cancelled.append(timestamp)
    return done, cancelled


def unwrap(storage: Storage) -> Storage:
    """The storage an :class:`AsyncDriven` wraps (itself for any other)."""
    return cast(Storage, getattr(storage, "wrapped", storage))


class ThroughAsyncAPI(BackendHooks):
    """Mix in before a backend's test class: its suite runs through the twins.

    The suite's child processes (the multi-process tests) use the blocking API of their
    own interpreter. The test that kills a writer process mid-save becomes its async
    counterpart: tasks cancelled at random points inside their saves.
    """

    #: How many seeds (runs of cancelled saves) the cancellation test tries.
    cancel_seeds: ClassVar[int] = 12

    def test_a_killed_writer_loses_nothing_acknowledged(self, url: str) -> None:
        """Through the twins a killed writer is a cancelled task, at a random point of
        its save: the cancellation takes effect once the save has ended, so every save
        is there and whole, cancelled or not, and the store works on."""
        issued: list[int] = []
        with super().open(url) as storage:
            storage.init_storage("run")
            for seed in range(self.cancel_seeds):
                done, cancelled = asyncio.run(cancel_saves(storage, "run", seed, len(issued)))
                issued += done + cancelled
                listed = [row.timestamp for row in storage.list_savepoints("run")]
                assert listed == sorted(issued), f"seed {seed}: cancelled {cancelled}"
            for timestamp in issued:
                assert wholeness_problem(storage.get_savepoint("run", timestamp)) is None
        with super().open(url) as storage:  # what a new handle sees, then a save more
            after = max(issued) + 1
            storage.save_savepoint("run", after, payload(after))
            if self.persistent:
                listed = [row.timestamp for row in storage.list_savepoints("run")]
                assert listed == [*sorted(issued), after]
            assert wholeness_problem(storage.get_latest_savepoint("run")) is None

    def open(self, url: str, codec: Codec | None = None) -> Storage:
        # Typed as the Storage it stands for: the suite calls the blocking names.
        return cast(Storage, AsyncDriven(super().open(url, codec)))

    def raw_parts(self, storage: Storage, run_id: str, timestamp: int) -> list[str]:
        return super().raw_parts(unwrap(storage), run_id, timestamp)

    def raw_read(self, storage: Storage, run_id: str, timestamp: int, part: str) -> bytes:
        return super().raw_read(unwrap(storage), run_id, timestamp, part)

    def raw_write(
        self, storage: Storage, run_id: str, timestamp: int, part: str, data: bytes
    ) -> None:
        super().raw_write(unwrap(storage), run_id, timestamp, part, data)
