"""The coroutine twins: every blocking operation, awaitable, without a second copy of it.

``asave_savepoint``, ``astart`` and the other ``a``-prefixed methods are made by one
helper, :func:`twin`, from the blocking method of the same name: a twin looks that
method up by name when it is called and runs it in :class:`Workers`, a bounded thread
pool owned by the storage object. The logic (validation, encoding, checksums, I/O,
the engine's bookkeeping) exists once, in the blocking method; no CPU or I/O work of
an operation runs on the event loop. docs/async.md says why threads serve every backend
and what it costs.

Cancellation, exactly (also in docs/async.md): a worker thread cannot be interrupted,
so a call that has started runs to its end whatever happens to the task awaiting it.

* A twin made with ``persists=True`` (every call that can write) is shielded, and its
  cancellation deferred: the blocking call runs to its end even when the awaiting task
  is cancelled before a worker took it, and the task's CancelledError (or a timeout's
  TimeoutError) is raised once it has ended. The caller may then assume the call is
  over: done as the blocking call does it (a savepoint whole, the entity updated), or
  failed, its error logged on the ``statestore`` logger, nothing of it stored.
* Any other twin (the reads) is cancelled at once: dropped when no worker has taken it
  yet, else left to end in its worker, its result discarded.

Nothing binds to an event loop: the pool belongs to the storage, any loop in any thread
may await its twins while other threads call the blocking methods.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import logging
import os
import threading
from collections.abc import Callable, Coroutine
from typing import Any, Concatenate, ParamSpec, Protocol, TypeVar

from .errors import BackendError, StateStoreError

__all__ = ["DEFAULT_WORKERS", "HasWorkers", "Workers", "settled", "twin"]

P = ParamSpec("P")
R = TypeVar("R")
H = TypeVar("H", bound="HasWorkers")

#: Worker threads of one storage object; enough to overlap a save with reads and other
#: runs' saves, few enough that a burst of tasks does not open a connection each.
DEFAULT_WORKERS = 4

_log = logging.getLogger("statestore")
_in_worker = threading.local()


def _mark_worker(workers: Workers) -> None:
    _in_worker.workers = workers


class Workers:
    """A bounded thread pool, started on the first call and ended by :meth:`shutdown`.

    ``name`` names its threads (``statestore-NAME_0`` ...) and the store in errors.
    """

    def __init__(self, name: str, size: int = DEFAULT_WORKERS) -> None:
        self.name = name
        self.size = size
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._pid = os.getpid()
        self._closed = False
        self._lock = threading.Lock()

    def submit(self, call: Callable[[], R]) -> concurrent.futures.Future[R]:
        """Queue ``call`` for a worker; BackendError once the pool is shut down."""
        with self._lock:
            if self._closed:
                raise BackendError(f"{self.name} is closed; open the store again to use it")
            if self._pool is None or self._pid != os.getpid():
                # (A forked child has none of the parent's threads: it starts its own.)
                self._pid = os.getpid()
                self._pool = concurrent.futures.ThreadPoolExecutor(
                    self.size, f"statestore-{self.name}", _mark_worker, (self,)
                )
            return self._pool.submit(call)

    def shutdown(self) -> None:
        """Refuse new calls and wait for those queued or running (the storage's close
        calls this before releasing its connections, so no call loses them midway)."""
        with self._lock:
            self._closed = True
            pool, self._pool = self._pool, None
        if pool is not None:
            # A worker cannot wait for itself; the other calls then finish on their own.
            pool.shutdown(wait=getattr(_in_worker, "workers", None) is not self)

    async def run(self, call: Callable[[], R], *, persists: bool) -> R:
        """Run ``call`` on a worker and wait for it without blocking the event loop.

        The call sees the caller's context variables (as ``asyncio.to_thread`` does), so
        a tracing span or a logging context of the awaiting task reaches the worker.
        """
        context = contextvars.copy_context()
        return await settled(self.submit(lambda: context.run(call)), persists=persists)

    async def close_with(self, close: Callable[[], None]) -> None:
        """Run ``close`` (the storage's, which shuts this pool down and so waits for its
        threads) on a thread of its own, awaited as a write is."""
        future: concurrent.futures.Future[None] = concurrent.futures.Future()

        def closing() -> None:
            try:
                close()
            except BaseException as exc:  # handed to the awaiting task
                future.set_exception(exc)
            else:
                future.set_result(None)

        threading.Thread(target=closing, name=f"statestore-{self.name}-close").start()
        await settled(future, persists=True)


async def settled(future: concurrent.futures.Future[R], *, persists: bool) -> R:
    """Await ``future`` (a blocking call on a thread) from the event loop.

    Cancelled, a call that ``persists`` raises CancelledError once it has ended; any
    other is dropped if no worker has taken it yet (see the module docstring).
    """
    waiter = asyncio.wrap_future(future)  # cancelling it cancels a queued call
    if not persists:
        return await waiter
    cancelled: asyncio.CancelledError | None = None
    while not waiter.done():
        try:
            await asyncio.wait((waiter,))  # a cancel here leaves the waiter alone
        except asyncio.CancelledError as exc:
            cancelled = exc
    if cancelled is None:
        return waiter.result()
    error = waiter.exception()
    if error is not None:  # nobody will see it otherwise
        _log.warning("a cancelled call failed: %s: %s", type(error).__name__, error)
    raise cancelled


class HasWorkers(Protocol):
    """What a twin runs on: the workers of the object's storage (None: run on the loop,
    for an object that does no I/O, such as an entity that belongs to no store)."""

    @property
    def _workers(self) -> Workers | None: ...


def twin(
    blocking: Callable[Concatenate[H, P], R], *, persists: bool, name: str | None = None
) -> Callable[Concatenate[H, P], Coroutine[Any, Any, R]]:
    """The coroutine twin of the method ``blocking``: ``asave = twin(save, persists=True)``.

    The twin calls ``getattr(self, name)`` (``name`` defaults to ``blocking``'s), so a
    subclass's override is the one that runs, and a method another module adds later
    gets its twin as soon as it exists; ``blocking`` gives the twin its signature (what
    type checkers see). ``persists`` says whether the call can write (see the module
    docstring).
    """
    method = name or blocking.__name__

    async def call(self: H, /, *args: P.args, **kwargs: P.kwargs) -> R:
        bound: Callable[P, R] | None = getattr(self, method, None)
        if bound is None:
            raise StateStoreError(
                f"{type(self).__name__}.{method} does not exist in this version of "
                f"statestore, so neither does its twin a{method}"
            )
        workers = self._workers
        if workers is None:
            return bound(*args, **kwargs)
        return await workers.run(lambda: bound(*args, **kwargs), persists=persists)

    call.__name__ = call.__qualname__ = f"a{method}"
    call.__doc__ = f"Awaitable :meth:`{method}`, run in the storage's worker threads."
    return call
