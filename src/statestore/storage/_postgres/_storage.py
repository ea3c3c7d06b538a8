"""PostgresStorage: the storage primitives as SQL over a psycopg connection pool.

How each primitive keeps the contract:

* ``_commit`` is one transaction: lock the run row (``SELECT ... FOR UPDATE``; a run
  that is gone is not initialized), check the writer token, check that the older blobs
  an incremental savepoint refers to still exist, insert the new blobs in bulk
  (``executemany``, pipelined by psycopg), upsert the savepoint row, and free the blobs
  of a replaced savepoint that nothing refers to any more. ``_delete_savepoints`` and
  ``_drop_run`` lock the same row, so the three never interleave on one run, across
  processes and hosts; readers are never blocked (MVCC).
* A savepoint is read by one statement returning its manifest and every chunk of the
  blobs it refers to: one snapshot, so a prune committed meanwhile by another process
  cannot make a savepoint that was whole look damaged.
* Durable once ``COMMIT`` returns: connections that inherit ``synchronous_commit =
  off`` are set back to ``on``.

**Lost connections.** A connection found broken (server restarted, backend terminated,
network cut) is replaced and the operation run again, once, when that cannot do harm:
always for reads; for writes only when the break came before ``COMMIT`` was sent, since
the server rolls back a transaction whose client vanished. A break *during* ``COMMIT``
leaves the outcome unknown: the server may have committed. Writes whose repetition
could undo another process's work (a savepoint commit, a prune, a run drop) are then
not retried; the caller gets a :class:`~statestore.errors.BackendError` saying the
outcome is unknown (saving the same savepoint again is safe: it replaces it).
Creating a run and taking a writer token are repeated (the second run creation finds
the run; a second token only grows the token further).
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

import psycopg
import psycopg_pool

from ...codecs import Codec
from ...errors import BackendError, ConfigError
from .._base import (
    Capabilities,
    MissingBlobsError,
    SavepointInfo,
    SavepointParts,
    Storage,
    WriterToken,
)
from ..layout import SavepointRecord
from . import _options
from ._schema import CHUNK_BYTES, Tables, ensure_schema

__all__ = ["PostgresStorage"]

logger = logging.getLogger("statestore.postgres")

#: Seconds psycopg_pool keeps retrying (with back-off) to refill a slot before giving it
#: up; a later request then connects at once. Its default of 5 minutes would let the
#: back-off delay reach minutes and keep a recovered server waiting that long.
RECONNECT_TIMEOUT = 5.0

T = TypeVar("T")
Connection = psycopg.Connection[Any]

_READ_LATEST = """
    WITH sp AS (
        SELECT s.run_key, s.ts, s.manifest, s.refs
        FROM {savepoints} s JOIN {runs} r ON r.run_key = s.run_key
        WHERE r.run_id = %(run_id)s
        ORDER BY s.ts DESC LIMIT 1
    )
    SELECT sp.ts, sp.manifest, NULL::text, NULL::integer, NULL::bytea FROM sp
    UNION ALL
    SELECT NULL::bigint, NULL::bytea, b.name, b.chunk, b.data
    FROM sp JOIN {blobs} b ON b.run_key = sp.run_key AND b.name = ANY (sp.refs)
"""
_READ_AT = _READ_LATEST.replace(
    "WHERE r.run_id = %(run_id)s", "WHERE r.run_id = %(run_id)s AND s.ts = %(ts)s"
)
# The same without the blobs: the savepoint row alone (to describe a savepoint).
_MANIFEST_LATEST, _MANIFEST_AT = (query.split("UNION ALL")[0] for query in (_READ_LATEST, _READ_AT))


class _Queries:
    """Every statement of the backend, with the store's schema-qualified table names."""

    def __init__(self, tables: Tables) -> None:
        q = tables.sql
        self.create_run = q("INSERT INTO {runs} (run_id) VALUES (%s) ON CONFLICT DO NOTHING")
        self.run_exists = q("SELECT EXISTS (SELECT 1 FROM {runs} WHERE run_id = %s)")
        self.list_runs = q("SELECT run_id FROM {runs}")
        self.drop_run = q("DELETE FROM {runs} WHERE run_id = %s")
        # The time is the server's: one clock for every host that writes the store.
        self.take_token = q(
            """WITH taken AS (
                UPDATE {runs} SET writer_token = nextval(%s::regclass)
                WHERE run_id = %s RETURNING run_key, writer_token
            )
            INSERT INTO {writer_taken} (run_key, token, taken_at)
            SELECT run_key, writer_token, statement_timestamp() FROM taken
            ON CONFLICT (run_key) DO UPDATE SET token = EXCLUDED.token, taken_at = EXCLUDED.taken_at
            RETURNING token"""
        )
        # An edited time of 'infinity' reads as not recorded, not as an error.
        self.read_token = q(
            """SELECT r.writer_token, CASE WHEN isfinite(t.taken_at)
                THEN floor(extract(epoch FROM t.taken_at) * 1000)::bigint END
            FROM {runs} r LEFT JOIN {writer_taken} t
                ON t.run_key = r.run_key AND t.token = r.writer_token
            WHERE r.run_id = %s"""
        )
        # Commits, prunes and drops of one run queue up on this lock.
        self.lock_run = q("SELECT run_key, writer_token FROM {runs} WHERE run_id = %s FOR UPDATE")
        self.savepoint_refs = q("SELECT refs FROM {savepoints} WHERE run_key = %s AND ts = %s")
        self.stored_blobs = q(
            "SELECT name FROM {blobs} WHERE run_key = %s AND chunk = 0 AND name = ANY (%s::text[])"
        )
        self.insert_chunk = q(
            "INSERT INTO {blobs} (run_key, name, chunk, data) VALUES (%s, %s, %s, %b)"
        )
        self.upsert_savepoint = q(
            """INSERT INTO {savepoints} (run_key, ts, manifest, refs, entity_count, size)
            VALUES (%s, %s, %b, %s::text[], %s, %s)
            ON CONFLICT (run_key, ts) DO UPDATE SET
                manifest = EXCLUDED.manifest, refs = EXCLUDED.refs,
                entity_count = EXCLUDED.entity_count, size = EXCLUDED.size, saved_at = now()"""
        )
        self.delete_savepoints = q(
            "DELETE FROM {savepoints} WHERE run_key = %s AND ts = ANY (%s::bigint[]) RETURNING refs"
        )
        # Of the named blobs, free those no remaining savepoint of the run refers to.
        self.collect = q(
            """DELETE FROM {blobs} b
            WHERE b.run_key = %(run_key)s AND b.name = ANY (%(names)s::text[])
            AND NOT EXISTS (
                SELECT 1 FROM {savepoints} s
                WHERE s.run_key = %(run_key)s AND b.name = ANY (s.refs)
            )"""
        )
        self.index = q(
            """SELECT s.ts, s.entity_count, s.size
            FROM {savepoints} s JOIN {runs} r ON r.run_key = s.run_key
            WHERE r.run_id = %s ORDER BY s.ts"""
        )
        self.read_latest = q(_READ_LATEST)
        self.read_at = q(_READ_AT)
        self.read_latest_manifest = q(_MANIFEST_LATEST)
        self.read_manifest_at = q(_MANIFEST_AT)
        self.vacuum = [
            q(f"VACUUM (ANALYZE) {{{name}}}") for name in ("runs", "savepoints", "blobs")
        ]


def _assemble(chunks: dict[str, dict[int, bytes]]) -> dict[str, bytes]:
    """Join each blob's chunks; a blob missing a chunk is left out (reads as missing)."""
    blobs: dict[str, bytes] = {}
    for name, parts in chunks.items():
        if all(i in parts for i in range(len(parts))):
            blobs[name] = b"".join(parts[i] for i in range(len(parts)))
    return blobs


def _chunk_rows(run_key: int, blobs: dict[str, bytes]) -> list[tuple[int, str, int, Any]]:
    rows: list[tuple[int, str, int, Any]] = []
    for name, blob in blobs.items():
        view = memoryview(blob)
        for chunk, start in enumerate(range(0, max(len(view), 1), CHUNK_BYTES)):
            rows.append((run_key, name, chunk, view[start : start + CHUNK_BYTES]))
    return rows


class _CommitOutcomeUnknownError(Exception):
    """The connection broke while COMMIT was in flight."""


class PostgresStorage(Storage):
    """Savepoints in PostgreSQL, for many processes and hosts sharing one store.

    ``conninfo`` is a libpq URL or ``key=value`` string. ``schema`` holds the tables
    (created on first use); the pool keeps ``pool_min_size`` to ``pool_max_size``
    connections and waits at most ``pool_timeout`` seconds for one. Open it by URL with
    :func:`statestore.open_storage` or :meth:`from_url`.
    """

    capabilities = Capabilities(durable=True, multi_process=True, multi_host=True)
    driver_errors = (psycopg.Error, OSError)

    def __init__(
        self,
        conninfo: str,
        *,
        codec: Codec | None = None,
        schema: str = _options.DEFAULT_SCHEMA,
        pool_min_size: int = _options.DEFAULT_POOL_MIN_SIZE,
        pool_max_size: int = _options.DEFAULT_POOL_MAX_SIZE,
        pool_timeout: float = _options.DEFAULT_POOL_TIMEOUT,
        connect_timeout: int | None = None,
    ) -> None:
        super().__init__(codec)
        self._settings = _options.settings(
            conninfo,
            schema=schema,
            pool_min_size=pool_min_size,
            pool_max_size=pool_max_size,
            pool_timeout=pool_timeout,
            connect_timeout=connect_timeout,
        )
        self._tables = Tables(self._settings.schema)
        self._queries = _Queries(self._tables)
        self._in_use = 0  # pooled connections this storage holds right now
        self._in_use_lock = threading.Lock()
        with self._boundary():
            # A connection of its own first: an unreachable server or a wrong password
            # is reported with libpq's reason, not as a pool timeout.
            with psycopg.connect(self._settings.conninfo, autocommit=True) as conn:
                self._check_encoding(conn)
                ensure_schema(conn, self._tables)
            self._pool = self._new_pool()
        self._pid = os.getpid()
        self._pool_lock = threading.Lock()

    def _new_pool(self) -> psycopg_pool.ConnectionPool[Connection]:
        return psycopg_pool.ConnectionPool(
            self._settings.conninfo,
            min_size=self._settings.pool_min_size,
            max_size=self._settings.pool_max_size,
            timeout=self._settings.pool_timeout,
            kwargs={"autocommit": True},
            configure=self._configure,
            reconnect_timeout=RECONNECT_TIMEOUT,
            name=f"statestore {self._settings.target} schema={self.schema}",
            open=True,
        )

    def _own_pool(self) -> psycopg_pool.ConnectionPool[Connection]:
        """This process's pool: a forked child gets a new one, never the parent's sessions.

        The inherited pool is dropped, not closed: closing would end the parent's
        sessions on the server (psycopg does not end a connection created by another
        process when the object is merely finalized).
        """
        if self._pid != os.getpid():
            with self._pool_lock:
                if self._pid != os.getpid():
                    self._pool = self._new_pool()
                    self._in_use = 0
                    self._pid = os.getpid()
        return self._pool

    @classmethod
    def from_url(cls, url: str, codec: Codec | None = None, **options: Any) -> PostgresStorage:
        """``postgresql://user:password@host:port/dbname?schema=name&pool_max_size=8``.

        Options (in the query or as keywords, keywords winning): ``schema``,
        ``pool_min_size``, ``pool_max_size``, ``pool_timeout`` (seconds),
        ``connect_timeout`` (seconds); any other query parameter goes to libpq.
        """
        conninfo, ours = _options.split_url(url, options)
        return cls(conninfo, codec=codec, **ours)

    @property
    def schema(self) -> str:
        """The PostgreSQL schema holding this store's tables."""
        return self._settings.schema

    def __repr__(self) -> str:
        return f"PostgresStorage({self._settings.target!r}, schema={self.schema!r})"

    # ---------------------------------------------------------------- connections

    @staticmethod
    def _check_encoding(conn: Connection) -> None:
        row = conn.execute("SHOW server_encoding").fetchone()
        encoding = row[0] if row else None
        if encoding != "UTF8":
            raise ConfigError(
                f"the PostgreSQL database uses encoding {encoding!r}; statestore needs a "
                "UTF8 database (run ids are Unicode text)"
            )

    @staticmethod
    def _configure(conn: Connection) -> None:
        """Run on each new pooled connection: commits durable, whatever the defaults."""
        row = conn.execute("SHOW synchronous_commit").fetchone()
        if row is not None and row[0] == "off":
            conn.execute("SET synchronous_commit = on")

    @contextlib.contextmanager
    def _connection(self) -> Iterator[Connection]:
        """A pooled connection or, while the pool is still reconnecting, one of its own.

        After an outage psycopg_pool reconnects with back-off, so its slots may stay
        empty for a while after the server is back. When no pooled connection comes
        within ``pool_timeout`` although this storage is not using them all (so the
        pool is not merely busy), a direct connection serves this one call: it works at
        once if the server is up, and fails with libpq's reason (refused, unknown host,
        bad password) instead of a bare timeout if not.
        """
        pool = self._own_pool()
        try:
            conn = pool.getconn()
        except psycopg_pool.PoolTimeout:
            with self._in_use_lock:
                if self._in_use >= self._settings.pool_max_size:
                    raise
            with psycopg.connect(self._settings.conninfo, autocommit=True) as direct:
                self._configure(direct)
                yield direct
            return
        with self._in_use_lock:
            self._in_use += 1
        try:
            with conn:  # rolls back on error; a pooled connection is not closed
                yield conn
        finally:
            with self._in_use_lock:
                self._in_use -= 1
            pool.putconn(conn)

    def _read(self, work: Callable[[Connection], T]) -> T:
        """Run read-only ``work`` (retried once on a new connection if the connection broke)."""
        return self._attempt(work, transaction=False, repeatable=True)

    def _write(
        self,
        work: Callable[[Connection], T],
        *,
        what: str,
        repeatable: bool = False,
    ) -> T:
        """Run ``work`` in one transaction; see the module docstring on lost connections.

        ``what`` names the change for the error saying its outcome is unknown;
        ``repeatable`` says running ``work`` twice is harmless, so it is retried even
        when the connection broke during COMMIT.
        """
        try:
            return self._attempt(work, transaction=True, repeatable=repeatable)
        except _CommitOutcomeUnknownError:
            raise BackendError(
                f"{what}: the connection to PostgreSQL at {self._settings.target} was lost "
                "while committing; the change may or may not have taken effect"
            ) from None

    def _attempt(
        self, work: Callable[[Connection], T], *, transaction: bool, repeatable: bool
    ) -> T:
        for attempt in (1, 2):
            used: Connection | None = None
            committing = False
            try:
                with self._connection() as conn:
                    used = conn
                    if not transaction:
                        return work(conn)
                    with conn.transaction():
                        result = work(conn)
                        committing = True  # leaving the block sends COMMIT
                    return result
            except psycopg.OperationalError:
                # No connection at all, or an error the server reported on a healthy
                # connection: nothing to gain from trying again.
                if used is None or not used.broken or attempt == 2:
                    raise
                if committing and not repeatable:
                    raise _CommitOutcomeUnknownError from None
            logger.warning(
                "connection to PostgreSQL at %s lost; retrying once on a new connection",
                self._settings.target,
            )
            self._own_pool().check()  # drop every other dead connection (after a restart)
        raise AssertionError("unreachable")

    def _describe_failure(self, exc: BaseException) -> str:
        if isinstance(exc, psycopg_pool.PoolTimeout):  # see _connection: only when all busy
            why = (
                f"no pooled connection came free within {self._settings.pool_timeout:g} s: "
                f"all {self._settings.pool_max_size} are in use (raise pool_max_size or "
                "pool_timeout)"
            )
        else:
            why = f"{type(exc).__name__}: {' '.join(str(exc).split())}"
        return _options.scrub(
            f"PostgreSQL at {self._settings.target} failed: {why}", self._settings.secrets
        )

    def _close(self) -> None:
        if self._pid == os.getpid():  # a forked child never closes the parent's sessions
            self._pool.close()

    # ---------------------------------------------------------------- primitives

    def _create_run(self, run_id: str) -> None:
        self._write(
            lambda conn: conn.execute(self._queries.create_run, [run_id]),
            what=f"run {run_id!r}: creating the run",
            repeatable=True,
        )

    def _run_exists(self, run_id: str) -> bool:
        row = self._read(lambda conn: conn.execute(self._queries.run_exists, [run_id]).fetchone())
        return bool(row and row[0])

    def _list_run_ids(self) -> list[str]:
        rows = self._read(lambda conn: conn.execute(self._queries.list_runs).fetchall())
        return [row[0] for row in rows]

    def _drop_run(self, run_id: str) -> None:
        # ON DELETE CASCADE takes the savepoints and blobs along, in this one transaction.
        self._write(
            lambda conn: conn.execute(self._queries.drop_run, [run_id]),
            what=f"run {run_id!r}: deleting the run",
        )

    def _take_writer_token(self, run_id: str) -> int:
        def take(conn: Connection) -> int | None:
            query = self._queries.take_token
            row = conn.execute(query, [self._tables.writer_tokens_name, run_id]).fetchone()
            return None if row is None else int(row[0])

        token = self._write(take, what=f"run {run_id!r}: taking the writer token", repeatable=True)
        if token is None:
            raise self._not_initialized(run_id)
        return token

    def _read_writer_token(self, run_id: str) -> WriterToken | None:
        row = self._read(lambda conn: conn.execute(self._queries.read_token, [run_id]).fetchone())
        if row is None or not row[0]:
            return None
        return WriterToken(int(row[0]), None if row[1] is None else int(row[1]))

    def _commit(self, run_id: str, record: SavepointRecord, writer_token: int | None) -> None:
        q = self._queries

        def commit(conn: Connection) -> None:
            row = conn.execute(q.lock_run, [run_id]).fetchone()
            if row is None:
                raise self._not_initialized(run_id)
            run_key, token = row
            if writer_token is not None and writer_token != token:
                raise self._stale(run_id, writer_token, token)
            # Read only now, in a statement of its own: a statement that waited for the
            # lock sees the rows of other relations as they were before the wait.
            replaced = conn.execute(q.savepoint_refs, [run_key, record.timestamp]).fetchone()
            replaced_refs = replaced[0] if replaced is not None else ()
            older = [name for name in record.refs if name not in record.blobs]
            if older:
                stored = conn.execute(q.stored_blobs, [run_key, older]).fetchall()
                if len(stored) != len(set(older)):
                    raise MissingBlobsError(run_id)
            with conn.cursor() as cursor:
                cursor.executemany(q.insert_chunk, _chunk_rows(run_key, dict(record.blobs)))
            conn.execute(
                q.upsert_savepoint,
                [
                    run_key,
                    record.timestamp,
                    record.manifest,
                    list(record.refs),
                    record.entity_count,
                    record.size,
                ],
            )
            freed = set(replaced_refs) - set(record.refs)
            if freed:
                conn.execute(q.collect, {"run_key": run_key, "names": sorted(freed)})

        self._write(commit, what=f"run {run_id!r}: savepoint {record.timestamp}")

    def _read_savepoint(
        self, run_id: str, timestamp: int | None, *, with_blobs: bool
    ) -> SavepointParts | None:
        # One statement reads the savepoint row and the blobs it refers to: a snapshot.
        q = self._queries
        if with_blobs:
            query = q.read_latest if timestamp is None else q.read_at
        else:
            query = q.read_latest_manifest if timestamp is None else q.read_manifest_at
        params: dict[str, Any] = {"run_id": run_id, "ts": timestamp}
        rows = self._read(lambda conn: conn.execute(query, params, binary=True).fetchall())
        found: tuple[int, bytes] | None = None
        chunks: dict[str, dict[int, bytes]] = {}
        for ts, manifest, name, chunk, data in rows:
            if ts is not None:
                found = (int(ts), bytes(manifest))
            else:
                chunks.setdefault(name, {})[chunk] = data
        if found is None:
            return None
        return SavepointParts(found[0], found[1], _assemble(chunks))

    def _list_savepoints(self, run_id: str) -> list[SavepointInfo]:
        rows = self._read(lambda conn: conn.execute(self._queries.index, [run_id]).fetchall())
        return [SavepointInfo(int(ts), int(count), int(size)) for ts, count, size in rows]

    def _delete_savepoints(self, run_id: str, timestamps: Sequence[int]) -> None:
        q = self._queries

        def delete(conn: Connection) -> None:
            row = conn.execute(q.lock_run, [run_id]).fetchone()
            if row is None:
                return
            run_key = row[0]
            deleted = conn.execute(q.delete_savepoints, [run_key, list(timestamps)]).fetchall()
            names = sorted({name for (refs,) in deleted for name in refs})
            if names:
                conn.execute(q.collect, {"run_key": run_key, "names": names})

        self._write(delete, what=f"run {run_id!r}: deleting {len(timestamps)} savepoints")

    def _compact(self) -> None:
        def vacuum(conn: Connection) -> None:
            for statement in self._queries.vacuum:
                conn.execute(statement)

        # VACUUM cannot run inside a transaction; repeating it is harmless.
        self._attempt(vacuum, transaction=False, repeatable=True)
