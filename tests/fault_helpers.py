"""Shared helpers of the fault and fencing tests, and the child processes they drive.

A test picks a backend with :func:`backend_params` and :func:`store_url`, and drives
child processes through :class:`Child`. The children::

    python tests/fault_helpers.py engine URL RUN_ID WRITER
    python tests/fault_helpers.py saver URL RUN_ID FIRST_TS

``engine`` runs a :class:`statestore.StateStore` on the run and obeys one command per
line on stdin, answering one line each (see :func:`engine_driver`). ``saver`` saves
savepoints of :func:`statestore.testing.worker.payload` until it is killed, retrying
through :class:`~statestore.errors.BackendError`, printing ``ACK <ts>`` once a save
returned (see :func:`saver`).
"""

from __future__ import annotations

import contextlib
import os
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from statestore import BackendError, Savepoint, StaleWriterError, StateStoreError, open_storage
from statestore.testing.faults import (  # the kit's engine-driven runs, shared
    ENTITIES,
    SCHEDULE,
    engine_state,
    mount,
    unmount,
)

if TYPE_CHECKING:
    import pytest

HERE = Path(__file__).resolve()

#: Every backend whose store processes can share.
BACKENDS = ("sqlite", "file", "postgresql")
#: How long a test waits for a child's answer before it fails.
ANSWER_TIMEOUT = 60.0


# -------------------------------------------------------------------- backends


def backend_params(*names: str) -> list[Any]:
    """``pytest.param`` per backend, PostgreSQL marked ``postgres`` (``-m 'not postgres'``)."""
    import pytest

    chosen = names or BACKENDS
    return [
        pytest.param(name, marks=pytest.mark.postgres) if name == "postgresql" else name
        for name in chosen
    ]


def store_url(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The URL of a fresh, empty store of ``backend`` for this test."""
    if backend == "sqlite":
        return f"sqlite:///{tmp_path}/store.db"
    if backend == "file":
        return f"file://{tmp_path}/store"
    if backend == "postgresql":
        url: str = request.getfixturevalue("postgres_store_url")
        return url
    raise ValueError(f"unknown backend {backend!r}")


def snapshot(url: str, run_id: str) -> list[Savepoint]:
    """Every savepoint of the run, read back through a storage of its own."""
    with open_storage(url) as storage:
        rows = storage.list_savepoints(run_id)
        return [storage.get_savepoint(run_id, row.timestamp) for row in rows]


# -------------------------------------------------------------------- mounts


@contextlib.contextmanager
def read_only_view(source: Path, target: Path) -> Iterator[bool]:
    """``source`` bind-mounted read-only on ``target`` (EROFS for every write through it).

    Yields False when this machine refuses bind mounts (then nothing is mounted).
    """
    target.mkdir(parents=True, exist_ok=True)
    mounted = mount("--bind", str(source), str(target))
    if mounted and not mount("-o", "remount,ro,bind", str(target)):
        unmount(target)
        mounted = False
    try:
        yield mounted
    finally:
        if mounted:
            unmount(target)


# -------------------------------------------------------------------- child processes


def child_env() -> dict[str, str]:
    """The environment of a child: this one, without bytecode writes into the tree."""
    return {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}


class Child:
    """A child process of this module, answering one line per command on its stdin."""

    def __init__(self, *args: str) -> None:
        self.args = args
        self.process = subprocess.Popen(
            [sys.executable, str(HERE), *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=child_env(),
        )
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self._lines.put(line.rstrip("\n"))
        self._lines.put(None)  # end of output: the child exited

    def line(self, timeout: float = ANSWER_TIMEOUT) -> str:
        """The child's next line of output."""
        try:
            line = self._lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"{self.args}: no answer within {timeout} s") from None
        if line is None:
            self._lines.put(None)
            raise AssertionError(f"{self.args}: the child exited:\n{self.stderr()}")
        return line

    def rest(self) -> list[str]:
        """Every line not read yet, up to the end of the output (waits for the exit)."""
        self.process.wait(timeout=ANSWER_TIMEOUT)
        lines: list[str] = []
        while (line := self._lines.get(timeout=ANSWER_TIMEOUT)) is not None:
            lines.append(line)
        self._lines.put(None)
        return lines

    def ready(self) -> Child:
        """Wait for the child's ``READY`` line; returns the child."""
        first = self.line()
        assert first == "READY", f"{self.args}: {first}"
        return self

    def send(self, command: str) -> None:
        """Send one command line."""
        assert self.process.stdin is not None
        self.process.stdin.write(command + "\n")
        self.process.stdin.flush()

    def ask(self, command: str) -> str:
        """Send one command and return the child's one-line answer."""
        self.send(command)
        return self.line()

    def stderr(self) -> str:
        """What the child wrote to stderr (waits for it to exit)."""
        self.process.wait(timeout=ANSWER_TIMEOUT)
        assert self.process.stderr is not None
        return self.process.stderr.read()

    def kill(self) -> None:
        """SIGKILL the child and wait for it."""
        self.process.kill()
        self.process.wait(timeout=ANSWER_TIMEOUT)

    def close(self) -> None:
        """Ask the child to quit (closing its stdin), kill it if it does not."""
        if self.process.poll() is None:
            with contextlib.suppress(BrokenPipeError, OSError):
                assert self.process.stdin is not None
                self.process.stdin.close()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()
        for stream in (self.process.stdout, self.process.stderr):
            if stream is not None:
                stream.close()

    def __enter__(self) -> Child:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def engine_driver(url: str, run_id: str, writer: str) -> None:
    """Drive a StateStore on ``run_id`` by commands on stdin, one answer line each.

    ``start TS`` (``StateStore.start``) answers ``OK initialized TS`` or ``OK resumed
    TS``; ``init TS`` and ``load`` call ``init_run_state`` / ``load_run_state``;
    ``ack TS`` gives every entity its state at ``TS`` (:func:`engine_state`) and
    acknowledges ``TS``, in entity order, answering ``OK`` or ``ERR ENTITY ERROR: ...``
    for the first call that raised; ``plain TS`` saves a savepoint at ``TS`` through
    the module functions (``save_run_state``, no writer token). Errors of statestore
    are answered as ``ERR ...``; anything else ends the child with a traceback.
    """
    from statestore import StateStore
    from statestore import storage as functions

    storage = open_storage(url)
    store = StateStore(run_id, SCHEDULE, storage=storage, keep_savepoints=3)
    entities: dict[str, Any] = {}
    print("READY", flush=True)
    for line in sys.stdin:
        command, *args = line.split()
        try:
            if command == "start":
                ts = int(args[0])
                defs = [(e, engine_state(writer, e, ts)) for e in ENTITIES]
                result = store.start(ts, defs)
                entities = {entity.id: entity for entity in result.entities}
                how = "resumed" if result.resumed else "initialized"
                answer = f"OK {how} {result.timestamp}"
            elif command == "init":
                ts = int(args[0])
                defs = [(e, engine_state(writer, e, ts)) for e in ENTITIES]
                entities = {entity.id: entity for entity in store.init_run_state(ts, defs)}
                answer = f"OK initialized {ts}"
            elif command == "load":
                ts, loaded = store.load_run_state()
                entities = {entity.id: entity for entity in loaded}
                answer = f"OK resumed {ts}"
            elif command == "ack":
                answer = _ack(writer, entities, int(args[0]))
            elif command == "plain":
                ts = int(args[0])
                functions.init_config(url)
                functions.save_run_state(
                    run_id, ts, [(e, engine_state(f"{writer}-plain", e, ts)) for e in ENTITIES]
                )
                answer = "OK"
            else:
                answer = f"ERR unknown command {command!r}"
        except StateStoreError as exc:
            answer = f"ERR {type(exc).__name__}: {exc}"
        print(answer.replace("\n", " "), flush=True)
    storage.close()


def _ack(writer: str, entities: dict[str, Any], ts: int) -> str:
    for entity_id in ENTITIES:
        try:
            entity = entities[entity_id]
            # The input comes at the entity's own time, before its next savepoint (the
            # engine refuses one past it until it is acknowledged), even after a jump.
            entity.update_state(entity.timestamp, engine_state(writer, entity_id, ts))
            entity.ack_processed_time(ts)
        except StateStoreError as exc:
            return f"ERR {entity_id} {type(exc).__name__}: {exc}"
    return "OK"


def saver(url: str, run_id: str, first: int) -> None:
    """Save savepoints ``first``, ``first + 1000``, ... until killed; print ``ACK ts``.

    Each save is retried (same timestamp: a retried save replaces) until it returns,
    sleeping a little after each :class:`BackendError` (printed as ``ERR ...``), so the
    store may go away and come back. Holds the run's writer token.
    """
    storage = open_storage(url)
    storage.init_storage(run_id)
    token = storage.acquire_writer(run_id)
    from statestore.testing.worker import payload

    print("READY", flush=True)
    timestamp = first
    while True:
        try:
            storage.save_savepoint(run_id, timestamp, payload(timestamp), writer_token=token)
        except StaleWriterError:
            raise
        except BackendError as exc:
            print(f"ERR {exc}".replace("\n", " "), flush=True)
            time.sleep(0.05)
            continue
        print(f"ACK {timestamp}", flush=True)
        timestamp += 1_000


def main(argv: list[str]) -> None:
    """Run the child process ``argv`` names (see the module docstring)."""
    command, *args = argv
    if command == "engine":
        engine_driver(args[0], args[1], args[2])
    elif command == "saver":
        saver(args[0], args[1], int(args[2]))
    else:
        raise SystemExit(f"unknown child command {command!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
