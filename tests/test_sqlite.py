"""The SQLite backend: the whole conformance suite, then what only SQLite has."""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import apsw
import pytest
from fault_helpers import read_only_view

from statestore.errors import BackendError, ConfigError, CorruptSavepointError, StaleWriterError
from statestore.storage import Storage, WriterToken, epoch_ms, open_storage
from statestore.storage._sqlite import APPLICATION_ID, SCHEMA_VERSION, SQLiteStorage
from statestore.testing import FullDiskTests, StorageConformance
from statestore.testing.hooks import MANIFEST, PACK_PREFIX
from statestore.testing.worker import payload, wholeness_problem


def _raw(path: str | Path) -> apsw.Connection:
    """A plain connection: the back door past every check of the library.

    apsw, the library the store runs on: a second SQLite library in one process (Python's
    sqlite3) does not see the store's locks, and closing it deletes the WAL under the
    store's connections (https://sqlite.org/howtocorrupt.html, "multiple copies of SQLite").
    """
    return apsw.Connection(str(path))


def _one(conn: apsw.Connection, query: str, params: tuple[Any, ...] = ()) -> Any:
    """The value of a query that returns one row of one column."""
    row = conn.execute(query, params).fetchone()
    assert row is not None, query
    (value,) = row
    return value


class TestSQLite(FullDiskTests, StorageConformance):
    file_too_large_reason = "I/O error"  # SQLite reports EFBIG as a disk I/O error

    @pytest.fixture
    def url(self, tmp_path: Path) -> str:
        return f"sqlite:///{tmp_path}/store.db"

    def url_in(self, directory: Path) -> str:
        return f"sqlite:///{directory}/store.db"

    def check_integrity(self, url: str) -> None:
        with contextlib.closing(_raw(Path(url.removeprefix("sqlite:///")))) as conn:
            assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]

    # The back doors: the savepoint's manifest column and its packs' rows, through a
    # connection of their own.

    def raw_parts(self, storage: Storage, run_id: str, timestamp: int) -> list[str]:
        assert isinstance(storage, SQLiteStorage)
        with contextlib.closing(_raw(storage.path)) as conn:
            names = conn.execute(
                "SELECT f.name FROM savepoint_refs f JOIN runs r ON r.id = f.run "
                "WHERE r.run_id = ? AND f.ts = ? ORDER BY f.name",
                (run_id, timestamp),
            ).fetchall()
        return [MANIFEST, *(f"{PACK_PREFIX}{name}" for (name,) in names)]

    def raw_read(self, storage: Storage, run_id: str, timestamp: int, part: str) -> bytes:
        assert isinstance(storage, SQLiteStorage)
        with contextlib.closing(_raw(storage.path)) as conn:
            run = _one(conn, "SELECT id FROM runs WHERE run_id = ?", (run_id,))
            if part == MANIFEST:
                query = "SELECT manifest FROM savepoints WHERE run = ? AND ts = ?"
                return bytes(_one(conn, query, (run, timestamp)))
            query = "SELECT data FROM blobs WHERE run = ? AND name = ?"
            return bytes(_one(conn, query, (run, part.removeprefix(PACK_PREFIX))))

    def raw_write(
        self, storage: Storage, run_id: str, timestamp: int, part: str, data: bytes
    ) -> None:
        assert isinstance(storage, SQLiteStorage)
        with contextlib.closing(_raw(storage.path)) as conn:
            run = _one(conn, "SELECT id FROM runs WHERE run_id = ?", (run_id,))
            if part == MANIFEST:
                conn.execute(
                    "UPDATE savepoints SET manifest = ? WHERE run = ? AND ts = ?",
                    (data, run, timestamp),
                )
            else:
                conn.execute(
                    "UPDATE blobs SET data = ? WHERE run = ? AND name = ?",
                    (data, run, part.removeprefix(PACK_PREFIX)),
                )
            assert conn.changes() == 1, f"no stored {part} of savepoint {timestamp}"


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "store.db"


@pytest.fixture
def storage(db_path: Path) -> Iterator[SQLiteStorage]:
    with SQLiteStorage(db_path) as storage:
        yield storage


def _tables(path: str | Path) -> set[str]:
    with contextlib.closing(_raw(path)) as conn:
        return {name for (name,) in conn.execute("SELECT name FROM sqlite_master")}


# ==================================================================== settings and schema


def test_pragmas_are_set(db_path: Path) -> None:
    with SQLiteStorage(db_path, timeout=7) as storage:
        storage.init_storage("run")
        conn = storage._connection()
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        assert conn.execute("PRAGMA synchronous").fetchone() == (2,)  # FULL
        assert conn.execute("PRAGMA foreign_keys").fetchone() == (1,)
        assert conn.execute("PRAGMA busy_timeout").fetchone() == (7000,)
    with contextlib.closing(_raw(db_path)) as raw:  # WAL is a property of the file
        assert raw.execute("PRAGMA journal_mode").fetchone() == ("wal",)


def test_every_thread_gets_a_configured_connection(storage: SQLiteStorage) -> None:
    found: list[object] = []

    def probe() -> None:
        conn = storage._connection()
        found.append(conn.execute("PRAGMA synchronous").fetchone())
        found.append(conn.execute("PRAGMA foreign_keys").fetchone())

    thread = threading.Thread(target=probe)
    thread.start()
    thread.join()
    assert found == [(2,), (1,)]


def test_migrations_are_recorded(db_path: Path) -> None:
    with SQLiteStorage(db_path) as storage:
        storage.init_storage("run")
        storage.save_savepoint("run", 1, [("a", 1)])
    with contextlib.closing(_raw(db_path)) as conn:
        assert conn.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)
        assert conn.execute("PRAGMA application_id").fetchone() == (APPLICATION_ID,)
    assert {"runs", "blobs", "savepoints", "savepoint_refs", "counters"} <= _tables(db_path)
    with SQLiteStorage(db_path) as again:  # reopening migrates nothing and keeps the data
        assert again.get_latest_savepoint("run") == (1, [("a", 1)])


def test_newer_schema_is_refused(db_path: Path) -> None:
    SQLiteStorage(db_path).close()
    with contextlib.closing(_raw(db_path)) as conn:
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(ConfigError, match=r"newer.*upgrade statestore") as raised:
        SQLiteStorage(db_path)
    assert str(db_path) in str(raised.value)
    with contextlib.closing(_raw(db_path)) as conn:
        assert conn.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION + 1,)


FORMAT_1_STORE = Path(__file__).parent / "fixtures" / "format_v1" / "store.db"


def _older_statestore_takes_a_token(path: Path, token: int) -> None:
    """What an older statestore (schema 1) does to take a token: runs.writer_token alone."""
    with contextlib.closing(_raw(path)) as conn:
        conn.execute("UPDATE runs SET writer_token = ? WHERE run_id = 'run-1'", (token,))
        conn.execute("UPDATE counters SET value = ? WHERE name = 'writer_token'", (token,))


def test_a_schema_1_store_is_upgraded_and_its_old_tokens_have_no_time(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    shutil.copy(FORMAT_1_STORE, path)
    _older_statestore_takes_a_token(path, 4)
    with SQLiteStorage(path) as storage:
        assert _scalar_of(path, "PRAGMA user_version") == SCHEMA_VERSION == 2
        assert storage.current_writer("run-1") == WriterToken(4, None)  # taken before times
        assert storage.current_writer("empty-run") is None
        before = epoch_ms()
        assert storage.acquire_writer("run-1") == 5
        taken = storage.current_writer("run-1")
        assert taken is not None
        assert taken.token == 5
        assert taken.taken_at is not None
        assert before <= taken.taken_at <= epoch_ms()
        # A process of the older statestore, still running, takes the token: its token
        # reads as untimed, never with the time of the token it replaced.
        _older_statestore_takes_a_token(path, 9)
        assert storage.current_writer("run-1") == WriterToken(9, None)
        assert storage.get_latest_savepoint("run-1").timestamp == 180_000


def test_a_read_only_schema_1_store_is_served_without_upgrading(tmp_path: Path) -> None:
    source, view = tmp_path / "store", tmp_path / "view"
    source.mkdir()
    shutil.copy(FORMAT_1_STORE, source / "store.db")
    _older_statestore_takes_a_token(source / "store.db", 3)
    with read_only_view(source, view) as mounted:
        if not mounted:
            pytest.skip("bind mounts are not allowed here (needs root with CAP_SYS_ADMIN)")
        with SQLiteStorage(view / "store.db") as storage:
            assert storage.capabilities.read_only
            assert storage.current_writer("run-1") == WriterToken(3, None)
            assert storage.get_latest_savepoint("run-1").timestamp == 180_000
    assert _scalar_of(source / "store.db", "PRAGMA user_version") == 1


def _scalar_of(path: Path, query: str) -> object:
    with contextlib.closing(_raw(path)) as conn:
        row = conn.execute(query).fetchone()
    assert row is not None
    return row[0]


def test_non_sqlite_file_is_refused_untouched(db_path: Path) -> None:
    garbage = b"these are not the pages of a SQLite database\n" * 200
    db_path.write_bytes(garbage)
    with pytest.raises(ConfigError, match="not a SQLite database"):
        open_storage(f"sqlite:///{db_path}")
    assert db_path.read_bytes() == garbage


def test_database_of_another_application_is_refused_untouched(tmp_path: Path) -> None:
    theirs = tmp_path / "app.db"
    with contextlib.closing(_raw(theirs)) as conn:
        conn.execute("CREATE TABLE users (name TEXT)")
    with pytest.raises(ConfigError, match="another application"):
        SQLiteStorage(theirs)
    assert _tables(theirs) == {"users"}

    marked = tmp_path / "marked.db"
    with contextlib.closing(_raw(marked)) as conn:
        conn.execute("PRAGMA application_id = 12345")
    with pytest.raises(ConfigError, match="another application"):
        SQLiteStorage(marked)


def test_directory_in_place_of_the_file_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "store.db").mkdir()
    with pytest.raises(BackendError, match="cannot open"):
        SQLiteStorage(tmp_path / "store.db")


# ==================================================================== URLs


def test_relative_url_is_resolved_once_against_the_cwd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    storage = open_storage("sqlite:///sub/dir/store.db")  # the missing directories are made
    assert isinstance(storage, SQLiteStorage)
    with storage:
        assert storage.path == str(tmp_path / "sub" / "dir" / "store.db")
        storage.init_storage("run")
        elsewhere = tmp_path / "elsewhere"
        elsewhere.mkdir()
        monkeypatch.chdir(elsewhere)
        # A thread connecting after the chdir still opens the same file.
        thread = threading.Thread(target=storage.save_savepoint, args=("run", 1, [("a", 1)]))
        thread.start()
        thread.join()
        assert storage.get_latest_savepoint("run") == (1, [("a", 1)])
    assert not (elsewhere / "sub").exists()


def test_absolute_url_and_percent_escapes(tmp_path: Path) -> None:
    with open_storage(f"sqlite:///{tmp_path}/with%20space.db") as storage:
        assert isinstance(storage, SQLiteStorage)
        assert str(tmp_path).startswith("/")  # so the URL above had four slashes
        assert storage.path == str(tmp_path / "with space.db")
        storage.init_storage("run")
    assert (tmp_path / "with space.db").is_file()


def test_timeout_option(tmp_path: Path) -> None:
    with open_storage(f"sqlite:///{tmp_path}/a.db?timeout=2.5") as storage:
        assert isinstance(storage, SQLiteStorage)
        assert storage.timeout == 2.5
        assert storage._connection().execute("PRAGMA busy_timeout").fetchone() == (2500,)
    with open_storage(f"sqlite:///{tmp_path}/a.db", timeout=1) as storage:
        assert isinstance(storage, SQLiteStorage)
        assert storage.timeout == 1.0


@pytest.mark.parametrize(
    "tail",
    [
        "?nope=1",
        "?timeout=abc",
        "?timeout=-1",
        "?timeout=inf",
        "?timeout=nan",
        "?timeout=1&timeout=2",
        "?timeout",
        "#fragment",
    ],
)
def test_bad_url_options_are_refused(tmp_path: Path, tail: str) -> None:
    with pytest.raises(ConfigError):
        open_storage(f"sqlite:///{tmp_path}/sub/a.db{tail}")
    assert not (tmp_path / "sub").exists()


@pytest.mark.parametrize(
    "url", ["sqlite://", "sqlite:///", "sqlite://host/a.db", "sqlite:///:memory:"]
)
def test_malformed_urls_are_refused(url: str) -> None:
    with pytest.raises(ConfigError):
        open_storage(url)


def test_bad_keyword_options_are_refused(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/a.db"
    with pytest.raises(ConfigError, match="unknown option 'journal'"):
        open_storage(url, journal="off")
    with pytest.raises(ConfigError, match="given twice"):
        open_storage(f"{url}?timeout=1", timeout=2)
    for bad in [True, -0.5, "5", None]:
        with pytest.raises(ConfigError, match="timeout"):
            SQLiteStorage(tmp_path / "a.db", timeout=bad)  # type: ignore[arg-type]
    assert not (tmp_path / "a.db").exists()


@pytest.mark.parametrize("timeout", ["2147483.648", "1e12"])
def test_a_timeout_beyond_sqlites_limit_is_refused(tmp_path: Path, timeout: str) -> None:
    # SQLite takes the busy timeout as a C int of milliseconds: 2**31 ms does not fit.
    with pytest.raises(ConfigError, match=rf"timeout .* 0 to 2147483\.647 .*not {float(timeout)}"):
        SQLiteStorage(tmp_path / "a.db", timeout=float(timeout))
    with pytest.raises(ConfigError, match=r"timeout .* 0 to 2147483\.647"):
        open_storage(f"sqlite:///{tmp_path}/a.db?timeout={timeout}")
    assert not (tmp_path / "a.db").exists()


def test_the_largest_timeout_is_sqlites_largest(tmp_path: Path) -> None:
    with SQLiteStorage(tmp_path / "a.db", timeout=(2**31 - 1) / 1000) as storage:
        assert storage._connection().execute("PRAGMA busy_timeout").fetchone() == (2**31 - 1,)


# ==================================================================== durability


def test_savepoints_survive_close_and_reopen(db_path: Path) -> None:
    with SQLiteStorage(db_path) as storage:
        storage.init_storage("run")
        for ts in (1, 2, 3):
            storage.save_savepoint("run", ts, payload(ts))
    assert not Path(f"{db_path}-wal").exists()  # every connection closed, WAL checkpointed
    with contextlib.closing(_raw(db_path)) as conn:
        assert conn.execute("SELECT count(*) FROM savepoints").fetchone() == (3,)
    with SQLiteStorage(db_path) as storage:
        assert [row.timestamp for row in storage.list_savepoints("run")] == [1, 2, 3]
        for ts in (1, 2, 3):
            assert wholeness_problem(storage.get_savepoint("run", ts)) is None


_SAVE_FOREVER = """
import sys
from statestore.storage._sqlite import SQLiteStorage
from statestore.testing.worker import payload
storage = SQLiteStorage(sys.argv[1])
storage.init_storage("run")
ts = 0
while True:
    ts += 1
    storage.save_savepoint("run", ts, payload(ts))
    print(f"ACK {ts}", flush=True)
    storage.delete_old_savepoints("run", 5)
"""


@pytest.mark.slow
def test_a_killed_writer_loses_nothing_it_acknowledged(db_path: Path) -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", _SAVE_FOREVER, str(db_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None
    acked = 0
    try:
        while acked < 25:
            line = child.stdout.readline()
            assert line.startswith("ACK "), f"child said {line!r}: {child.stderr!r}"
            acked = int(line.split()[1])
    finally:
        child.send_signal(signal.SIGKILL)  # mid-save, mid-prune or between: no warning
        child.communicate(timeout=60)
    with SQLiteStorage(db_path) as storage:
        rows = storage.list_savepoints("run")
        assert rows[-1].timestamp >= acked
        assert acked in [row.timestamp for row in rows]
        for row in rows:  # whatever was in flight is absent or whole, never a mix
            assert wholeness_problem(storage.get_savepoint("run", row.timestamp)) is None


# ==================================================================== failures


@contextlib.contextmanager
def _read_only(path: Path) -> Iterator[None]:
    """Make a file read-only even for root (whom permission bits do not stop)."""
    if os.geteuid() != 0:
        path.chmod(0o444)
        try:
            yield
        finally:
            path.chmod(0o644)
        return
    made_immutable = subprocess.run(["chattr", "+i", str(path)], check=False, capture_output=True)
    if made_immutable.returncode != 0:
        pytest.skip("running as root and chattr +i is not available here")
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", str(path)], check=True)


def test_read_only_file_reads_but_refuses_writes(db_path: Path) -> None:
    with SQLiteStorage(db_path) as storage:
        storage.init_storage("run")
        storage.save_savepoint("run", 1, [("a", 1)])
        storage.save_savepoint("run", 2, [("a", 2)])
    with _read_only(db_path), SQLiteStorage(db_path) as storage:
        assert storage.list_runs() == ["run"]
        assert storage.get_latest_savepoint("run") == (2, [("a", 2)])
        writes: dict[str, Callable[[], object]] = {
            "init_storage": lambda: storage.init_storage("new"),
            "save_savepoint": lambda: storage.save_savepoint("run", 3, [("a", 3)]),
            "delete_old_savepoints": lambda: storage.delete_old_savepoints("run", 0),
            "delete_run": lambda: storage.delete_run("run"),
            "acquire_writer": lambda: storage.acquire_writer("run"),
        }
        for label, write in writes.items():
            with pytest.raises(BackendError, match="read-only") as raised:
                write()
            assert "run" in str(raised.value) or label == "init_storage"
        assert storage.get_latest_savepoint("run") == (2, [("a", 2)])
        assert [row.timestamp for row in storage.list_savepoints("run")] == [1, 2]


def test_lock_held_past_the_timeout_is_a_backend_error(db_path: Path) -> None:
    with SQLiteStorage(db_path, timeout=0.05) as storage:
        storage.init_storage("run")
        storage.save_savepoint("run", 1, [("a", 1)])
        with contextlib.closing(_raw(db_path)) as other:
            other.execute("BEGIN IMMEDIATE")  # another process holds the write lock
            with pytest.raises(BackendError, match=r"locked.*0\.05 s") as raised:
                storage.save_savepoint("run", 2, [("a", 2)])
            assert "'run'" in str(raised.value)
            assert raised.value.__cause__ is None  # no apsw traceback attached
            with pytest.raises(BackendError, match="locked"):
                storage.init_storage("other")
            assert storage.get_latest_savepoint("run") == (1, [("a", 1)])  # WAL: reads go on
            other.execute("ROLLBACK")
        storage.save_savepoint("run", 2, [("a", 2)])
        assert storage.get_latest_savepoint("run") == (2, [("a", 2)])


def test_use_after_close_is_a_backend_error(db_path: Path) -> None:
    storage = SQLiteStorage(db_path)
    storage.close()
    with pytest.raises(BackendError, match="closed"):
        storage.list_runs()


def test_close_closes_every_threads_connection(storage: SQLiteStorage, db_path: Path) -> None:
    storage.init_storage("run")
    storage.save_savepoint("run", 1, [("a", 1)])
    opened = threading.Barrier(4)
    release = threading.Event()

    def hold_a_connection() -> None:
        storage.get_latest_savepoint("run")
        opened.wait()
        release.wait()

    threads = [threading.Thread(target=hold_a_connection) for _ in range(3)]
    for thread in threads:
        thread.start()
    opened.wait()
    assert Path(f"{db_path}-wal").exists()
    storage.close()
    # The last connection to close checkpoints and removes the WAL: none is left open.
    assert not Path(f"{db_path}-wal").exists()
    release.set()
    for thread in threads:
        thread.join()


# ==================================================================== storage details


def _blob_names(path: Path, run_id: str) -> tuple[set[str], set[str]]:
    """(stored blob names, names some savepoint refers to) of one run."""
    with contextlib.closing(_raw(path)) as conn:
        blobs = conn.execute(
            "SELECT b.name FROM blobs b JOIN runs r ON r.id = b.run WHERE r.run_id = ?",
            (run_id,),
        ).fetchall()
        refs = conn.execute(
            "SELECT s.name FROM savepoint_refs s JOIN runs r ON r.id = s.run WHERE r.run_id = ?",
            (run_id,),
        ).fetchall()
    return {str(name) for (name,) in blobs}, {str(name) for (name,) in refs}


def test_pruning_and_replacing_free_exactly_the_unreferenced_blobs(
    storage: SQLiteStorage, db_path: Path
) -> None:
    storage.init_storage("run")
    for ts in range(1, 8):
        changed = [(f"e{i}", {"i": i, "at": ts if i < ts else 0}) for i in range(10)]
        storage.save_savepoint("run", ts, changed)
    storage.save_savepoint("run", 7, [("other", 7)])  # replacing frees what only 7 used
    blobs, refs = _blob_names(db_path, "run")
    assert blobs == refs
    storage.delete_old_savepoints("run", 2)
    blobs, refs = _blob_names(db_path, "run")
    assert blobs == refs
    assert len(storage.list_savepoints("run")) == 2


def test_drop_run_leaves_no_row_and_spares_other_runs(
    storage: SQLiteStorage, db_path: Path
) -> None:
    for run_id in ["doomed", "kept"]:
        storage.init_storage(run_id)
        storage.save_savepoint(run_id, 1, payload(1))
        storage.save_savepoint(run_id, 2, payload(2))
    storage.delete_run("doomed")
    with contextlib.closing(_raw(db_path)) as conn:
        for table in ["blobs", "savepoints", "savepoint_refs"]:
            runs = conn.execute(f"SELECT DISTINCT run FROM {table}").fetchall()
            assert len(runs) == 1, table
        assert conn.execute("SELECT run_id FROM runs").fetchall() == [("kept",)]
    assert wholeness_problem(storage.get_latest_savepoint("kept")) is None


def test_writer_of_a_deleted_run_stays_fenced_after_recreation(storage: SQLiteStorage) -> None:
    storage.init_storage("run")
    old = storage.acquire_writer("run")
    storage.delete_run("run")
    storage.init_storage("run")
    with pytest.raises(StaleWriterError):
        storage.save_savepoint("run", 1, [("a", "from the former run")], writer_token=old)
    new = storage.acquire_writer("run")
    assert new > old
    storage.save_savepoint("run", 1, [("a", 1)], writer_token=new)


@pytest.mark.parametrize(("table", "column"), [("savepoints", "manifest"), ("blobs", "data")])
@pytest.mark.parametrize("wrong", ["text, not bytes", 42, 1.5])
def test_stored_values_of_the_wrong_type_read_as_corrupt(
    storage: SQLiteStorage, db_path: Path, table: str, column: str, wrong: object
) -> None:
    storage.init_storage("run")
    storage.save_savepoint("run", 1, [("a", 1)])
    with contextlib.closing(_raw(db_path)) as conn:  # SQLite columns take any type
        conn.execute(f"UPDATE {table} SET {column} = ?", (wrong,))
    with pytest.raises(CorruptSavepointError, match=r"'run'.*savepoint 1\b"):
        storage.get_latest_savepoint("run")


def test_compact_shrinks_the_file_after_deletes(storage: SQLiteStorage, db_path: Path) -> None:
    def on_disk() -> int:
        return sum(
            os.path.getsize(name) for name in (db_path, f"{db_path}-wal") if os.path.exists(name)
        )

    def noise(ts: int) -> bytes:  # 512 KiB a savepoint that zstd cannot shrink
        return random.Random(ts).randbytes(512 * 1024)

    storage.init_storage("run")
    for ts in range(1, 11):
        storage.save_savepoint("run", ts, [("noise", noise(ts))])
    storage.delete_old_savepoints("run", 1)
    before = on_disk()
    assert before > 5 * 512 * 1024  # deleting alone gives nothing back
    storage.compact()
    assert on_disk() < before / 3
    assert storage.get_latest_savepoint("run") == (10, [("noise", noise(10))])


# ==================================================================== processes


def test_two_processes_replacing_the_same_savepoints(db_path: Path, tmp_path: Path) -> None:
    url = f"sqlite:///{db_path}"
    SQLiteStorage(db_path).close()
    command = [sys.executable, "-m", "statestore.testing.worker", "save", url, "shared"]
    children = [
        subprocess.Popen([*command, "1", "1", "15", "0"], stdout=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    for child in children:
        stdout, _ = child.communicate(timeout=120)
        assert child.returncode == 0
        assert stdout.split() == [word for ts in range(1, 16) for word in ("ACK", str(ts))]
    with SQLiteStorage(db_path) as storage:
        rows = storage.list_savepoints("shared")
        assert [row.timestamp for row in rows] == list(range(1, 16))
        for row in rows:
            assert wholeness_problem(storage.get_savepoint("shared", row.timestamp)) is None
        blobs, refs = _blob_names(db_path, "shared")
        assert blobs == refs


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
def test_a_forked_child_uses_its_own_connection(storage: SQLiteStorage) -> None:
    storage.init_storage("run")
    storage.save_savepoint("run", 1, [("who", "parent")])  # the parent's connection is open
    context = multiprocessing.get_context("fork")
    child = context.Process(target=_save_in_child, args=(storage, None))
    child.start()
    child.join(timeout=60)
    assert child.exitcode == 0
    storage.save_savepoint("run", 3, [("who", "parent again")])  # still works after the fork
    assert storage.get_savepoint("run", 2) == (2, [("who", "child")])
    assert storage.get_latest_savepoint("run") == (3, [("who", "parent again")])


def _save_in_child(storage: SQLiteStorage, wait_for: Any) -> None:
    """Save from a forked child, then exit without closing (as a crash would)."""
    if wait_for is not None:
        wait_for.wait(timeout=60)
    storage.save_savepoint("run", 2, [("who", "child")])


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
def test_a_forked_childs_save_outlives_the_parents_close(db_path: Path) -> None:
    # SQLite's locks are not inherited: had the child used the parent's connection,
    # the parent's close (seeing no other connection) would delete the WAL under the
    # child's feet, and the child's acknowledged save would vanish with it.
    storage = SQLiteStorage(db_path)
    storage.init_storage("run")
    storage.save_savepoint("run", 1, [("who", "parent")])
    context = multiprocessing.get_context("fork")
    parent_closed = context.Event()
    child = context.Process(target=_save_in_child, args=(storage, parent_closed))
    child.start()
    storage.close()
    parent_closed.set()
    child.join(timeout=60)
    assert child.exitcode == 0
    with SQLiteStorage(db_path) as reopened:
        assert reopened.get_latest_savepoint("run") == (2, [("who", "child")])
