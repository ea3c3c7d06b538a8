"""A read-only store: every write is a clear ``BackendError``, reads still work.

How the store is made read-only, per backend:

* sqlite and file: the store's directory is bind-mounted read-only (``mount --bind``
  then ``remount,ro``) and opened through that view, so every write fails with
  ``EROFS`` whoever we are (the tests run as root, which ignores permission bits);
  skipped where mounting is not allowed. Another variant drops root's
  ``CAP_DAC_OVERRIDE`` in a child (``setpriv``) after making the SQLite files
  read-only with chmod (the file backend's is in ``tests/test_files.py``).
* PostgreSQL: a session with ``default_transaction_read_only=on`` (what a hot standby
  or a read-only replica gives), and a role granted nothing but ``SELECT``.

Each time the store is left exactly as it was, and a StateStore cannot start on it
(starting takes the writer token, a write) with a clear error too.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import with_query
from fault_helpers import child_env, read_only_view, snapshot

from statestore import BackendError, StateStore, Storage, open_storage
from statestore.testing.faults import ENTITIES, SCHEDULE
from statestore.testing.worker import payload

RUN = "read-only-run"

WRITES: dict[str, Callable[[Storage], object]] = {
    "save_savepoint": lambda s: s.save_savepoint(RUN, 3000, payload(3000)),
    "replace a savepoint": lambda s: s.save_savepoint(RUN, 2000, payload(2000)),
    "init_storage": lambda s: s.init_storage("new-run"),
    "acquire_writer": lambda s: s.acquire_writer(RUN),
    "delete_old_savepoints": lambda s: s.delete_old_savepoints(RUN, 1),
    "delete_run": lambda s: s.delete_run(RUN),
}


def populate(url: str) -> None:
    with open_storage(url) as storage:
        storage.init_storage(RUN)
        for timestamp in (1000, 2000):
            storage.save_savepoint(RUN, timestamp, payload(timestamp))


def assert_reads_work_and_writes_refused(storage: Storage, why: str) -> None:
    """Reads give the stored savepoints; every write is a BackendError saying ``why``."""
    assert storage.list_runs() == [RUN]
    assert storage.get_latest_savepoint(RUN) == (2000, payload(2000))
    assert storage.get_savepoint(RUN, 1000) == (1000, payload(1000))
    assert [row.timestamp for row in storage.list_savepoints(RUN)] == [1000, 2000]
    for label, write in WRITES.items():
        with pytest.raises(BackendError, match=why) as refused:
            write(storage)
        assert RUN in str(refused.value) or label == "init_storage", refused.value
    with pytest.raises(BackendError, match=why):
        StateStore(RUN, SCHEDULE, storage=storage).start(0, [(e, None) for e in ENTITIES])
    assert storage.get_latest_savepoint(RUN) == (2000, payload(2000))


def assert_writable_again(url: str) -> None:
    with open_storage(url) as storage:
        storage.save_savepoint(RUN, 3000, payload(3000))
        assert storage.get_latest_savepoint(RUN) == (3000, payload(3000))


# ------------------------------------------------------------------ sqlite and file


@pytest.mark.parametrize("backend", ["sqlite", "file"])
def test_a_read_only_mount_serves_reads_and_refuses_writes(backend: str, tmp_path: Path) -> None:
    source, view = tmp_path / "store", tmp_path / "view"
    source.mkdir()
    name = "store.db" if backend == "sqlite" else "files"
    url = f"sqlite:///{source}/{name}" if backend == "sqlite" else f"file://{source}/{name}"
    populate(url)
    before = snapshot(url, RUN)
    with read_only_view(source, view) as mounted:
        if not mounted:
            pytest.skip("bind mounts are not allowed here (needs root with CAP_SYS_ADMIN)")
        view_url = url.replace(str(source), str(view))
        with open_storage(view_url) as storage:
            assert_reads_work_and_writes_refused(storage, "read-only")
    assert snapshot(url, RUN) == before
    assert_writable_again(url)


_NO_DAC_READER = """
    import sys
    from statestore import BackendError, open_storage
    with open_storage(sys.argv[1]) as storage:
        print("LATEST", storage.get_latest_savepoint("read-only-run").timestamp, flush=True)
        try:
            storage.save_savepoint("read-only-run", 3000, [("a", 1)])
            print("WROTE")
        except BackendError as exc:
            print("REFUSED", exc)
"""


@pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("setpriv") is None,
    reason="needs root and setpriv to drop the capability that ignores permissions",
)
@pytest.mark.parametrize(
    "leftovers",
    [
        pytest.param(False, id="closed cleanly"),
        pytest.param(True, id="with its -wal and -shm files"),
    ],
)
def test_a_sqlite_store_without_write_permission(tmp_path: Path, leftovers: bool) -> None:
    store = tmp_path / "store"
    url = f"sqlite:///{store}/store.db"
    populate(url)
    if leftovers:  # as a writer that is still running (or was killed) leaves them
        for suffix in ("-wal", "-shm"):
            (store / f"store.db{suffix}").touch()
    for path in [store, *store.iterdir()]:
        path.chmod(0o555 if path.is_dir() else 0o444)
    try:
        done = subprocess.run(
            ["setpriv", "--bounding-set=-dac_override,-dac_read_search", "--inh-caps=-all",
             "--", sys.executable, "-c", textwrap.dedent(_NO_DAC_READER), url],
            capture_output=True, text=True, timeout=60, check=False, env=child_env(),
        )  # fmt: skip
    finally:
        for path in [store, *store.iterdir()]:
            path.chmod(0o755 if path.is_dir() else 0o644)
    assert "LATEST" in done.stdout, done.stderr
    latest, refused = done.stdout.splitlines()
    assert latest == "LATEST 2000"
    assert refused.startswith("REFUSED run 'read-only-run': savepoint 3000: "), refused
    assert "read-only" in refused
    assert_writable_again(url)


_WATCHER = """
    import sys
    from statestore import open_storage
    with open_storage(sys.argv[1]) as storage:
        print("LATEST", storage.get_latest_savepoint("read-only-run").timestamp, flush=True)
        for _line in sys.stdin:
            rows = storage.list_savepoints("read-only-run")
            latest = storage.get_latest_savepoint("read-only-run").timestamp
            print("LATEST", latest, [row.timestamp for row in rows], flush=True)
"""


@pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("setpriv") is None,
    reason="needs root and setpriv to drop the capability that ignores permissions",
)
def test_a_reader_without_write_permission_sees_what_a_writer_saves_later(
    tmp_path: Path,
) -> None:
    store = tmp_path / "store"
    url = f"sqlite:///{store}/store.db"
    populate(url)
    for path in [store, *store.iterdir()]:  # root, the writer, ignores these bits
        path.chmod(0o555 if path.is_dir() else 0o444)
    watcher = subprocess.Popen(
        ["setpriv", "--bounding-set=-dac_override,-dac_read_search", "--inh-caps=-all",
         "--", sys.executable, "-c", textwrap.dedent(_WATCHER), url],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=child_env(),
    )  # fmt: skip
    try:
        assert watcher.stdout is not None
        assert watcher.stdin is not None
        assert watcher.stdout.readline().strip() == "LATEST 2000"
        with open_storage(url) as writer:  # another process with write permission
            for timestamp in (3000, 4000, 5000):
                writer.save_savepoint(RUN, timestamp, payload(timestamp))
            writer.delete_old_savepoints(RUN, 2)
            watcher.stdin.write("again\n")
            watcher.stdin.flush()
            seen = watcher.stdout.readline().strip()
    finally:
        watcher.kill()
        watcher.communicate(timeout=60)
        for path in [store, *store.iterdir()]:
            path.chmod(0o755 if path.is_dir() else 0o644)
    assert seen == "LATEST 5000 [4000, 5000]"


# ------------------------------------------------------------------ PostgreSQL


@pytest.mark.postgres
def test_a_read_only_postgres_session_serves_reads_and_refuses_writes(
    postgres_store_url: str,
) -> None:
    populate(postgres_store_url)
    before = snapshot(postgres_store_url, RUN)
    read_only = with_query(postgres_store_url, options="-c default_transaction_read_only=on")
    with open_storage(read_only) as storage:
        assert_reads_work_and_writes_refused(storage, "read-only transaction")
    assert snapshot(postgres_store_url, RUN) == before
    assert_writable_again(postgres_store_url)


@pytest.mark.postgres
def test_a_select_only_role_serves_reads_and_refuses_writes(
    postgres_url: str, postgres_store_url: str, postgres_schema: str
) -> None:
    import urllib.parse
    import uuid

    import psycopg
    from psycopg import sql

    populate(postgres_store_url)
    before = snapshot(postgres_store_url, RUN)
    role, password = f"reader_{uuid.uuid4().hex[:12]}", uuid.uuid4().hex
    schema = sql.Identifier(postgres_schema)
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(
            sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
                sql.Identifier(role), sql.Literal(password)
            )
        )
        conn.execute(sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(schema, sql.Identifier(role)))
        conn.execute(
            sql.SQL("GRANT SELECT ON ALL TABLES IN SCHEMA {} TO {}").format(
                schema, sql.Identifier(role)
            )
        )
    try:
        parts = urllib.parse.urlsplit(postgres_store_url)
        netloc = f"{role}:{password}@{parts.hostname}:{parts.port}"
        reader_url = urllib.parse.urlunsplit(parts._replace(netloc=netloc))
        with open_storage(reader_url) as storage:
            assert_reads_work_and_writes_refused(storage, "permission denied")
    finally:
        with psycopg.connect(postgres_url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
            conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))
    assert snapshot(postgres_store_url, RUN) == before
    assert_writable_again(postgres_store_url)
