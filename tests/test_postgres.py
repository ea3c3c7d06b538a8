"""The PostgreSQL backend: the conformance suite, plus what only a database server can do."""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import multiprocessing
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import traceback
import urllib.parse
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

if (
    importlib.util.find_spec("psycopg") is None
    and os.environ.get("STATESTORE_REQUIRE_POSTGRES") != "1"
):
    pytest.skip("psycopg is not installed: pip install -e '.[postgres]'", allow_module_level=True)

import psycopg
from conftest import with_query
from postgres_server import PostgresServer
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from statestore import open_storage
from statestore.errors import BackendError, ConfigError, StaleWriterError
from statestore.storage import Storage, WriterToken
from statestore.storage._postgres import PostgresStorage
from statestore.storage._postgres._options import settings_from_url
from statestore.storage._postgres._schema import CHUNK_BYTES, LATEST_VERSION, MIGRATIONS, Tables
from statestore.testing import StorageConformance
from statestore.testing.hooks import MANIFEST, PACK_PREFIX
from statestore.testing.worker import wholeness_problem


def _admin(storage: PostgresStorage) -> psycopg.Connection[tuple[Any, ...]]:
    """A connection of its own to the storage's database, bypassing the library."""
    return psycopg.connect(storage._settings.conninfo, autocommit=True)


class TestPostgres(StorageConformance):
    @pytest.fixture
    def url(self, postgres_store_url: str) -> str:
        return postgres_store_url

    # The back doors: the savepoint's manifest column and its packs' chunk rows, through
    # one connection of their own per test (byte-by-byte damage writes thousands of times).

    @pytest.fixture(autouse=True)
    def _close_back_door(self) -> Iterator[None]:
        yield
        door = self.__dict__.pop("_door", None)
        if door is not None:
            door.close()

    def _door_sql(
        self, storage: Storage, template: str, params: list[Any]
    ) -> list[tuple[Any, ...]]:
        assert isinstance(storage, PostgresStorage)
        if "_door" not in self.__dict__:
            self._door = _admin(storage)
        rows = self._door.execute(Tables(storage.schema).sql(template), params)
        return rows.fetchall() if rows.description else []

    def raw_parts(self, storage: Storage, run_id: str, timestamp: int) -> list[str]:
        ((refs,),) = self._door_sql(
            storage,
            "SELECT s.refs FROM {savepoints} s JOIN {runs} r USING (run_key) "
            "WHERE r.run_id = %s AND s.ts = %s",
            [run_id, timestamp],
        )
        return [MANIFEST, *(PACK_PREFIX + name for name in refs)]

    def raw_read(self, storage: Storage, run_id: str, timestamp: int, part: str) -> bytes:
        if part == MANIFEST:
            ((data,),) = self._door_sql(
                storage,
                "SELECT s.manifest FROM {savepoints} s JOIN {runs} r USING (run_key) "
                "WHERE r.run_id = %s AND s.ts = %s",
                [run_id, timestamp],
            )
            return bytes(data)
        rows = self._door_sql(
            storage,
            "SELECT b.data FROM {blobs} b JOIN {runs} r USING (run_key) "
            "WHERE r.run_id = %s AND b.name = %s ORDER BY b.chunk",
            [run_id, part.removeprefix(PACK_PREFIX)],
        )
        assert rows, f"no stored {part} of savepoint {timestamp}"
        return b"".join(bytes(data) for (data,) in rows)

    def raw_write(
        self, storage: Storage, run_id: str, timestamp: int, part: str, data: bytes
    ) -> None:
        key = "(SELECT run_key FROM {runs} WHERE run_id = %s)"
        if part == MANIFEST:
            changed = self._door_sql(
                storage,
                f"UPDATE {{savepoints}} SET manifest = %s WHERE ts = %s AND run_key = {key} "
                "RETURNING ts",
                [data, timestamp, run_id],
            )
            assert changed, f"no stored manifest of savepoint {timestamp}"
            return
        name = part.removeprefix(PACK_PREFIX)
        with self._door.transaction():  # one chunk holding the whole blob
            self._door_sql(
                storage,
                f"DELETE FROM {{blobs}} WHERE name = %s AND run_key = {key}",
                [name, run_id],
            )
            self._door_sql(
                storage,
                f"INSERT INTO {{blobs}} (run_key, name, chunk, data) SELECT {key}, %s, 0, %s",
                [run_id, name, data],
            )


# ==================================================================== helpers


def _open(url: str, **options: Any) -> PostgresStorage:
    storage = open_storage(url, **options)
    assert isinstance(storage, PostgresStorage)
    return storage


def _orphans(storage: PostgresStorage, run_id: str) -> list[str]:
    """Blobs of the run that no savepoint refers to: what a partial write would leave."""
    t = Tables(storage.schema)
    with _admin(storage) as conn:
        rows = conn.execute(
            t.sql(
                """SELECT DISTINCT b.name FROM {blobs} b JOIN {runs} r ON r.run_key = b.run_key
                WHERE r.run_id = %s AND NOT EXISTS (
                    SELECT 1 FROM {savepoints} s
                    WHERE s.run_key = b.run_key AND b.name = ANY (s.refs)
                )"""
            ),
            [run_id],
        ).fetchall()
    return [name for (name,) in rows]


def _stall(storage: PostgresStorage, table: str, *, deferred: bool, once: bool) -> None:
    """Make every write to ``table`` sleep 10 s inside the server (only the first, if ``once``).

    A deferred trigger sleeps inside COMMIT, after every statement of the transaction
    ran; a plain one sleeps right after the row is written. The sleeping backend is what
    :func:`_killer` terminates: a connection lost at a known point of a write.
    """
    counter = sql.Identifier(storage.schema, "stall_count")
    function = sql.Identifier(storage.schema, "stall")
    # A sequence counts the stalls: it is not rolled back with the killed transaction.
    condition = sql.SQL("nextval({}) = 1").format(sql.Literal(counter.as_string()))
    with _admin(storage) as conn:
        conn.execute(sql.SQL("CREATE SEQUENCE {}").format(counter))
        conn.execute(
            sql.SQL(
                """CREATE FUNCTION {function}() RETURNS trigger LANGUAGE plpgsql AS $$
                BEGIN
                    IF {condition} THEN PERFORM pg_sleep(10); END IF;
                    RETURN NULL;
                END $$"""
            ).format(function=function, condition=condition if once else sql.SQL("true"))
        )
        conn.execute(
            sql.SQL(
                "CREATE CONSTRAINT TRIGGER stall AFTER INSERT OR UPDATE ON {table} {timing} "
                "FOR EACH ROW EXECUTE FUNCTION {function}()"
            ).format(
                table=sql.Identifier(storage.schema, f"statestore_{table}"),
                timing=sql.SQL("DEFERRABLE INITIALLY DEFERRED" if deferred else ""),
                function=function,
            )
        )


def _unstall(storage: PostgresStorage, table: str) -> None:
    with _admin(storage) as conn:
        conn.execute(
            sql.SQL("DROP TRIGGER stall ON {}").format(
                sql.Identifier(storage.schema, f"statestore_{table}")
            )
        )


@contextlib.contextmanager
def _killer(admin_url: str, application_name: str) -> Iterator[list[int]]:
    """Terminate every backend of ``application_name`` found sleeping in a stall trigger."""
    killed: list[int] = []
    stop = threading.Event()

    def hunt() -> None:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            while not stop.wait(0.01):
                rows = conn.execute(
                    """SELECT pid, pg_terminate_backend(pid) FROM pg_stat_activity
                    WHERE application_name = %s AND wait_event = 'PgSleep'""",
                    [application_name],
                ).fetchall()
                # A terminated backend may show for a moment longer: count it once.
                killed.extend(pid for pid, _ in rows if pid not in killed)

    hunter = threading.Thread(target=hunt, daemon=True)
    hunter.start()
    try:
        yield killed
    finally:
        stop.set()
        hunter.join(timeout=30)


def _wait_for_stall(admin_url: str, application_name: str) -> int:
    """The pid of the backend of ``application_name`` sleeping in a stall trigger."""
    with psycopg.connect(admin_url, autocommit=True) as conn:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            row = conn.execute(
                "SELECT pid FROM pg_stat_activity WHERE application_name = %s "
                "AND wait_event = 'PgSleep'",
                [application_name],
            ).fetchone()
            if row is not None:
                return int(row[0])
            time.sleep(0.01)
    raise AssertionError("no write reached the stall")


def _spawn(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def _finish(child: subprocess.Popen[str]) -> str:
    stdout, stderr = child.communicate(timeout=120)
    assert child.returncode == 0, f"child {child.args!r} failed:\n{stderr}"
    return stdout


def _save_worker(url: str, run_id: str, plan: tuple[int, int, int, int]) -> Any:
    """A child saving ``count`` savepoints from ``first`` by ``step``, pruning to ``keep``."""
    args = [str(number) for number in plan]  # first, step, count, keep
    return _spawn("-m", "statestore.testing.worker", "save", url, run_id, *args)


def _assert_whole(storage: Storage, run_id: str, latest: int) -> None:
    assert storage.get_latest_savepoint_timestamp(run_id) == latest
    for row in storage.list_savepoints(run_id):
        problem = wholeness_problem(storage.get_savepoint(run_id, row.timestamp))
        assert problem is None, problem


# ==================================================================== URL and options


class TestOptions:
    """Parsing needs no server: what the URL says is what the backend gets."""

    def test_statestore_options_are_taken_out_of_the_url(self) -> None:
        found = settings_from_url(
            "postgresql://u:pw@db.example:6543/app?schema=My%20App&pool_min_size=0"
            "&pool_max_size=9&pool_timeout=2.5&connect_timeout=3&sslmode=prefer",
            {},
        )
        assert found.schema == "My App"
        assert (found.pool_min_size, found.pool_max_size, found.pool_timeout) == (0, 9, 2.5)
        params = conninfo_to_dict(found.conninfo)
        assert params["connect_timeout"] == "3"
        assert params["sslmode"] == "prefer"  # libpq's own parameters pass through
        assert params["password"] == "pw"  # noqa: S105 - a made-up one
        assert params["application_name"] == "statestore"
        assert not {"schema", "pool_min_size", "pool_max_size", "pool_timeout"} & set(params)
        assert found.target == "postgresql://u@db.example:6543/app"

    def test_defaults(self) -> None:
        found = settings_from_url("postgres://db.example/app", {})
        assert found.schema == "statestore"
        assert (found.pool_min_size, found.pool_max_size, found.pool_timeout) == (1, 4, 30.0)
        assert conninfo_to_dict(found.conninfo)["connect_timeout"] == "10"

    def test_an_option_in_the_url_and_as_a_keyword_is_refused(self) -> None:
        with pytest.raises(ConfigError, match="option 'schema' is given twice"):
            settings_from_url(
                "postgresql://db.example/app?schema=a&pool_max_size=2", {"schema": "b"}
            )
        found = settings_from_url("postgresql://db.example/app?pool_max_size=2", {"schema": "b"})
        assert (found.schema, found.pool_max_size) == ("b", 2)

    @pytest.mark.parametrize(
        ("query", "options"),
        [
            ("?schema=", {}),
            ("?schema=pg_catalog", {}),
            ("?schema=" + "x" * 64, {}),
            ("?pool_max_size=many", {}),
            ("?pool_min_size=3&pool_max_size=2", {}),
            ("?pool_max_size=0", {}),
            ("?pool_timeout=0", {}),
            ("?connect_timeout=0", {}),
            ("?schema=a&schema=b", {}),
            ("?no_such_libpq_parameter=1", {}),
            ("", {"no_such_option": 1}),
            ("", {"pool_max_size": "4"}),
            ("", {"schema": 7}),
        ],
    )
    def test_bad_options_are_refused(self, query: str, options: dict[str, Any]) -> None:
        with pytest.raises(ConfigError) as caught:
            open_storage(f"postgresql://user:hunter2secret@127.0.0.1:1/db{query}", **options)
        assert "hunter2secret" not in str(caught.value)

    def test_bad_key_value_conninfo_keeps_the_password_out(self) -> None:
        with pytest.raises(ConfigError) as caught:
            PostgresStorage("host=127.0.0.1 password=hunter2secret bogus")
        assert "hunter2secret" not in str(caught.value)


# ==================================================================== schema


def test_schemas_isolate_stores(postgres_url: str) -> None:
    schemas = [f"iso_{uuid.uuid4().hex[:12]}" for _ in range(2)]
    try:
        with (
            _open(with_query(postgres_url, schema=schemas[0])) as first,
            _open(with_query(postgres_url, schema=schemas[1])) as second,
        ):
            first.init_storage("run")
            first.save_savepoint("run", 1, [("who", "first")])
            assert second.list_runs() == []
            second.init_storage("run")
            second.save_savepoint("run", 2, [("who", "second")])
            first.delete_run("run")
            assert second.get_latest_savepoint("run") == (2, [("who", "second")])
            assert first.list_runs() == []
    finally:
        with psycopg.connect(postgres_url, autocommit=True) as conn:
            for schema in schemas:
                conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(schema)))


def _versions(storage: PostgresStorage) -> list[int]:
    with _admin(storage) as conn:
        query = Tables(storage.schema).sql("SELECT version FROM {migrations} ORDER BY version")
        return [version for (version,) in conn.execute(query).fetchall()]


def test_migrations_are_recorded_once(postgres_store_url: str) -> None:
    with _open(postgres_store_url) as storage:
        assert _versions(storage) == [m.version for m in MIGRATIONS]
    with _open(postgres_store_url) as again:  # reopening applies nothing twice
        assert _versions(again) == list(range(1, LATEST_VERSION + 1))


def test_a_schema_1_store_is_upgraded_and_its_old_tokens_have_no_time(
    postgres_store_url: str,
) -> None:
    with _open(postgres_store_url) as storage:
        storage.init_storage("run")
        storage.save_savepoint("run", 1, [("a", 1)])
        storage.acquire_writer("run")
    t = Tables(storage.schema)
    with _admin(storage) as conn:  # back to schema 1: as the last release left it
        conn.execute(t.sql("DROP TABLE {writer_taken}"))
        conn.execute(t.sql("DELETE FROM {migrations} WHERE version >= 2"))
    with _open(postgres_store_url) as storage:
        assert _versions(storage) == list(range(1, LATEST_VERSION + 1))
        old = storage.current_writer("run")
        assert old is not None
        assert old.taken_at is None  # taken before times were kept
        new = storage.acquire_writer("run")
        taken = storage.current_writer("run")
        assert taken is not None
        assert taken.token == new
        assert taken.taken_at is not None
        with _admin(storage) as conn:  # a process of the older statestore takes it
            conn.execute(
                t.sql("UPDATE {runs} SET writer_token = nextval(%s::regclass)"),
                [t.writer_tokens_name],
            )
        assert storage.current_writer("run") == WriterToken(new + 1, None)
        with _admin(storage) as conn:  # an edited time that is no instant
            conn.execute(
                t.sql("UPDATE {writer_taken} SET token = token + 1, taken_at = 'infinity'")
            )
        assert storage.current_writer("run") == WriterToken(new + 1, None)
        assert storage.get_latest_savepoint("run") == (1, [("a", 1)])


def test_stored_bytes_are_compressed_with_lz4(postgres_store_url: str) -> None:
    with _open(postgres_store_url) as storage, _admin(storage) as conn:
        methods = conn.execute(
            """SELECT c.relname, a.attname, a.attcompression
            FROM pg_catalog.pg_attribute a JOIN pg_catalog.pg_class c ON c.oid = a.attrelid
            JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
            WHERE n.nspname = %s AND a.attname IN ('data', 'manifest') ORDER BY 1""",
            [storage.schema],
        ).fetchall()
    # 'l' is lz4: Debian's PostgreSQL, which the tests run, is built with it.
    assert methods == [
        ("statestore_blobs", "data", "l"),
        ("statestore_savepoints", "manifest", "l"),
    ]


def test_a_schema_newer_than_the_code_is_refused(postgres_store_url: str) -> None:
    with _open(postgres_store_url) as storage:
        storage.init_storage("run")
        storage.save_savepoint("run", 1, [("a", 1)])
        with _admin(storage) as conn:
            conn.execute(
                Tables(storage.schema).sql(
                    "INSERT INTO {migrations} (version, description) VALUES (%s, 'from the future')"
                ),
                [LATEST_VERSION + 1],
            )
    with pytest.raises(ConfigError, match=rf"version {LATEST_VERSION + 1}.*upgrade statestore"):
        open_storage(postgres_store_url)
    with _admin(storage) as conn:  # nothing was touched
        rows = conn.execute(
            Tables(storage.schema).sql("SELECT count(*) FROM {savepoints}")
        ).fetchone()
        assert rows == (1,)


_FIRST_OPEN = textwrap.dedent(
    """
    import os, sys, time
    import statestore.storage._postgres
    from statestore import open_storage

    url, run_id, go = sys.argv[1:4]
    print("ready", flush=True)
    while not os.path.exists(go):
        time.sleep(0.002)
    with open_storage(url) as storage:
        storage.init_storage(run_id)
        storage.save_savepoint(run_id, 1, [("who", run_id)])
    print("saved", flush=True)
    """
)


def test_concurrent_first_opens_migrate_once(postgres_store_url: str, tmp_path: Path) -> None:
    go = tmp_path / "go"
    children = [
        _spawn("-c", _FIRST_OPEN, postgres_store_url, f"run-{i}", str(go)) for i in range(4)
    ]
    for child in children:  # every child imported everything and waits at the line
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "ready"
    go.touch()
    for child in children:
        assert _finish(child).strip() == "saved"
    with _open(postgres_store_url) as storage:
        assert _versions(storage) == list(range(1, LATEST_VERSION + 1))
        assert storage.list_runs() == [f"run-{i}" for i in range(4)]
        for i in range(4):
            assert storage.get_latest_savepoint(f"run-{i}") == (1, [("who", f"run-{i}")])


def test_a_non_utf8_database_is_refused(postgres_url: str) -> None:
    name = f"latin1_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        try:
            conn.execute(
                sql.SQL(
                    "CREATE DATABASE {} ENCODING 'LATIN1' LC_COLLATE 'C' LC_CTYPE 'C' "
                    "TEMPLATE template0"
                ).format(sql.Identifier(name))
            )
        except psycopg.errors.InsufficientPrivilege:
            pytest.skip("the test role may not create databases")
        try:
            url = urllib.parse.urlsplit(postgres_url)._replace(path=f"/{name}").geturl()
            with pytest.raises(ConfigError, match="UTF8"):
                open_storage(url)
        finally:
            conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))


# ==================================================================== storage details


def test_large_blobs_are_stored_in_chunks(postgres_store_url: str) -> None:
    noise = os.urandom(2 * CHUNK_BYTES + 12345)  # incompressible: stored as is
    entities = [("noise", noise), *((f"small-{i}", i) for i in range(2000))]
    with _open(postgres_store_url) as storage:
        storage.init_storage("run")
        storage.save_savepoint("run", 1, entities)
        assert storage.get_latest_savepoint("run") == (1, entities)
        with _admin(storage) as conn:
            rows = conn.execute(
                Tables(storage.schema).sql(
                    "SELECT name, chunk, length(data) FROM {blobs} ORDER BY name, chunk"
                )
            ).fetchall()
    # Every state of the savepoint in one pack, the pack in three rows (and its table in one).
    chunks: dict[str, list[tuple[int, int]]] = {}
    for name, chunk, length in rows:
        chunks.setdefault(name, []).append((chunk, length))
    assert sorted(len(parts) for parts in chunks.values()) == [1, 3]
    (pack,) = [parts for parts in chunks.values() if len(parts) == 3]
    assert [chunk for chunk, _ in pack] == [0, 1, 2]
    assert [length for _, length in pack][:2] == [CHUNK_BYTES, CHUNK_BYTES]


def test_pruning_and_replacing_leave_no_orphan_blobs(postgres_store_url: str) -> None:
    states = [(f"e{i}", {"i": i, "pad": "x" * 200}) for i in range(30)]
    with _open(postgres_store_url) as storage:
        storage.init_storage("run")
        for ts in range(1, 8):
            storage.save_savepoint("run", ts, [*states[:-1], ("e29", ts)])
            storage.save_savepoint("run", ts, [*states[:-2], ("e28", ts), ("e29", ts)])
            storage.delete_old_savepoints("run", 2)
            assert _orphans(storage, "run") == []
        storage.delete_run("run")
        with _admin(storage) as conn:
            t = Tables(storage.schema)
            for table in ("savepoints", "blobs"):
                count = conn.execute(t.sql(f"SELECT count(*) FROM {{{table}}}")).fetchone()
                assert count == (0,), table


def test_writer_tokens_never_repeat_across_a_recreated_run(postgres_store_url: str) -> None:
    with _open(postgres_store_url) as storage:
        storage.init_storage("run")
        old = storage.acquire_writer("run")
        storage.delete_run("run")
        storage.init_storage("run")
        new = storage.acquire_writer("run")
        assert new > old
        with pytest.raises(StaleWriterError):
            storage.save_savepoint("run", 1, [("a", "stale")], writer_token=old)
        storage.save_savepoint("run", 1, [("a", "current")], writer_token=new)


def test_commits_are_durable_whatever_the_session_default(postgres_store_url: str) -> None:
    url = with_query(postgres_store_url, options="-c synchronous_commit=off")
    with _open(url) as storage:
        with storage._pool.connection() as conn:
            assert conn.execute("SHOW synchronous_commit").fetchone() == ("on",)
        storage.init_storage("run")  # and the store works


def test_compact_keeps_the_data(postgres_store_url: str) -> None:
    with _open(postgres_store_url) as storage:
        storage.init_storage("run")
        for ts in range(5):
            storage.save_savepoint("run", ts, [("a", "x" * 10_000 * ts)])
        storage.delete_old_savepoints("run", 1)
        storage.compact()
        assert storage.get_latest_savepoint("run") == (4, [("a", "x" * 40_000)])


# ==================================================================== processes


def test_processes_save_different_runs_at_once(postgres_store_url: str) -> None:
    children = [_save_worker(postgres_store_url, f"own-{i}", (1, 1, 15, 3)) for i in range(3)]
    for child in children:
        assert _finish(child).splitlines() == [f"ACK {ts}" for ts in range(1, 16)]
    with _open(postgres_store_url) as storage:
        for i in range(3):
            _assert_whole(storage, f"own-{i}", 15)
            assert len(storage.list_savepoints(f"own-{i}")) == 3
            assert _orphans(storage, f"own-{i}") == []


def test_two_processes_save_one_run_at_once(postgres_store_url: str) -> None:
    # Both save the same timestamps (each replacing the other's savepoints) and prune,
    # so commits, replacements and prunes of one run keep queueing on its lock.
    children = [_save_worker(postgres_store_url, "shared", (1, 1, 60, 3)) for _ in range(2)]
    for child in children:
        assert _finish(child).splitlines() == [f"ACK {ts}" for ts in range(1, 61)]
    with _open(postgres_store_url) as storage:
        _assert_whole(storage, "shared", 60)
        assert _orphans(storage, "shared") == []


# ==================================================================== lost connections


def _kill_idle(admin_url: str, application_name: str) -> int:
    """Terminate every backend of ``application_name`` and wait until they are gone."""
    query = "SELECT pid FROM pg_stat_activity WHERE application_name = %s"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        pids = [pid for (pid,) in conn.execute(query, [application_name]).fetchall()]
        for pid in pids:
            conn.execute("SELECT pg_terminate_backend(%s)", [pid])
        for _ in range(1000):
            if not conn.execute(query, [application_name]).fetchall():
                break
            time.sleep(0.01)
    return len(pids)


def _app_url(url: str) -> tuple[str, str]:
    name = f"statestore-test-{uuid.uuid4().hex[:12]}"
    return with_query(url, application_name=name), name


def test_a_terminated_idle_connection_is_replaced(
    postgres_url: str, postgres_store_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    url, app = _app_url(with_query(postgres_store_url, pool_min_size="3"))
    with _open(url) as storage:
        storage.init_storage("run")
        storage.save_savepoint("run", 1, [("a", 1)])
        assert _kill_idle(postgres_url, app) >= 1
        assert storage.get_latest_savepoint("run") == (1, [("a", 1)])  # a read
        assert _kill_idle(postgres_url, app) >= 1
        storage.save_savepoint("run", 2, [("a", 2)])  # a write
        assert storage.get_latest_savepoint("run") == (2, [("a", 2)])
    assert "retrying once" in caplog.text


@pytest.mark.parametrize("table", ["blobs", "savepoints"])
def test_a_save_cut_before_commit_is_retried_once(
    postgres_url: str, postgres_store_url: str, table: str
) -> None:
    url, app = _app_url(postgres_store_url)
    big = os.urandom(3 << 20)
    with _open(url) as storage:
        storage.init_storage("run")
        storage.save_savepoint("run", 1, [("a", 1)])
        _stall(storage, table, deferred=False, once=True)
        with _killer(postgres_url, app) as killed:
            storage.save_savepoint("run", 2, [("big", big), ("a", 2)])
        assert len(killed) == 1
        assert storage.get_latest_savepoint("run") == (2, [("big", big), ("a", 2)])
        assert _orphans(storage, "run") == []


@pytest.mark.parametrize(("table", "deferred"), [("blobs", False), ("savepoints", True)])
def test_a_save_cut_every_time_stores_nothing(
    postgres_url: str, postgres_store_url: str, table: str, deferred: bool
) -> None:
    url, app = _app_url(postgres_store_url)
    big = os.urandom(3 << 20)
    with _open(url) as storage:
        storage.init_storage("run")
        storage.save_savepoint("run", 1, [("a", 1)])
        _stall(storage, table, deferred=deferred, once=False)
        with _killer(postgres_url, app) as killed, pytest.raises(BackendError) as caught:
            storage.save_savepoint("run", 2, [("big", big), ("a", 2)])
        assert "run 'run'" in str(caught.value)
        # Cut inside COMMIT (deferred), the outcome is unknown: said so, never retried.
        assert len(killed) == (1 if deferred else 2)
        if deferred:
            assert "may or may not have taken effect" in str(caught.value)
        assert [row.timestamp for row in storage.list_savepoints("run")] == [1]
        assert storage.get_latest_savepoint("run") == (1, [("a", 1)])
        assert _orphans(storage, "run") == []
        _unstall(storage, table)
        storage.save_savepoint("run", 2, [("big", big), ("a", 2)])
        assert storage.get_latest_savepoint("run") == (2, [("big", big), ("a", 2)])


def test_a_repeatable_write_cut_inside_commit_is_retried(
    postgres_url: str, postgres_store_url: str
) -> None:
    url, app = _app_url(postgres_store_url)
    with _open(url) as storage:
        storage.init_storage("first")
        _stall(storage, "runs", deferred=True, once=True)
        with _killer(postgres_url, app) as killed:
            storage.init_storage("second")
        assert len(killed) == 1
        assert storage.list_runs() == ["first", "second"]


def _backends(admin_url: str, application_name: str) -> set[int]:
    with psycopg.connect(admin_url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE application_name = %s", [application_name]
        ).fetchall()
    return {pid for (pid,) in rows}


def _save_in_child(storage: Storage) -> None:
    storage.save_savepoint("run", 2, [("who", "child")])
    storage.close()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
def test_a_forked_child_leaves_the_parents_sessions_alone(
    postgres_url: str, postgres_store_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    url, app = _app_url(postgres_store_url)
    with _open(url) as storage:
        storage.init_storage("run")
        storage.save_savepoint("run", 1, [("who", "parent")])
        parents = _backends(postgres_url, app)
        child = multiprocessing.get_context("fork").Process(target=_save_in_child, args=(storage,))
        child.start()
        child.join(timeout=60)
        assert child.exitcode == 0
        assert parents <= _backends(postgres_url, app)  # the child ended none of them
        storage.save_savepoint("run", 3, [("who", "parent again")])
        assert storage.get_savepoint("run", 2) == (2, [("who", "child")])
    assert "retrying once" not in caplog.text  # the parent never lost a connection


def test_an_exhausted_pool_says_so(postgres_url: str, postgres_store_url: str) -> None:
    url, app = _app_url(with_query(postgres_store_url, pool_max_size="1", pool_timeout="0.3"))
    with _open(url) as storage:
        storage.init_storage("run")
        _stall(storage, "blobs", deferred=False, once=True)
        saver = threading.Thread(target=storage.save_savepoint, args=("run", 1, [("a", 1)]))
        saver.start()  # holds the only connection, asleep in the server
        _wait_for_stall(postgres_url, app)
        with pytest.raises(BackendError, match="all 1 are in use"):
            storage.list_runs()
        with _killer(postgres_url, app):  # cut the sleeping save: it is retried, and done
            saver.join(timeout=60)
        assert storage.get_latest_savepoint("run") == (1, [("a", 1)])


def test_the_server_restarted_under_an_open_storage(private_postgres: PostgresServer) -> None:
    url = with_query(private_postgres.url(), schema="restart", pool_min_size="3")
    with _open(url) as storage:
        storage.init_storage("run")
        storage.save_savepoint("run", 1, [("a", 1)])
        private_postgres.restart()
        assert storage.get_latest_savepoint("run") == (1, [("a", 1)])
        private_postgres.restart()
        storage.save_savepoint("run", 2, [("a", 2)])
        assert [row.timestamp for row in storage.list_savepoints("run")] == [1, 2]


def test_a_server_down_is_a_backend_error_until_it_is_back(
    private_postgres: PostgresServer,
) -> None:
    url = with_query(private_postgres.url(), schema="down", pool_timeout="0.3")
    with _open(url) as storage:
        storage.init_storage("run")
        storage.save_savepoint("run", 1, [("a", 1)])
        private_postgres.stop_server()
        s = storage
        calls: dict[str, Callable[[], object]] = {
            "get_latest_savepoint": lambda: s.get_latest_savepoint("run"),
            "get_latest_savepoint_timestamp": lambda: s.get_latest_savepoint_timestamp("run"),
            "get_savepoint": lambda: s.get_savepoint("run", 1),
            "save_savepoint": lambda: s.save_savepoint("run", 2, [("a", 2)]),
            "list_savepoints": lambda: s.list_savepoints("run"),
            "list_runs": s.list_runs,
            "is_initialized": lambda: s.is_initialized("run"),
            "init_storage": lambda: s.init_storage("run"),
            "acquire_writer": lambda: s.acquire_writer("run"),
            "delete_old_savepoints": lambda: s.delete_old_savepoints("run", 0),
            "delete_run": lambda: s.delete_run("run"),
            "compact": s.compact,
        }
        for label, call in calls.items():  # no raw psycopg error escapes any of them
            with pytest.raises(BackendError, match="Connection refused") as caught:
                call()
            if label not in ("compact", "list_runs"):
                assert "run 'run'" in str(caught.value), label
        private_postgres.start_again()
        assert storage.get_latest_savepoint("run") == (1, [("a", 1)])
        storage.save_savepoint("run", 2, [("a", 2)])


@pytest.mark.slow
def test_a_backend_killed_mid_save_crashes_nothing(private_postgres: PostgresServer) -> None:
    # SIGKILL of a backend makes PostgreSQL reset every connection and run crash
    # recovery: the nearest thing to a power loss of the server while a save is in flight.
    url, app = _app_url(with_query(private_postgres.url(), schema="crash"))
    big = os.urandom(3 << 20)
    with _open(url) as storage:
        storage.init_storage("run")
        storage.save_savepoint("run", 1, [("a", 1)])
        _stall(storage, "savepoints", deferred=True, once=False)  # killed inside COMMIT
        outcome: list[BaseException | None] = []

        def save() -> None:
            try:
                storage.save_savepoint("run", 2, [("big", big), ("a", 2)])
                outcome.append(None)
            except BaseException as exc:
                outcome.append(exc)

        saver = threading.Thread(target=save)
        saver.start()
        os.kill(_wait_for_stall(private_postgres.url(), app), signal.SIGKILL)
        saver.join(timeout=60)
        assert len(outcome) == 1, "the save did not return"
        assert isinstance(outcome[0], BackendError), repr(outcome[0])
        assert "may or may not have taken effect" in str(outcome[0])
        # The server's reset may start only after a first read succeeded on a surviving
        # connection, so every check is retried until a whole round runs without a
        # connection error.
        deadline = time.monotonic() + 30
        while True:
            try:
                latest = storage.get_latest_savepoint("run")
                listed = [row.timestamp for row in storage.list_savepoints("run")]
                orphans = _orphans(storage, "run")
                break
            except (BackendError, psycopg.OperationalError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        assert latest == (1, [("a", 1)])
        assert listed == [1]
        assert orphans == []


# ==================================================================== secrets


SECRET = "Pa:ss@w/rd%41&?#-" + uuid.uuid4().hex


def _assert_secret_free(text: str) -> None:
    for form in (SECRET, urllib.parse.quote(SECRET, safe=""), urllib.parse.quote(SECRET)):
        assert form not in text


def test_the_password_never_shows(
    private_postgres: PostgresServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    role = "secretive"
    with psycopg.connect(private_postgres.url(), autocommit=True) as conn:
        conn.execute(
            sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
                sql.Identifier(role), sql.Literal(SECRET)
            )
        )
        conn.execute(
            sql.SQL("GRANT CREATE ON DATABASE postgres TO {}").format(sql.Identifier(role))
        )
    url = private_postgres.url(user=role, password=urllib.parse.quote(SECRET, safe=""))
    texts: list[str] = []

    def failure(call: Callable[[], object], error: type[Exception]) -> None:
        with pytest.raises(error) as caught:
            call()
        texts.append(str(caught.value))
        texts.append("".join(traceback.format_exception(caught.value)))

    wrong = private_postgres.url(user=role, password=urllib.parse.quote(SECRET + "x", safe=""))
    failure(lambda: open_storage(wrong), BackendError)
    failure(lambda: open_storage(url + "?bogus_parameter=1"), ConfigError)
    failure(lambda: open_storage(url + "?pool_max_size=lots"), ConfigError)
    conninfo = f"host=127.0.0.1 port=1 user={role} password='{SECRET}' connect_timeout=2"
    failure(lambda: PostgresStorage(conninfo), BackendError)
    with _open(with_query(url, pool_timeout="1")) as storage:
        storage.init_storage("run")
        storage.save_savepoint("run", 1, [("a", 1)])
        texts += [repr(storage), str(storage._settings), storage._settings.target]
        private_postgres.stop_server()
        failure(lambda: storage.get_latest_savepoint("run"), BackendError)
        failure(lambda: storage.save_savepoint("run", 2, [("a", 2)]), BackendError)
        private_postgres.start_again()
        assert storage.get_latest_savepoint("run") == (1, [("a", 1)])
    assert "password authentication failed" in texts[0]  # the reason, without the secret
    texts += [record.getMessage() for record in caplog.records]
    for text in texts:
        _assert_secret_free(text)
