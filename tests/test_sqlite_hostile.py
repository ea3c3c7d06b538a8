"""The SQLite store when its files are changed behind its back.

Two kinds of damage no checksum covers: the database file (or its write-ahead log)
deleted or replaced while a store has it open, and the savepoints table's metadata
columns (``ts``, ``entity_count``, ``size``) and a writer token's time edited to values
the library never writes.
Raw edits use apsw, the library the backend runs on: a second SQLite library in the
same process does not see the first one's locks (https://sqlite.org/howtocorrupt.html).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import threading
import timeit
from collections.abc import Iterator
from pathlib import Path

import apsw
import pytest
from cli_support import run_cli

from statestore.errors import BackendError
from statestore.storage._sqlite import SQLiteStorage
from statestore.testing.worker import payload, wholeness_problem

RUN = "run"


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "store" / "store.db"


@pytest.fixture
def storage(db_path: Path) -> Iterator[SQLiteStorage]:
    with SQLiteStorage(db_path) as storage:
        storage.init_storage(RUN)
        storage.save_savepoint(RUN, 1000, payload(1000))
        yield storage


@contextlib.contextmanager
def _raw(path: str | Path) -> Iterator[apsw.Connection]:
    """A plain connection to the file: the back door past every check of the library."""
    conn = apsw.Connection(str(path))
    try:
        yield conn
    finally:
        conn.close()


def _other_store(path: Path) -> None:
    """A whole, closed store of its own at ``path``: run 'other', savepoint 7."""
    with SQLiteStorage(path) as other:
        other.init_storage("other")
        other.save_savepoint("other", 7, [("theirs", 7)])


#: Run by another process: a new store at argv[1], one savepoint; prints its runs and timestamps.
_NEW_STORE = """
import sys
from statestore.storage._sqlite import SQLiteStorage
with SQLiteStorage(sys.argv[1]) as store:
    store.init_storage("new")
    store.save_savepoint("new", 5, [("mine", 5)])
    print(*store.list_runs(), *[row.timestamp for row in store.list_savepoints("new")])
"""


def _timestamps(path: Path, run_id: str) -> list[int]:
    """The savepoints a fresh store on ``path`` lists (the file as every later reader sees it)."""
    with SQLiteStorage(path) as storage:
        return [row.timestamp for row in storage.list_savepoints(run_id)]


# ==================================================================== the file underneath


def test_a_save_after_the_file_was_deleted_is_refused(
    storage: SQLiteStorage, db_path: Path
) -> None:
    db_path.unlink()  # the -wal and -shm stay: only the database file goes
    with pytest.raises(BackendError) as raised:
        storage.save_savepoint(RUN, 2000, payload(2000))
    message = str(raised.value)
    assert "'run'" in message
    assert "savepoint 2000" in message
    assert str(db_path) in message
    assert "deleted" in message
    assert not db_path.exists()  # nothing was written where a reader could find it
    with pytest.raises(BackendError, match="deleted"):  # reads refuse the lost file too
        storage.list_savepoints(RUN)


def test_a_new_file_at_a_deleted_files_path_gets_nothing_of_it(
    storage: SQLiteStorage, db_path: Path
) -> None:
    storage.save_savepoint(RUN, 2000, payload(2000))  # in the WAL, not yet in the file
    db_path.unlink()  # its -wal stays at the path, where SQLite looks for a new file's
    with pytest.raises(BackendError, match="deleted"):
        storage.save_savepoint(RUN, 3000, payload(3000))
    # Another process starts a new store there while this one still has the old file open.
    started = subprocess.run(
        [sys.executable, "-c", _NEW_STORE, str(db_path)],
        check=False,
        capture_output=True,
        text=True,
    )
    assert started.returncode == 0, started.stderr
    assert started.stdout.split() == ["new", "5"]
    storage.close()
    assert _timestamps(db_path, "new") == [5]
    with _raw(db_path) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        assert conn.execute("SELECT run_id FROM runs").fetchall() == [("new",)]


def test_a_save_after_the_directory_was_deleted_is_refused(
    storage: SQLiteStorage, db_path: Path
) -> None:
    shutil.rmtree(db_path.parent)
    with pytest.raises(BackendError, match=rf"{db_path}.*deleted"):
        storage.save_savepoint(RUN, 2000, payload(2000))
    with pytest.raises(BackendError, match="deleted"):
        storage.acquire_writer(RUN)
    assert not db_path.parent.exists()


def test_a_save_after_the_file_was_replaced_is_refused(
    storage: SQLiteStorage, db_path: Path, tmp_path: Path
) -> None:
    replacement = tmp_path / "other.db"
    _other_store(replacement)
    os.replace(replacement, db_path)  # e.g. a restore from backup over the live file
    with pytest.raises(BackendError, match=rf"savepoint 2000: .*{db_path}.*replaced"):
        storage.save_savepoint(RUN, 2000, payload(2000))
    with pytest.raises(BackendError, match="replaced"):  # no read of the old file either
        storage.get_latest_savepoint(RUN)
    with pytest.raises(BackendError, match="replaced"):
        storage.list_runs()
    storage.close()
    # The file now at the path is the other store, untouched by the refused save.
    with SQLiteStorage(db_path) as reopened:
        assert reopened.list_runs() == ["other"]
        assert reopened.get_latest_savepoint("other") == (7, [("theirs", 7)])
    with _raw(db_path) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]


def test_a_file_moved_aside_and_replaced_leaves_both_whole(
    storage: SQLiteStorage, db_path: Path, tmp_path: Path
) -> None:
    # SQLite finds a -wal by the path: the old file's log, still at the path, must not be
    # replayed onto the new file by the next process that opens it; and the old file (moved
    # aside, as a backup) keeps what was committed into that log.
    storage.save_savepoint(RUN, 2000, payload(2000))  # in the WAL, not yet in the file
    replacement, aside = tmp_path / "other.db", tmp_path / "aside.db"
    _other_store(replacement)
    os.rename(db_path, aside)
    os.rename(replacement, db_path)
    with pytest.raises(BackendError, match="replaced"):
        storage.save_savepoint(RUN, 3000, payload(3000))
    # Another process opens the new file while this store still has the old one open.
    verified = run_cli("verify", "--url", f"sqlite:///{db_path}")
    assert verified.returncode == 0, verified.stderr
    assert "ok: 1 savepoint(s) in 1 run(s) verified" in verified.stdout
    storage.close()
    assert _timestamps(db_path, "other") == [7]
    assert _timestamps(aside, RUN) == [1000, 2000]


def test_a_thread_connecting_after_the_file_was_replaced_is_refused(
    storage: SQLiteStorage, db_path: Path, tmp_path: Path
) -> None:
    replacement = tmp_path / "other.db"
    _other_store(replacement)
    os.replace(replacement, db_path)
    failures: list[BaseException] = []

    def save() -> None:  # a new thread opens a new connection: to the new file
        try:
            storage.save_savepoint(RUN, 2000, payload(2000))
        except BaseException as exc:
            failures.append(exc)

    thread = threading.Thread(target=save)
    thread.start()
    thread.join()
    assert len(failures) == 1
    assert isinstance(failures[0], BackendError)
    assert "replaced" in str(failures[0])


def test_a_save_after_the_wal_was_deleted_is_refused(storage: SQLiteStorage, db_path: Path) -> None:
    storage.save_savepoint(RUN, 2000, payload(2000))  # in the WAL, not yet in the file
    Path(f"{db_path}-wal").unlink()
    with pytest.raises(BackendError) as raised:
        storage.save_savepoint(RUN, 3000, payload(3000))
    message = str(raised.value)
    assert "savepoint 3000" in message
    assert f"{db_path}-wal" in message
    assert "deleted" in message


def test_a_save_after_the_wal_index_was_deleted_is_refused(
    storage: SQLiteStorage, db_path: Path
) -> None:
    Path(f"{db_path}-shm").unlink()
    with pytest.raises(BackendError, match=rf"savepoint 2000: .*{db_path}-shm.*deleted"):
        storage.save_savepoint(RUN, 2000, payload(2000))


def test_a_wal_that_other_connections_empty_and_truncate_is_no_alarm(
    storage: SQLiteStorage, db_path: Path
) -> None:
    # Checkpoints, truncation and VACUUM keep the -wal file in place: saves go on.
    for ts in range(2000, 6000, 1000):
        storage.save_savepoint(RUN, ts, payload(ts))
        with _raw(db_path) as other:
            other.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    storage.delete_old_savepoints(RUN, 2)
    storage.compact()
    storage.save_savepoint(RUN, 9000, payload(9000))
    assert [row.timestamp for row in storage.list_savepoints(RUN)] == [4000, 5000, 9000]
    storage.close()
    assert _timestamps(db_path, RUN) == [4000, 5000, 9000]


def test_the_checks_cost_little_on_the_normal_save_path(storage: SQLiteStorage) -> None:
    entities = [(f"e{i}", {"i": i}) for i in range(100)]
    counter = iter(range(10_000, 10**9))
    seconds = timeit.timeit(lambda: storage.save_savepoint(RUN, next(counter), entities), number=50)
    print(f"{seconds / 50 * 1000:.2f} ms per save of 100 small states")  # no timing assert
    assert len(storage.list_savepoints(RUN)) == 51
    assert storage.get_latest_savepoint(RUN).entities == entities


# ==================================================================== damaged metadata


def _set(path: Path, column: str, value: object, ts: int = 2000) -> None:
    """Write ``value`` into one column of one savepoints row, past the library."""
    with _raw(path) as conn:
        if value is None:  # NOT NULL stops a plain UPDATE: drop the constraint first
            conn.execute("PRAGMA writable_schema = ON")
            conn.execute(
                "UPDATE sqlite_master SET sql = replace(sql, ?, ?) WHERE name = 'savepoints'",
                (f"{column} INTEGER NOT NULL", f"{column} INTEGER"),
            )
            conn.execute("PRAGMA writable_schema = OFF")
    with _raw(path) as conn:
        conn.execute(f"UPDATE savepoints SET {column} = ? WHERE ts = ?", (value, ts))


def _filled(path: Path) -> None:
    with SQLiteStorage(path) as storage:
        storage.init_storage(RUN)
        for ts in (1000, 2000, 3000):
            storage.save_savepoint(RUN, ts, payload(ts))


DAMAGED_METADATA = [
    ("entity_count", "many"),
    ("entity_count", -3),
    ("entity_count", 2.5),
    ("entity_count", b"\x01"),
    ("entity_count", None),
    ("size", "big"),
    ("size", -1),
    ("size", 0.5),
    ("size", None),
]


@pytest.mark.parametrize(("column", "value"), DAMAGED_METADATA)
def test_a_savepoint_with_damaged_metadata_is_still_listed(
    db_path: Path, column: str, value: object
) -> None:
    _filled(db_path)
    with SQLiteStorage(db_path) as storage:
        whole = storage.list_savepoints(RUN)[1]
    _set(db_path, column, value)
    with SQLiteStorage(db_path) as storage:
        rows = storage.list_savepoints(RUN)
        assert [row.timestamp for row in rows] == [1000, 2000, 3000]
        damaged = rows[1]
        assert damaged.entity_count == (0 if column == "entity_count" else whole.entity_count)
        assert damaged.size == (0 if column == "size" else whole.size)
        assert all(isinstance(field, int) for row in rows for field in row)
        # Its states are whole (they are checksummed): it can be read, and pruned.
        assert wholeness_problem(storage.get_savepoint(RUN, 2000)) is None
        storage.delete_old_savepoints(RUN, 1)
        assert storage.list_savepoints(RUN) == [rows[2]]


DAMAGED_TIMESTAMPS: list[object] = ["2000.5", 2500.5, -2000, b"\x07\xd0", None]


@pytest.mark.parametrize("value", DAMAGED_TIMESTAMPS)
def test_a_savepoint_with_a_damaged_timestamp_is_left_out(db_path: Path, value: object) -> None:
    _filled(db_path)
    _set(db_path, "ts", value, ts=3000)  # the latest one
    with SQLiteStorage(db_path) as storage:
        assert [row.timestamp for row in storage.list_savepoints(RUN)] == [1000, 2000]
        assert storage.get_latest_savepoint_timestamp(RUN) == 2000
        latest = storage.get_latest_savepoint(RUN)
        assert latest.timestamp == 2000
        assert wholeness_problem(latest) is None
        storage.save_savepoint(RUN, 4000, payload(4000))  # the run goes on
        storage.delete_old_savepoints(RUN, 1)
        assert [row.timestamp for row in storage.list_savepoints(RUN)] == [4000]


@pytest.mark.parametrize(
    ("column", "value"), [("entity_count", "many"), ("size", -1), ("ts", "2000.5")]
)
def test_the_cli_lists_and_verifies_a_store_with_damaged_metadata(
    db_path: Path, column: str, value: object
) -> None:
    _filled(db_path)
    _set(db_path, column, value)
    url = f"sqlite:///{db_path}"
    listed = 2 if column == "ts" else 3
    runs = run_cli("runs", "--url", url)
    assert runs.returncode == 0, runs.stderr
    assert "a bug" not in runs.stderr
    assert f"{RUN}" in runs.stdout
    assert f" {listed} " in runs.stdout.splitlines()[2]  # the savepoints column of the run
    shown = run_cli("savepoints", RUN, "--url", url)
    assert shown.returncode == 0, shown.stderr
    verified = run_cli("verify", "--url", url)
    assert verified.returncode == 0, verified.stderr
    assert "a bug" not in verified.stderr
    assert f"ok: {listed} savepoint(s) in 1 run(s) verified" in verified.stdout


@pytest.mark.parametrize(
    ("taken_at", "shown"),
    [
        ("yesterday", "taken at a time not recorded"),
        (2.5, "taken at a time not recorded"),
        (-(2**63), f"taken at a time out of range ({-(2**63)})"),
        (2**63 - 1, f"taken at a time out of range ({2**63 - 1})"),
    ],
)
def test_an_edited_writer_time_is_shown_for_what_it_is(
    storage: SQLiteStorage, db_path: Path, taken_at: object, shown: str
) -> None:
    """The time a token was taken is display only: an edited one never breaks a reader."""
    storage.init_storage("run")
    storage.save_savepoint("run", 1000, payload(1000))
    token = storage.acquire_writer("run")
    with contextlib.closing(apsw.Connection(str(db_path))) as conn:
        conn.execute("UPDATE writer_taken SET taken_at = ?", (taken_at,))
    found = storage.current_writer("run")
    assert found is not None
    assert found.token == token
    text = run_cli("stats", "run", "--url", f"sqlite:///{db_path}").stdout
    assert f"writer: token {token}, {shown}" in text
    storage.save_savepoint("run", 2000, payload(2000), writer_token=token)  # still the writer
