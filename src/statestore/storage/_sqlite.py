"""``sqlite:///relative.db``, ``sqlite:////absolute.db``: the embedded default backend.

One database file holds every run. Schema (version 2)::

    runs            (id, run_id UNIQUE, writer_token)
    writer_taken    (run -> runs, token, taken_at)          when the run's token was taken
    blobs           (run -> runs, name, data)               immutable packs
    savepoints      (run -> runs, ts, manifest, entity_count, size)
    savepoint_refs  (run, ts -> savepoints, name -> blobs)  what each savepoint points into
    counters        ('writer_token', value)                 tokens never repeat in a file

Every write is one ``BEGIN IMMEDIATE`` transaction in WAL mode with
``synchronous=FULL``: a commit is on disk before it returns, readers never block the
writer, and writers of several processes queue on the busy timeout. The one exception
is a prune (``_delete_savepoints``), which commits without an fsync of its own: the
next durable commit carries it to disk, and a power loss before then undoes it whole. Foreign keys
cascade a dropped run to everything it owns and refuse to free a blob a savepoint
still refers to. The schema is created by numbered migrations recorded in
``PRAGMA user_version``; ``PRAGMA application_id`` marks the file as ours.

Each thread uses its own connection (SQLite connections are not for concurrent use);
:meth:`SQLiteStorage.close` closes all of them. After ``fork()`` the child opens its
own connections and never touches the inherited ones (``os.register_at_fork``).

The store runs on the SQLite library that apsw bundles, not on the one Python's
``sqlite3`` module links (often the operating system's, older): SQLite 3.7.0 to 3.51.2
can corrupt a WAL database when two connections write or checkpoint at the same moment
(the "WAL-reset bug", https://sqlite.org/wal.html#walresetbug), which is what several
processes saving into one store do. A library older than 3.51.3 is refused at open.
apsw connections are in autocommit mode unless a ``BEGIN`` is issued: every
transaction here is explicit (a lone SELECT is its own).

An open SQLite connection keeps using the file it opened, even once that file is
unlinked or another is renamed over it: its commits would "succeed" into a file no
later reader finds (https://sqlite.org/howtocorrupt.html, "Unlinking or renaming a
database file while in use"). The store
remembers the database file's identity (device, inode) when it first opens it; every
connection it opens and every read checks the path against it (one ``stat``), and every
write transaction, under the write lock, also checks that the ``-wal`` and ``-shm``
files of WAL mode (which exist while any connection holds the database open) are still
there (three). A mismatch is a BackendError and nothing is written. As SQLite finds a
``-wal`` by the path, the lost file's log is then emptied into the lost file, so that
it is not replayed onto whatever file is put at the path (see ``_empty_log``).

The savepoints table's ``ts``, ``entity_count`` and ``size`` columns are outside every
checksum; a row whose ``ts`` is not a non-negative integer is left out of every
listing, and a damaged count or size lists as 0.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import re
import threading
import urllib.parse
import weakref
from collections.abc import Iterator, Sequence
from typing import Any

import apsw

from ..codecs import Codec
from ..errors import BackendError, ConfigError
from ._base import (
    MissingBlobsError,
    SavepointInfo,
    SavepointParts,
    Storage,
    WriterToken,
    epoch_ms,
)
from .durable import fsync_directory
from .layout import SavepointRecord
from .url import split_store_url, take_options

__all__ = [
    "APPLICATION_ID",
    "MAX_TIMEOUT",
    "MIGRATIONS",
    "READABLE_SCHEMA_VERSION",
    "SCHEMA_VERSION",
    "SQLiteStorage",
]

#: ``PRAGMA application_id`` of a statestore file ("StSt"): tells our files from others.
APPLICATION_ID = 0x53745374

#: Numbered schema migrations: entry ``n`` takes ``user_version`` from ``n`` to ``n + 1``.
#: Append only; a released migration never changes.
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """CREATE TABLE runs (
            id INTEGER PRIMARY KEY,
            run_id TEXT NOT NULL UNIQUE,
            writer_token INTEGER NOT NULL DEFAULT 0
        )""",
        """CREATE TABLE blobs (
            run INTEGER NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
            name TEXT NOT NULL,
            data BLOB NOT NULL,
            UNIQUE (run, name)
        )""",
        """CREATE TABLE savepoints (
            run INTEGER NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
            ts INTEGER NOT NULL,
            manifest BLOB NOT NULL,
            entity_count INTEGER NOT NULL,
            size INTEGER NOT NULL,
            PRIMARY KEY (run, ts)
        )""",
        """CREATE TABLE savepoint_refs (
            run INTEGER NOT NULL,
            ts INTEGER NOT NULL,
            name TEXT NOT NULL,
            PRIMARY KEY (run, ts, name),
            FOREIGN KEY (run, ts) REFERENCES savepoints (run, ts) ON DELETE CASCADE,
            FOREIGN KEY (run, name) REFERENCES blobs (run, name)
        ) WITHOUT ROWID""",
        # Freeing a blob looks up who still refers to it (and so does the foreign key).
        "CREATE INDEX savepoint_refs_by_blob ON savepoint_refs (run, name)",
        """CREATE TABLE counters (
            name TEXT PRIMARY KEY,
            value INTEGER NOT NULL
        ) WITHOUT ROWID""",
        "INSERT INTO counters (name, value) VALUES ('writer_token', 0)",
    ),
    (
        # When a token was taken, kept with the token it belongs to: a process of an
        # older statestore that takes a token changes only runs.writer_token, and its
        # token then reads as "time not recorded" rather than with its predecessor's time.
        """CREATE TABLE writer_taken (
            run INTEGER PRIMARY KEY REFERENCES runs (id) ON DELETE CASCADE,
            token INTEGER NOT NULL,
            taken_at INTEGER NOT NULL
        )""",
    ),
)
SCHEMA_VERSION = len(MIGRATIONS)
#: The oldest schema a read-only store is served from: version 2 only added
#: writer_taken, which reads do without (a token's time then reads as not recorded).
READABLE_SCHEMA_VERSION = 1
#: The schema that added writer_taken.
_TOKEN_TIMES_SCHEMA = 2

DEFAULT_TIMEOUT = 30.0
#: SQLite takes the busy timeout as a C int of milliseconds.
MAX_TIMEOUT = (2**31 - 1) / 1000
#: The first SQLite release without the WAL-reset bug.
FIRST_SAFE_SQLITE = (3, 51, 3)
#: The page size of a new database file (SQLite's default is 4096).
_PAGE_SIZE = 16384
#: Keep the WAL file from staying as large as the biggest save ever made.
_JOURNAL_SIZE_LIMIT = 64 * 1024 * 1024
_CONNECTION_PRAGMAS = (
    "PRAGMA synchronous = FULL",  # fsync the WAL on every commit: durable on return
    "PRAGMA foreign_keys = ON",
    "PRAGMA fullfsync = ON",  # macOS: fsync alone does not reach the platter
    "PRAGMA checkpoint_fullfsync = ON",
    f"PRAGMA journal_size_limit = {_JOURNAL_SIZE_LIMIT}",
)

_SELECT_RUN = "SELECT id, writer_token FROM runs WHERE run_id = ?"
#: A savepoints row the library could have written: others are edits past it.
_WHOLE_TS = "typeof(s.ts) = 'integer' AND s.ts >= 0"
#: The files of WAL mode beside the database, which must not vanish under a connection.
_WAL_FILES = (("-wal", "write-ahead log"), ("-shm", "WAL index"))

# One line per primary SQLite result code a user can act on.
_PLAIN_ERRORS = {
    apsw.SQLITE_READONLY: "the database is read-only (file permissions, read-only mount)",
    apsw.SQLITE_FULL: "the disk is full",
    apsw.SQLITE_CORRUPT: "the database file is damaged",
    apsw.SQLITE_NOTADB: "the file is not a SQLite database",
    apsw.SQLITE_CANTOPEN: "cannot open the database file (missing or unwritable directory?)",
    apsw.SQLITE_PERM: "permission denied",
    apsw.SQLITE_NOMEM: "out of memory",
}
_CANNOT_WRITE = (apsw.SQLITE_CANTOPEN, apsw.SQLITE_READONLY)


class _Connection(apsw.Connection):
    """This backend's connection: weakly referable, so a dead thread's one is freed."""

    #: Its ``data_version()`` when it last found the store's files in place (or
    #: committed): unchanged since, nobody has committed into the -wal since then.
    checked_version: int | None = None


class _StoreProblemError(Exception):
    """What this backend (not SQLite) found wrong with the store; one of its driver
    errors, so the base reports it as BackendError naming run and timestamp."""


class _FileLostError(_StoreProblemError):
    """The file at the store's path (if any) is not the one its connections have open."""


class SQLiteStorage(Storage):
    """Savepoints in one SQLite database file, shared by threads and processes.

    ``timeout`` is how many seconds a write waits for another writer's lock before
    failing with :class:`~statestore.errors.BackendError`, at most :data:`MAX_TIMEOUT`
    (SQLite takes it as a C int of milliseconds). The parent directory is created when
    missing. :attr:`sqlite_version` is the version of the SQLite library the store runs
    on (apsw's bundled one).
    """

    driver_errors = (apsw.Error, OSError, _StoreProblemError)

    #: The SQLite library this store runs on, e.g. ``"3.54.1"``; at least 3.51.3.
    sqlite_version: str

    def __init__(
        self,
        path: str | os.PathLike[str],
        codec: Codec | None = None,
        *,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        super().__init__(codec)
        self.sqlite_version = _check_library(apsw.sqlite_lib_version())
        self.path = _check_path(path)
        self.timeout = _check_timeout(timeout)
        self._local = threading.local()
        self._connections: weakref.WeakSet[_Connection] = weakref.WeakSet()
        self._inherited: list[_Connection] = []  # a forked parent's: kept open, never used
        self._connections_lock = threading.Lock()
        # Set when the file cannot be written (permissions, read-only mount): reads are
        # served, every write fails with "read-only". Immutable when not even SQLite's
        # shared-memory file can be created, so nobody can be writing the file either.
        self._read_only = False
        self._immutable = False
        self._schema = SCHEMA_VERSION  # lower only when a read-only file is served as it is
        # (st_dev, st_ino) of the database file when this store first opened it.
        self._identity: tuple[int, int] | None = None
        _open_storages.add(self)
        try:
            with self._boundary():
                self._open()
        except BaseException:
            self._close()
            raise

    @classmethod
    def from_url(cls, url: str, codec: Codec | None = None, **options: Any) -> SQLiteStorage:
        """``sqlite:///relative/path.db`` (to the cwd) or ``sqlite:////absolute/path.db``.

        Options come from the query string (``?timeout=5``) or as keywords; an
        unknown, repeated or malformed option is a ConfigError.
        """
        rest, given = take_options(url, options)
        path = _database_path(rest)
        if path is None:
            raise ConfigError(
                f"bad SQLite URL {url!r}: expected sqlite:///relative/path.db or "
                "sqlite:////absolute/path.db (no host)"
            )
        unknown = sorted(set(given) - {"timeout"})
        if unknown:
            raise ConfigError(f"SQLite URL {url!r}: unknown option {unknown[0]!r} (known: timeout)")
        timeout = given.get("timeout", DEFAULT_TIMEOUT)
        if isinstance(timeout, str):
            try:
                timeout = float(timeout)
            except ValueError:
                raise ConfigError(
                    f"SQLite URL {url!r}: timeout must be a number of seconds, not {timeout!r}"
                ) from None
        return cls(path, codec=codec, timeout=timeout)

    @classmethod
    def missing_location(cls, url: str) -> str | None:
        with contextlib.suppress(ConfigError):
            path = _database_path(take_options(url, {})[0])
            if path is not None and not os.path.exists(path):
                return path
        return None

    def __repr__(self) -> str:
        return f"SQLiteStorage({self.path!r})"

    # ---------------------------------------------------------------- connections

    def _open(self) -> None:
        """Create the file and directory if needed, switch to WAL, migrate the schema."""
        directory = os.path.dirname(self.path)
        created = not os.path.exists(self.path)
        os.makedirs(directory, exist_ok=True)
        try:
            try:
                conn = self._connection()
                if created:
                    # Before WAL and the first table, the only moment it can be set: a
                    # savepoint's pack is one large blob, and 16 KiB pages write it in
                    # a quarter of the pages (a 1.8 MB blob commits about 20% faster).
                    conn.execute(f"PRAGMA page_size = {_PAGE_SIZE}")
                # WAL is a property of the file: set once, every later connection uses it.
                conn.execute("PRAGMA journal_mode = WAL")
                if self._schema_version(conn) < SCHEMA_VERSION:
                    with self._write() as locked:
                        self._migrate(locked)
                self._check_files(conn)  # the files as they are now: see _empty_log
            except apsw.Error as exc:
                cannot_write = _code(exc) in _CANNOT_WRITE
                if created or not cannot_write or not os.path.isfile(self.path):
                    raise
                self._open_read_only()
        except apsw.Error as exc:
            if _code(exc) == apsw.SQLITE_NOTADB:
                raise ConfigError(f"{self.path} is not a SQLite database") from None
            raise
        if created:  # the new file's directory entry must survive a power loss too
            fsync_directory(directory)

    def _open_read_only(self) -> None:
        """Serve reads from a file this process cannot write."""
        self._close()
        self._local = threading.local()
        self._read_only = True
        self.capabilities = dataclasses.replace(self.capabilities, read_only=True)
        try:
            version = self._schema_version(self._connection())
        except apsw.Error as exc:
            if _code(exc) not in _CANNOT_WRITE:
                raise
            # A WAL file closed cleanly has no -shm file, and a read-only directory
            # cannot get one: nobody can write it then, so read it as immutable.
            self._close()
            self._local = threading.local()
            self._immutable = True
            version = self._schema_version(self._connection())
        if version < READABLE_SCHEMA_VERSION:
            raise ConfigError(
                f"{self.path} is read-only and has schema version {version}; open it "
                f"writable once so statestore can upgrade it to {SCHEMA_VERSION}"
            )
        self._schema = version

    def _schema_version(self, conn: apsw.Connection) -> int:
        """The file's schema version; ConfigError for a file that is not ours to use."""
        app_id = _scalar(conn, "PRAGMA application_id")
        version = _scalar(conn, "PRAGMA user_version")
        if app_id not in (0, APPLICATION_ID):
            raise ConfigError(f"{self.path} is a SQLite database of another application")
        if version > SCHEMA_VERSION:
            raise ConfigError(
                f"{self.path} has statestore schema version {version}, newer than the "
                f"{SCHEMA_VERSION} this statestore knows: upgrade statestore to open it"
            )
        # Never add our tables to someone else's database.
        if version == 0 and _scalar(conn, "SELECT count(*) FROM sqlite_master"):
            raise ConfigError(
                f"{self.path} is a SQLite database with tables of another application"
            )
        return int(version)

    def _migrate(self, conn: apsw.Connection) -> None:
        """Apply the missing migrations inside the caller's write transaction."""
        version = self._schema_version(conn)  # again: another process may have migrated
        for statements in MIGRATIONS[version:]:
            for statement in statements:
                conn.execute(statement)
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")

    def _connection(self) -> _Connection:
        """This thread's connection, opened on first use."""
        if self._closed:
            raise BackendError(f"{self!r} is closed")
        conn: _Connection | None = getattr(self._local, "conn", None)
        if conn is not None and self._immutable and not conn.in_transaction:
            # An immutable connection never sees later changes: open one afresh for each
            # use, and read the WAL properly once a writer has created the -shm file.
            conn.close()
            conn = self._local.conn = None
            if os.path.exists(self.path + "-shm"):
                self._immutable = False
        if conn is None:
            conn = self._local.conn = self._new_connection()
        return conn

    def _new_connection(self) -> _Connection:
        target, flags = self.path, apsw.SQLITE_OPEN_READWRITE | apsw.SQLITE_OPEN_CREATE
        if self._read_only:
            target = f"file:{urllib.parse.quote(self.path)}?mode=ro"
            target += "&immutable=1" if self._immutable else ""
            flags = apsw.SQLITE_OPEN_READONLY | apsw.SQLITE_OPEN_URI
        conn = _Connection(target, flags=flags)
        try:
            # Before anything reads it: a file put in the store's place since is not ours.
            self._check_identity()
            # Writers of several threads and processes queue this long for the lock.
            conn.set_busy_timeout(int(self.timeout * 1000))
            for pragma in _CONNECTION_PRAGMAS:
                conn.execute(pragma)
        except BaseException:
            conn.close()
            raise
        with self._connections_lock:
            self._connections.add(conn)
        return conn

    def _check_identity(self) -> None:
        """Refuse a database file deleted, or replaced, since this store first opened it.

        The identity is the store's, not a connection's: a connection opened after a
        restore over the live file would otherwise take the new file for the old one.
        """
        try:
            found = os.stat(self.path)
        except (FileNotFoundError, NotADirectoryError):
            raise _FileLostError(
                "the database file was deleted while the store had it open; the store "
                "reads and saves nothing more (opening it again starts a new, empty file)"
            ) from None
        identity = (found.st_dev, found.st_ino)
        if self._identity is None:
            self._identity = identity
        elif identity != self._identity:
            raise _FileLostError(
                "the database file was replaced by another file while the store had it "
                "open (a restore or copy over a live store?); the store reads and saves "
                "nothing more: close it and open it again to use the file now there"
            )

    def _check_file(self, conn: _Connection) -> None:
        """:meth:`_check_identity` for ``conn``, a connection opened on the store's file."""
        try:
            self._check_identity()
        except _FileLostError:
            self._empty_log(conn)
            raise
        conn.checked_version = conn.data_version()

    def _check_files(self, conn: _Connection) -> None:
        """:meth:`_check_file`, then the -wal and -shm files of WAL mode: before writing.

        Called once ``conn`` has read or locked the database, so it holds them open: the
        last connection to close deletes them, never one while others are open, so a
        missing one was deleted behind SQLite's back. Commits into a deleted -wal are
        lost to every later reader, and connections on a new -shm do not see this one's
        locks. A read-only store writes nothing and may have neither file.
        """
        self._check_file(conn)
        if not self._read_only:
            for suffix, what in self._wal_files():
                try:
                    os.stat(self.path + suffix)
                except FileNotFoundError:
                    if _scalar(conn, "PRAGMA journal_mode") != "wal":
                        break  # switched out of WAL by someone while no connection was open
                    raise _StoreProblemError(
                        f"its {what} {self.path}{suffix} was deleted while the store had it "
                        "open; nothing more is written (commits since the last checkpoint "
                        "may be lost): close the store and open it again"
                    ) from None

    def _wal_files(self) -> tuple[tuple[str, str], ...]:
        """The WAL files to check: a forked child's connections share the WAL index the
        parent had open (SQLite keeps one per file and process, and the child inherits
        the parent's), which the parent's close unlinks while the child goes on using it."""
        return _WAL_FILES[:1] if self._inherited else _WAL_FILES

    def _empty_log(self, conn: _Connection) -> None:
        """Checkpoint the -wal at the path into the lost database file, and truncate it.

        SQLite finds a database's -wal by its path, so a file that takes the lost one's
        place would get the lost file's log replayed onto it when next opened; and a lost
        file moved aside (a backup) gets the commits still in it. Only while nobody has
        committed since ``conn`` last found the files in place: a later commit may be
        one into the new file, which this would take from it. Best effort, never waiting.
        """
        if self._read_only:
            return
        with contextlib.suppress(apsw.Error, _StoreProblemError):
            if not conn.in_transaction:
                conn.execute("BEGIN")
                _scalar(conn, "PRAGMA user_version")  # a read: the log as it is now
            unchanged = conn.checked_version == conn.data_version()
            conn.execute("ROLLBACK")  # nothing was written: the check comes first
            if unchanged:
                conn.set_busy_timeout(0)
                try:
                    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
                finally:
                    conn.set_busy_timeout(int(self.timeout * 1000))

    def _after_fork(self) -> None:
        """In a forked child, before it runs anything else: forget the parent's connections.

        SQLite's locks are not inherited, so a child using them could see the parent
        delete the WAL it writes to; closing them could disturb the parent's. They stay
        referenced (never closed) and the child opens its own on first use.
        """
        self._connections_lock = threading.Lock()  # another thread may have held the old one
        self._inherited.extend(self._connections)
        self._connections = weakref.WeakSet()
        self._local = threading.local()

    @contextlib.contextmanager
    def _write(self) -> Iterator[_Connection]:
        """One write transaction. IMMEDIATE takes the write lock up front, so writers
        queue on the busy timeout instead of failing when both upgrade from reading."""
        conn = _begin(self._connection(), "BEGIN IMMEDIATE")
        try:
            self._check_files(conn)  # under the write lock: nothing is written until it passes
            yield conn
            conn.execute("COMMIT")
            conn.checked_version = conn.data_version()  # this commit is not a stranger's
        except BaseException:
            if conn.in_transaction:
                with contextlib.suppress(apsw.Error):  # keep the original error
                    conn.execute("ROLLBACK")
            raise

    @contextlib.contextmanager
    def _read(self) -> Iterator[_Connection]:
        """One read transaction: several SELECTs see one snapshot."""
        conn = _begin(self._connection(), "BEGIN")
        try:
            yield conn
        except apsw.Error:
            self._check_file(conn)  # a lost file explains a failed read best
            raise
        else:
            # After the reads: what they found is thrown away when the file it came from
            # is no longer the store's. (A lost -wal or -shm costs commits and locks, so
            # writes check them; what is read from them is checksummed.)
            self._check_file(conn)
        finally:
            if conn.in_transaction:
                conn.execute("COMMIT")

    def _query(self, query: str, params: tuple[Any, ...] = ()) -> list[Any]:
        """The rows of one SELECT (one snapshot by itself), read as :meth:`_read` does."""
        conn = self._connection()
        try:
            rows = conn.execute(query, params).fetchall()
        except apsw.Error:
            self._check_file(conn)  # a lost file explains a failed read best
            raise
        self._check_file(conn)  # see _read
        return rows

    def _close(self) -> None:
        with self._connections_lock:
            connections = list(self._connections)
            self._connections = weakref.WeakSet()
        if connections and self._lost():  # SQLite leaves a moved file's WAL in place
            own = getattr(self._local, "conn", None)
            self._empty_log(own if own in connections else connections[0])
        for conn in connections:
            conn.close()

    def _lost(self) -> bool:
        try:
            self._check_identity()
        except _FileLostError:
            return True
        except OSError:
            pass
        return False

    def _describe_failure(self, exc: BaseException) -> str:
        if isinstance(exc, _StoreProblemError):
            why = str(exc)
        elif isinstance(exc, apsw.Error):
            code = _code(exc)
            if code in (apsw.SQLITE_BUSY, apsw.SQLITE_LOCKED):
                why = (
                    f"database is locked: another process or thread held its write lock "
                    f"for more than the {self.timeout:g} s timeout"
                )
            elif code == apsw.SQLITE_IOERR:
                why = f"I/O error ({exc})"
            else:
                why = _PLAIN_ERRORS.get(code, f"{type(exc).__name__}: {exc}")
        elif isinstance(exc, OSError):
            why = exc.strerror or str(exc)
        else:
            why = f"{type(exc).__name__}: {exc}"
        return f"SQLite store {self.path}: {why}"

    # ---------------------------------------------------------------- primitives

    def _create_run(self, run_id: str) -> None:
        with self._write() as conn:
            conn.execute("INSERT OR IGNORE INTO runs (run_id) VALUES (?)", (run_id,))

    def _run_exists(self, run_id: str) -> bool:
        return bool(self._query(_SELECT_RUN, (run_id,)))

    def _list_run_ids(self) -> list[str]:
        return [run_id for (run_id,) in self._query("SELECT run_id FROM runs")]

    def _drop_run(self, run_id: str) -> None:
        with self._write() as conn:  # the foreign keys cascade to everything of the run
            conn.execute("DELETE FROM runs WHERE run_id = ?", (run_id,))

    def _take_writer_token(self, run_id: str) -> int:
        with self._write() as conn:
            found = conn.execute(_SELECT_RUN, (run_id,)).fetchone()
            if found is None:
                raise self._not_initialized(run_id)
            # One counter for the whole file: a run deleted and created again never
            # hands out a token that a writer of its former life still holds.
            conn.execute("UPDATE counters SET value = value + 1 WHERE name = 'writer_token'")
            token = _scalar(conn, "SELECT value FROM counters WHERE name = 'writer_token'")
            conn.execute("UPDATE runs SET writer_token = ? WHERE id = ?", (token, found[0]))
            conn.execute(
                "INSERT OR REPLACE INTO writer_taken (run, token, taken_at) VALUES (?, ?, ?)",
                (found[0], token, epoch_ms()),
            )
            return int(token)

    def _read_writer_token(self, run_id: str) -> WriterToken | None:
        if self._schema < _TOKEN_TIMES_SCHEMA:  # a read-only file served as it is
            query = "SELECT writer_token, NULL FROM runs WHERE run_id = ?"
        else:
            query = (
                "SELECT r.writer_token, t.taken_at FROM runs AS r LEFT JOIN writer_taken AS t "
                "ON t.run = r.id AND t.token = r.writer_token WHERE r.run_id = ?"
            )
        rows = self._query(query, (run_id,))
        if not rows or not isinstance(rows[0][0], int) or rows[0][0] <= 0:
            return None
        token, taken_at = rows[0]
        return WriterToken(token, taken_at if isinstance(taken_at, int) else None)

    def _commit(self, run_id: str, record: SavepointRecord, writer_token: int | None) -> None:
        with self._write() as conn:
            found = conn.execute(_SELECT_RUN, (run_id,)).fetchone()
            if found is None:
                raise self._not_initialized(run_id)
            run, token = found
            if writer_token is not None and writer_token != token:
                raise self._stale(run_id, writer_token, token)
            refs = list(dict.fromkeys(record.refs))
            for name in refs:
                if name not in record.blobs and not _blob_exists(conn, run, name):
                    raise MissingBlobsError(run_id)
            conn.executemany(
                "INSERT INTO blobs (run, name, data) VALUES (?, ?, ?)",
                [(run, name, data) for name, data in record.blobs.items()],
            )
            conn.execute("DELETE FROM savepoints WHERE run = ? AND ts = ?", (run, record.timestamp))
            replaced = conn.changes()
            conn.execute(
                "INSERT INTO savepoints (run, ts, manifest, entity_count, size) "
                "VALUES (?, ?, ?, ?, ?)",
                (run, record.timestamp, record.manifest, record.entity_count, record.size),
            )
            conn.executemany(
                "INSERT INTO savepoint_refs (run, ts, name) VALUES (?, ?, ?)",
                [(run, record.timestamp, name) for name in refs],
            )
            if replaced:
                _collect(conn, run)

    def _read_savepoint(
        self, run_id: str, timestamp: int | None, *, with_blobs: bool
    ) -> SavepointParts | None:
        select = (
            "SELECT s.run, s.ts, s.manifest FROM savepoints s JOIN runs r ON r.id = s.run "
            f"WHERE r.run_id = ? AND {_WHOLE_TS}"
        )
        params: tuple[Any, ...] = (run_id,)
        if timestamp is None:
            select += " ORDER BY s.ts DESC LIMIT 1"
        else:
            select, params = f"{select} AND s.ts = ?", (run_id, timestamp)
        # One read transaction: the manifest and its blobs come from one snapshot, so a
        # prune committed meanwhile by another connection is not seen halfway.
        with self._read() as conn:
            found = conn.execute(select, params).fetchone()
            if found is None:
                return None
            run, ts, manifest = found
            blobs: dict[str, bytes] = {}
            if with_blobs:
                rows = conn.execute(
                    "SELECT b.name, b.data FROM savepoint_refs f JOIN blobs b "
                    "ON b.run = f.run AND b.name = f.name WHERE f.run = ? AND f.ts = ?",
                    (run, ts),
                ).fetchall()
                blobs = {str(name): _as_bytes(data) for name, data in rows}
        return SavepointParts(int(ts), _as_bytes(manifest), blobs)

    def _list_savepoints(self, run_id: str) -> list[SavepointInfo]:
        # A row with a damaged ts has no timestamp to list it under; a damaged count or
        # size is only a figure: the row stays listed, to be verified, skipped, pruned.
        rows = self._query(
            "SELECT s.ts, s.entity_count, s.size FROM savepoints s "
            f"JOIN runs r ON r.id = s.run WHERE r.run_id = ? AND {_WHOLE_TS} ORDER BY s.ts",
            (run_id,),
        )
        return [
            SavepointInfo(ts, _count(count), _count(size))
            for ts, count, size in rows
            if type(ts) is int  # as the query made sure; said again for the type checker
        ]

    def _delete_savepoints(self, run_id: str, timestamps: Sequence[int]) -> None:
        # A prune commits without an fsync of its own: the WAL is written in order, so the
        # next durable commit (the run's next save) makes it durable too. Until then a
        # power loss can only undo it whole: the savepoints it deleted are back, intact.
        # That is the state before the operation, which the contract allows, and it
        # spares a retention step after each save its own trip to the disk.
        conn = self._connection()
        conn.execute("PRAGMA synchronous = NORMAL")
        try:
            with self._write() as conn:
                found = conn.execute(_SELECT_RUN, (run_id,)).fetchone()
                if found is None:
                    return
                run = found[0]
                conn.executemany(  # their savepoint_refs rows go with them (cascade)
                    "DELETE FROM savepoints WHERE run = ? AND ts = ?",
                    [(run, timestamp) for timestamp in timestamps],
                )
                _collect(conn, run)
        finally:
            conn.execute("PRAGMA synchronous = FULL")

    def _compact(self) -> None:
        conn = self._connection()
        _scalar(conn, "PRAGMA user_version")  # a read: the connection holds the WAL open
        self._check_files(conn)
        conn.execute("VACUUM")  # rewrites the database into the WAL, without free pages
        # ...then back, shrinking both files (fetched: a statement runs until its last row).
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()

    def _disk_usage(self) -> int:
        # The write-ahead log and its index are part of the store: a savepoint may live
        # only in the -wal file until the next checkpoint.
        return sum(_file_size(self.path + suffix) for suffix in ("", "-wal", "-shm"))


# -------------------------------------------------------------------- helpers


def _file_size(path: str) -> int:
    """The size of a file, 0 when there is none (a -wal file not created yet)."""
    try:
        return os.lstat(path).st_size
    except FileNotFoundError:
        return 0


#: Every live SQLiteStorage, so a forked child can reset each one's connections.
_open_storages: weakref.WeakSet[SQLiteStorage] = weakref.WeakSet()


def _reset_after_fork() -> None:
    for storage in list(_open_storages):
        storage._after_fork()


if hasattr(os, "register_at_fork"):  # POSIX; where there is no fork there is nothing to do
    os.register_at_fork(after_in_child=_reset_after_fork)


def _as_bytes(value: object) -> bytes:
    """A stored BLOB; a value of another type (written past the library) reads as empty,
    which the layout's checks then report as corrupt."""
    return value if isinstance(value, bytes) else b""


def _begin(conn: _Connection, begin: str) -> _Connection:
    if conn.in_transaction:  # left open by a call interrupted between BEGIN and its try
        conn.execute("ROLLBACK")
    conn.execute(begin)
    return conn


def _blob_exists(conn: apsw.Connection, run: int, name: str) -> bool:
    query = "SELECT 1 FROM blobs WHERE run = ? AND name = ?"
    return conn.execute(query, (run, name)).fetchone() is not None


def _collect(conn: apsw.Connection, run: int) -> None:
    """Delete every blob of the run that no remaining savepoint refers to."""
    conn.execute(
        "DELETE FROM blobs WHERE run = ? AND NOT EXISTS ("
        "SELECT 1 FROM savepoint_refs r WHERE r.run = blobs.run AND r.name = blobs.name)",
        (run,),
    )


def _count(value: object) -> int:
    """A stored entity count or size; a value the library never writes reads as 0."""
    return value if type(value) is int and value >= 0 else 0


def _code(exc: apsw.Error) -> int:
    """The primary SQLite result code; -1 for apsw's own errors (closed connection, ...)."""
    code = getattr(exc, "result", None)
    return code if isinstance(code, int) else -1


def _scalar(conn: apsw.Connection, query: str) -> Any:
    """The one value of a query that returns one row: a pragma, a count, the counter."""
    row = conn.execute(query).fetchone()
    if row is None:  # only a file edited past statestore lacks the row
        raise _StoreProblemError(f"the database file is damaged: {query!r} found no row")
    return row[0]


def _check_library(version: str) -> str:
    """The SQLite library's version, when it is free of the WAL-reset bug; else ConfigError."""
    numbers = tuple(int(part) for part in re.findall(r"\d+", version)[:3])
    if numbers < FIRST_SAFE_SQLITE:
        raise ConfigError(
            f"the SQLite store runs on SQLite {version} (through apsw "
            f"{apsw.apsw_version()}), which has the WAL-reset bug: it can corrupt a "
            "database that several connections write (https://sqlite.org/wal.html"
            "#walresetbug). Fixed in SQLite 3.51.3: install apsw 3.51.3.0 or newer "
            "(pip install -U apsw)"
        )
    return version


def _check_path(path: str | os.PathLike[str]) -> str:
    """An absolute path: threads that connect later must not depend on the cwd then."""
    try:
        text = os.fspath(path)
    except TypeError:
        raise ConfigError(f"SQLite path must be a str or path, not {path!r}") from None
    if not isinstance(text, str) or not text or "\x00" in text:
        raise ConfigError(f"bad SQLite path {path!r}")
    if text == ":memory:":  # each connection would get its own, empty database
        raise ConfigError(
            "SQLite ':memory:' is not supported; use memory:// for an in-process store"
        )
    return os.path.abspath(text)


def _check_timeout(timeout: Any) -> float:
    if (
        isinstance(timeout, bool)
        or not isinstance(timeout, int | float)
        or not math.isfinite(timeout)
        or not 0 <= timeout <= MAX_TIMEOUT
    ):
        raise ConfigError(
            f"SQLite timeout must be a number of seconds from 0 to {MAX_TIMEOUT} "
            f"(SQLite's limit, about 24.8 days), not {timeout!r}"
        )
    return float(timeout)


def _database_path(url: str) -> str | None:
    """The database file of a ``sqlite:///path`` URL without options; None if malformed."""
    parts = split_store_url(url)
    path = urllib.parse.unquote(parts.path[1:])
    if parts.scheme.lower() != "sqlite" or parts.netloc or parts.fragment or not path:
        return None
    return path
