"""Shared helpers of the fault and fencing tests, and the child processes they drive.

A test picks a backend with :func:`backend_params` and :func:`store_url`, reaches the
stored bytes of a savepoint through :class:`BackDoor` (each backend's files or rows,
past the library), and drives child processes through :class:`Child`. The children::

    python tests/fault_helpers.py engine URL RUN_ID WRITER
    python tests/fault_helpers.py saver URL RUN_ID FIRST_TS

``engine`` runs a :class:`statestore.StateStore` on the run and obeys one command per
line on stdin, answering one line each (see :func:`engine_driver`). ``saver`` saves
savepoints of :func:`statestore.testing._worker.payload` until it is killed, retrying
through :class:`~statestore.errors.BackendError`, printing ``ACK <ts>`` once a save
returned (see :func:`saver`).
"""

from __future__ import annotations

import contextlib
import os
import queue
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from statestore import BackendError, Savepoint, StaleWriterError, StateStoreError, open_storage
from statestore.storage import _files

if TYPE_CHECKING:
    import pytest

HERE = Path(__file__).resolve()

#: The entities of every engine-driven run, in registration order.
ENTITIES = ("sensor-a", "sensor-b", "sensor-c")
#: The savepoint interval of every engine-driven run (milliseconds).
SCHEDULE = 1_000
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


def engine_state(writer: str, entity_id: str, timestamp: int) -> dict[str, Any]:
    """The state an engine driver gives an entity at ``timestamp``: it names its writer."""
    return {"writer": writer, "entity": entity_id, "ts": timestamp}


def engine_savepoint(writer: str, timestamp: int) -> Savepoint:
    """The savepoint a driver that acknowledged exactly ``timestamp`` persists there."""
    return Savepoint(timestamp, [(e, engine_state(writer, e, timestamp)) for e in ENTITIES])


def snapshot(url: str, run_id: str) -> list[Savepoint]:
    """Every savepoint of the run, read back through a storage of its own."""
    with open_storage(url) as storage:
        rows = storage.list_savepoints(run_id)
        return [storage.get_savepoint(run_id, row.timestamp) for row in rows]


# -------------------------------------------------------------------- the back door


class BackDoor:
    """The stored bytes of a savepoint, read and written past the library.

    ``fields(run_id, ts)`` names every stored byte string of the savepoint: the
    manifest (in the file backend: the whole savepoint file) and each pack it refers
    to. ``read`` and ``write`` take those names.
    """

    def __init__(self, url: str) -> None:
        self.url = url
        self.backend = url.split("://", 1)[0]
        self._conn: Any = None
        if self.backend == "sqlite":
            self._conn = sqlite3.connect(url.removeprefix("sqlite:///"), isolation_level=None)
        elif self.backend == "postgresql":
            import psycopg

            from statestore.storage._postgres._options import settings_from_url
            from statestore.storage._postgres._schema import Tables

            settings = settings_from_url(url, {})
            self._tables = Tables(settings.schema)
            self._conn = psycopg.connect(settings.conninfo, autocommit=True)

    def close(self) -> None:
        """Close the connection to the store, if any."""
        if self._conn is not None:
            self._conn.close()

    def __enter__(self) -> BackDoor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---------------------------------------------------------------- file backend

    def _run_dir(self, run_id: str) -> Path:
        return Path(self.url.removeprefix("file://")) / _files.run_dir_name(run_id)

    def _savepoint_file(self, run_id: str, ts: int) -> Path:
        return self._run_dir(run_id) / _files.SAVEPOINTS_DIR / _files.savepoint_file_name(ts)

    # ---------------------------------------------------------------- SQL

    def _pg(self, template: str, params: list[Any]) -> list[tuple[Any, ...]]:
        rows: list[tuple[Any, ...]] = self._conn.execute(
            self._tables.sql(template), params
        ).fetchall()
        return rows

    def fields(self, run_id: str, ts: int) -> list[str]:
        """The names of the savepoint's stored byte strings: manifest first, then packs."""
        if self.backend == "file":
            data = self._savepoint_file(run_id, ts).read_bytes()
            refs = _files.decode_savepoint_file(run_id, ts, data).refs
        elif self.backend == "sqlite":
            refs = tuple(
                name
                for (name,) in self._conn.execute(
                    "SELECT f.name FROM savepoint_refs f JOIN runs r ON r.id = f.run "
                    "WHERE r.run_id = ? AND f.ts = ? ORDER BY f.name",
                    (run_id, ts),
                )
            )
        else:
            ((found,),) = self._pg(
                "SELECT s.refs FROM {savepoints} s JOIN {runs} r USING (run_key) "
                "WHERE r.run_id = %s AND s.ts = %s",
                [run_id, ts],
            )
            refs = tuple(found)
        return ["manifest", *(f"pack:{name}" for name in refs)]

    def read(self, run_id: str, ts: int, field: str) -> bytes:
        """The stored bytes of ``field`` (see :meth:`fields`)."""
        pack = field.removeprefix("pack:") if field.startswith("pack:") else None
        if self.backend == "file":
            if pack is None:
                return self._savepoint_file(run_id, ts).read_bytes()
            return (self._run_dir(run_id) / _files.PACKS_DIR / pack).read_bytes()
        if self.backend == "sqlite":
            if pack is None:
                query = (
                    "SELECT s.manifest FROM savepoints s JOIN runs r ON r.id = s.run "
                    "WHERE r.run_id = ? AND s.ts = ?"
                )
                (data,) = self._conn.execute(query, (run_id, ts)).fetchone()
            else:
                query = (
                    "SELECT b.data FROM blobs b JOIN runs r ON r.id = b.run "
                    "WHERE r.run_id = ? AND b.name = ?"
                )
                (data,) = self._conn.execute(query, (run_id, pack)).fetchone()
            return bytes(data)
        if pack is None:
            ((data,),) = self._pg(
                "SELECT s.manifest FROM {savepoints} s JOIN {runs} r USING (run_key) "
                "WHERE r.run_id = %s AND s.ts = %s",
                [run_id, ts],
            )
            return bytes(data)
        rows = self._pg(
            "SELECT b.data FROM {blobs} b JOIN {runs} r USING (run_key) "
            "WHERE r.run_id = %s AND b.name = %s ORDER BY b.chunk",
            [run_id, pack],
        )
        return b"".join(bytes(data) for (data,) in rows)

    def write(self, run_id: str, ts: int, field: str, data: bytes) -> None:
        """Overwrite the stored bytes of ``field`` in place, as damage would."""
        pack = field.removeprefix("pack:") if field.startswith("pack:") else None
        if self.backend == "file":
            if pack is None:
                path = self._savepoint_file(run_id, ts)
            else:
                path = self._run_dir(run_id) / _files.PACKS_DIR / pack
            path.write_bytes(data)
        elif self.backend == "sqlite":
            if pack is None:
                self._conn.execute(
                    "UPDATE savepoints SET manifest = ? WHERE ts = ? AND run = "
                    "(SELECT id FROM runs WHERE run_id = ?)",
                    (data, ts, run_id),
                )
            else:
                self._conn.execute(
                    "UPDATE blobs SET data = ? WHERE name = ? AND run = "
                    "(SELECT id FROM runs WHERE run_id = ?)",
                    (data, pack, run_id),
                )
        elif pack is None:
            self._pg(
                "UPDATE {savepoints} SET manifest = %s WHERE ts = %s AND run_key = "
                "(SELECT run_key FROM {runs} WHERE run_id = %s) RETURNING ts",
                [data, ts, run_id],
            )
        else:  # one chunk holding the whole blob, as a small blob is stored anyway
            key = "(SELECT run_key FROM {runs} WHERE run_id = %s)"
            with self._conn.transaction():
                self._pg(
                    f"DELETE FROM {{blobs}} WHERE name = %s AND run_key = {key} RETURNING name",
                    [pack, run_id],
                )
                self._pg(
                    f"INSERT INTO {{blobs}} (run_key, name, chunk, data) "
                    f"SELECT {key}, %s, 0, %s RETURNING name",
                    [run_id, pack, data],
                )


def flip(data: bytes, position: int, mask: int = 0xFF) -> bytes:
    """``data`` with the byte at ``position`` XORed with ``mask``."""
    return data[:position] + bytes([data[position] ^ mask]) + data[position + 1 :]


# -------------------------------------------------------------------- mounts


def mount(*args: str) -> bool:
    """Run ``mount ARGS``; False when this machine does not allow it (not root, no caps)."""
    if os.geteuid() != 0:
        return False
    done = subprocess.run(["mount", *args], capture_output=True, text=True, check=False)
    return done.returncode == 0


def unmount(path: Path) -> None:
    """Unmount ``path``; lazily when something still holds it open."""
    done = subprocess.run(["umount", str(path)], capture_output=True, check=False)
    if done.returncode != 0:
        subprocess.run(["umount", "-l", str(path)], capture_output=True, check=False)


@contextlib.contextmanager
def tmpfs(path: Path, size: str) -> Iterator[bool]:
    """A tmpfs of ``size`` (``1m``, ``512k``) mounted on ``path``; yields False if refused."""
    path.mkdir(parents=True, exist_ok=True)
    mounted = mount("-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(path))
    try:
        yield mounted
    finally:
        if mounted:
            unmount(path)


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


def run_python(script: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run ``script`` (dedented) in a fresh interpreter with ``args`` as ``sys.argv[1:]``."""
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script), *args],
        capture_output=True,
        text=True,
        timeout=ANSWER_TIMEOUT,
        check=False,
        env=child_env(),
    )


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
            entities[entity_id].update_state(ts, engine_state(writer, entity_id, ts))
            entities[entity_id].ack_processed_time(ts)
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
    from statestore.testing._worker import payload

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
