"""A full disk, or a file size limit, in the middle of a save (sqlite and file stores).

Two ways to run out of space, both real: a writer process under
``RLIMIT_FSIZE`` (with ``SIGXFSZ`` ignored, so a write past the limit fails with
``EFBIG`` instead of killing it), and a small tmpfs mounted for the test and filled up
(``ENOSPC``; skipped where mounting is not allowed). Either way the failed save is a
clear ``BackendError``, the previous savepoint stays intact, nothing of the failed save
is visible, and the store works again once space returns.
"""

from __future__ import annotations

import contextlib
import errno
import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from fault_helpers import ENTITIES, SCHEDULE, engine_savepoint, engine_state, run_python, tmpfs

from statestore import BackendError, StateStore, open_storage
from statestore.testing._worker import payload, wholeness_problem

RUN = "full-run"
BACKENDS = ["sqlite", "file"]
#: Bytes a file may grow to under the limit: far less than one large state.
FILE_SIZE_LIMIT = 256 * 1024


def url_in(backend: str, directory: Path) -> str:
    if backend == "sqlite":
        return f"sqlite:///{directory}/store.db"
    return f"file://{directory}/store"


def assert_intact(url: str, stamps: list[int]) -> None:
    """The run holds exactly ``stamps``, each savepoint whole; a SQLite file checks out."""
    with open_storage(url) as storage:
        assert [row.timestamp for row in storage.list_savepoints(RUN)] == stamps
        assert storage.get_latest_savepoint(RUN).timestamp == stamps[-1]
        for timestamp in stamps:
            assert wholeness_problem(storage.get_savepoint(RUN, timestamp)) is None
    if url.startswith("sqlite:"):
        conn = sqlite3.connect(url.removeprefix("sqlite:///"))
        try:
            assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        finally:
            conn.close()


# A writer whose files may not grow past FILE_SIZE_LIMIT tries to save a 2 MiB state.
_LIMITED_WRITER = """
    import os, resource, signal, sys
    from statestore import BackendError, open_storage
    from statestore.testing._worker import payload
    url, limit = sys.argv[1], int(sys.argv[2])
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    with open_storage(url) as storage:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
        try:
            big = payload(3000) + [("big", os.urandom(2 << 20))]
            storage.save_savepoint("full-run", 3000, big)
            print("SAVED")
        except BackendError as exc:
            print("REFUSED", exc)
        # Still under the limit: the store reads as before the failed save.
        print("LATEST", storage.get_latest_savepoint("full-run").timestamp)
        print("LISTED", [row.timestamp for row in storage.list_savepoints("full-run")])
"""


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_file_size_limit_mid_save_keeps_the_previous_savepoint(
    backend: str, tmp_path: Path
) -> None:
    url = url_in(backend, tmp_path)
    with open_storage(url) as storage:
        storage.init_storage(RUN)
        for timestamp in (1000, 2000):
            storage.save_savepoint(RUN, timestamp, payload(timestamp))
    result = run_python(_LIMITED_WRITER, url, str(FILE_SIZE_LIMIT))
    lines = result.stdout.splitlines()
    assert len(lines) == 3, result.stdout + result.stderr
    refused, latest, listed = lines
    assert refused.startswith("REFUSED run 'full-run': savepoint 3000: "), refused
    reason = "file too large (EFBIG)" if backend == "file" else "I/O error"
    assert reason in refused  # SQLite reports EFBIG as a disk I/O error
    assert (latest, listed) == ("LATEST 2000", "LISTED [1000, 2000]")
    assert_intact(url, [1000, 2000])
    # The limit lifted (a process without it), the same big save goes through.
    with open_storage(url) as storage:
        big = [*payload(3000), ("big", os.urandom(2 << 20))]
        storage.save_savepoint(RUN, 3000, big)
        assert storage.get_latest_savepoint(RUN) == (3000, big)
        storage.save_savepoint(RUN, 4000, payload(4000))
    with open_storage(url) as storage:
        assert [row.timestamp for row in storage.list_savepoints(RUN)] == [1000, 2000, 3000, 4000]
        assert storage.get_latest_savepoint(RUN) == (4000, payload(4000))


# ------------------------------------------------------------------ a full disk


@contextlib.contextmanager
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB tmpfs for this test; skips where mounting is not allowed."""
    with tmpfs(tmp_path / "disk", "4m") as mounted:
        if not mounted:
            pytest.skip("cannot mount a tmpfs here (needs root with CAP_SYS_ADMIN)")
        yield tmp_path / "disk"


def fill(disk: Path, leave: int) -> Path:
    """Fill the disk up, then free ``leave`` bytes; returns the filler file."""
    filler = disk / "filler"
    chunk = b"\0" * 65536
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
    try:
        while True:
            os.write(fd, chunk)
    except OSError as exc:
        if exc.errno != errno.ENOSPC:
            raise
    finally:
        os.close(fd)
    os.truncate(filler, max(filler.stat().st_size - leave, 0))
    return filler


def big_state(writer: str, entity_id: str, ts: int) -> dict[str, object]:
    """An engine state with 256 KiB of random bytes: no compression fits it on the disk."""
    return {**engine_state(writer, entity_id, ts), "blob": os.urandom(256 * 1024)}


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_full_disk_fails_the_save_clearly_and_the_engine_retries_once_space_returns(
    backend: str, tmp_path: Path
) -> None:
    with small_disk(tmp_path) as disk:
        url = url_in(backend, disk)
        with open_storage(url) as storage:
            store = StateStore(RUN, SCHEDULE, storage=storage, keep_savepoints=3)
            entities = store.init_run_state(0, [(e, engine_state("A", e, 0)) for e in ENTITIES])
            for entity in entities:
                entity.update_state(1000, engine_state("A", entity.id, 1000))
                entity.ack_processed_time(1000)
            filler = fill(disk, leave=64 * 1024)
            for entity in entities[:-1]:  # fill savepoint 2000 in memory: nothing written
                entity.update_state(2000, big_state("A", entity.id, 2000))
                entity.ack_processed_time(2000)
            last = entities[-1]
            last.update_state(2000, big_state("A", last.id, 2000))
            with pytest.raises(BackendError, match=r"savepoint 2000: .*disk is full") as full:
                last.ack_processed_time(2000)
            print(full.value)  # shown with -s: the error a user sees
            assert last.next_savepoint == 2000  # the failed call left the entity as it was
            # The previous savepoint is intact, and nothing of the failed one shows.
            assert storage.list_savepoints(RUN)[-1].timestamp == 1000
            assert storage.get_latest_savepoint(RUN) == engine_savepoint("A", 1000)
            filler.unlink()  # space returns
            last.ack_processed_time(2000)  # retried: savepoint 2000 persists now
            saved = storage.get_latest_savepoint(RUN)
            assert saved.timestamp == 2000
            assert [state["ts"] for _, state in saved.entities] == [2000] * len(ENTITIES)
            for entity in entities:
                entity.update_state(3000, engine_state("A", entity.id, 3000))
                entity.ack_processed_time(3000)
            assert storage.get_latest_savepoint(RUN) == engine_savepoint("A", 3000)
            assert [row.timestamp for row in storage.list_savepoints(RUN)] == [1000, 2000, 3000]
        if backend == "sqlite":
            conn = sqlite3.connect(disk / "store.db")
            try:
                assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
            finally:
                conn.close()


@pytest.mark.parametrize("backend", BACKENDS)
def test_every_write_on_a_full_disk_is_a_clear_error(backend: str, tmp_path: Path) -> None:
    with small_disk(tmp_path) as disk:
        url = url_in(backend, disk)
        with open_storage(url) as storage:
            storage.init_storage(RUN)
            storage.save_savepoint(RUN, 1000, payload(1000))
            filler = fill(disk, leave=0)
            big = [*payload(2000), ("big", os.urandom(1 << 20))]
            with pytest.raises(BackendError, match="disk is full"):
                storage.save_savepoint(RUN, 2000, big)
            with pytest.raises(BackendError, match="disk is full"):
                storage.init_storage("another-run")
            assert storage.get_latest_savepoint(RUN) == (1000, payload(1000))
            filler.unlink()
            storage.save_savepoint(RUN, 2000, big)
            storage.init_storage("another-run")
            assert storage.get_latest_savepoint(RUN) == (2000, big)
            assert storage.list_runs() == ["another-run", RUN]
