"""The tables of the PostgreSQL backend, created and upgraded by numbered migrations.

Everything lives in one schema (``?schema=``, default ``statestore``), so several
applications share a database without seeing each other's runs; every table name also
starts with ``statestore_``, so even ``?schema=public`` collides with nothing::

    statestore_migrations    version, description, applied_at: one row per migration applied
    statestore_runs          run_key (identity), run_id (unique), writer_token
    statestore_savepoints    (run_key, ts) -> manifest, refs (blob names), entity_count, size
    statestore_blobs         (run_key, name, chunk) -> data: a blob in chunks of CHUNK_BYTES
    statestore_writer_tokens a sequence: writer tokens never repeat, even across a
                             deleted and re-created run
    statestore_writer_taken  run_key -> token, taken_at: when the run's token was taken

Rows of savepoints and blobs belong to their run by ``run_key`` (ON DELETE CASCADE), so
dropping a run is one DELETE, and a run re-created under the same id starts empty.

**Migrations.** :data:`MIGRATIONS` is append-only. The first process that opens a schema
below the latest version takes a transaction-level advisory lock for that schema and
applies the missing migrations and their rows in ``statestore_migrations`` in one
transaction; processes starting at the same moment wait on the lock, then find the work
done. So every statement of a migration must be able to run inside a transaction (no
``CREATE INDEX CONCURRENTLY``, no ``VACUUM``). A schema recorded at a version newer than
this code knows is refused with :class:`~statestore.errors.ConfigError` before anything
is read or written.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from typing import Any, LiteralString

import psycopg
from psycopg import sql

from ...errors import ConfigError

__all__ = ["CHUNK_BYTES", "LATEST_VERSION", "MIGRATIONS", "Tables", "ensure_schema"]

logger = logging.getLogger("statestore.postgres")

#: A blob is stored in rows of at most this many bytes: no row nears PostgreSQL's 1 GB
#: limit on one value, and no single value has to be held twice in server memory.
CHUNK_BYTES = 8 << 20

_NAMES = {
    "migrations": "statestore_migrations",
    "runs": "statestore_runs",
    "savepoints": "statestore_savepoints",
    "blobs": "statestore_blobs",
    "writer_tokens": "statestore_writer_tokens",
    "writer_taken": "statestore_writer_taken",
}


@dataclass(frozen=True)
class Migration:
    """One step of the schema; statements name tables as ``{runs}``, ``{blobs}``, ..."""

    version: int
    description: str
    statements: tuple[LiteralString, ...]


MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "runs, savepoints, blobs in chunks, writer token sequence",
        (
            """CREATE TABLE {runs} (
                run_key bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                run_id text COLLATE "C" NOT NULL UNIQUE,
                writer_token bigint NOT NULL DEFAULT 0,
                created_at timestamptz NOT NULL DEFAULT now()
            )""",
            """CREATE SEQUENCE {writer_tokens} AS bigint""",
            """CREATE TABLE {savepoints} (
                run_key bigint NOT NULL REFERENCES {runs} ON DELETE CASCADE,
                ts bigint NOT NULL CHECK (ts >= 0),
                manifest bytea NOT NULL,
                refs text[] NOT NULL,
                entity_count integer NOT NULL,
                size bigint NOT NULL,
                saved_at timestamptz NOT NULL DEFAULT now(),
                PRIMARY KEY (run_key, ts)
            )""",
            """CREATE TABLE {blobs} (
                run_key bigint NOT NULL REFERENCES {runs} ON DELETE CASCADE,
                name text COLLATE "C" NOT NULL,
                chunk integer NOT NULL CHECK (chunk >= 0),
                data bytea NOT NULL,
                PRIMARY KEY (run_key, name, chunk)
            )""",
        ),
    ),
    Migration(
        2,
        "when each run's writer token was taken",
        (
            # Kept with the token it belongs to: a process of an older statestore changes
            # only the runs row, and its token then reads as "time not recorded".
            """CREATE TABLE {writer_taken} (
                run_key bigint PRIMARY KEY REFERENCES {runs} ON DELETE CASCADE,
                token bigint NOT NULL,
                taken_at timestamptz NOT NULL
            )""",
        ),
    ),
    Migration(
        3,
        "lz4 for the stored bytes, where the server has it",
        (
            # PostgreSQL compresses a large bytea value itself (TOAST), with pglz by
            # default: a 1.9 MB pack of 10,000 small states took 27 ms to save, 18 ms
            # with lz4, at the same size on disk. Only new values are written with it;
            # a server without lz4 (built without it, or before 14) keeps pglz.
            """DO $$ BEGIN
                IF EXISTS (
                    SELECT 1 FROM pg_catalog.pg_settings
                    WHERE name = 'default_toast_compression' AND 'lz4' = ANY (enumvals)
                ) THEN
                    ALTER TABLE {blobs} ALTER COLUMN data SET COMPRESSION lz4;
                    ALTER TABLE {savepoints} ALTER COLUMN manifest SET COMPRESSION lz4;
                END IF;
            END $$""",
        ),
    ),
)

LATEST_VERSION = MIGRATIONS[-1].version


class Tables:
    """The schema-qualified names of one store, and SQL built from them."""

    def __init__(self, schema: str) -> None:
        self.schema = schema
        self._identifiers = {key: sql.Identifier(schema, name) for key, name in _NAMES.items()}
        # nextval() takes the sequence's name as text: quoted here, passed as a parameter.
        self.writer_tokens_name = sql.Identifier(schema, _NAMES["writer_tokens"]).as_string()

    def sql(self, template: LiteralString) -> sql.Composed:
        """``template`` with ``{runs}``, ``{blobs}``, ... replaced by quoted, qualified names."""
        return sql.SQL(template).format(**self._identifiers)


def _lock_key(schema: str) -> int:
    """A 64-bit advisory lock key of its own for each schema."""
    digest = hashlib.sha256(f"statestore migrations {schema}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def _recorded_version(conn: psycopg.Connection[Any], tables: Tables) -> int:
    """The highest migration recorded in the schema; 0 when there is none yet."""
    found = conn.execute(
        "SELECT 1 FROM pg_catalog.pg_tables WHERE schemaname = %s AND tablename = %s",
        [tables.schema, _NAMES["migrations"]],
    ).fetchone()
    if found is None:
        return 0
    row = conn.execute(tables.sql("SELECT max(version) FROM {migrations}")).fetchone()
    return int(row[0]) if row is not None and row[0] is not None else 0


def _refuse_newer(version: int, schema: str) -> None:
    if version > LATEST_VERSION:
        raise ConfigError(
            f"PostgreSQL schema {schema!r} was created by a newer statestore (schema version "
            f"{version}; this statestore knows versions up to {LATEST_VERSION}): upgrade "
            "statestore to use it"
        )


def ensure_schema(conn: psycopg.Connection[Any], tables: Tables) -> None:
    """Bring the schema to :data:`LATEST_VERSION`, safe when many processes start at once.

    ``conn`` is in autocommit mode. When the schema is already current this only reads
    (no CREATE privilege needed); otherwise every missing migration is applied in one
    transaction under the schema's advisory lock.
    """
    version = _recorded_version(conn, tables)
    _refuse_newer(version, tables.schema)
    if version == LATEST_VERSION:
        return
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", [_lock_key(tables.schema)])
        conn.execute(
            sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(tables.schema))
        )
        conn.execute(
            tables.sql(
                """CREATE TABLE IF NOT EXISTS {migrations} (
                    version integer PRIMARY KEY,
                    description text NOT NULL,
                    applied_at timestamptz NOT NULL DEFAULT now()
                )"""
            )
        )
        version = _recorded_version(conn, tables)  # again, under the lock
        _refuse_newer(version, tables.schema)
        for migration in MIGRATIONS:
            if migration.version <= version:
                continue
            for statement in migration.statements:
                conn.execute(tables.sql(statement))
            conn.execute(
                tables.sql("INSERT INTO {migrations} (version, description) VALUES (%s, %s)"),
                [migration.version, migration.description],
            )
            logger.info(
                "schema %r: applied migration %d (%s)",
                tables.schema,
                migration.version,
                migration.description,
            )
