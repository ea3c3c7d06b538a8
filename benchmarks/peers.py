"""The peers a user would otherwise pick, each used the way its documentation shows.

* **LangGraph's checkpoint savers** (``langgraph-checkpoint-sqlite`` and
  ``-postgres``): a savepoint is one LangGraph checkpoint whose channels are the
  entities (``channel_values[entity_id] = state``), written with
  ``put(config, checkpoint, metadata, new_versions)`` and read back with
  ``get_tuple(config)``, with their default serializer (ormsgpack). ``new_versions``
  names the channels written since the previous checkpoint, as the graph runtime does.
  ``SqliteSaver`` stores the whole checkpoint as one blob on every ``put`` (WAL; we set
  ``synchronous=FULL``, SQLite's default, explicitly). ``PostgresSaver`` stores each
  non-primitive channel value as a blob keyed by its version, writing only the channels
  in ``new_versions``, plus a JSONB row listing every channel's version.
  The ``-one-channel`` variants keep the whole entity list in *one* channel, as a
  graph whose state is one dict does: LangGraph's users' natural mapping.
* **msgpack-sqlite** and **pickle-sqlite**: what many projects write by hand in ten
  lines: one ``ormsgpack.packb`` (or ``pickle.dumps``, protocol 5) of the whole entity
  list per savepoint, in a plain SQLite table (WAL, ``synchronous=FULL``, one commit per
  savepoint). No checksums; msgpack loses tuples, sets and dates, and unpickling runs
  code chosen by the stored bytes: listed for speed, not as safe choices.
"""

from __future__ import annotations

import datetime as dt
import pickle
import sqlite3
import urllib.parse
from collections.abc import Collection, Sequence
from typing import Any, ClassVar

import ormsgpack

from .data import Entities
from .subjects import Place, Subject

__all__ = [
    "LangGraphPostgres",
    "LangGraphPostgresOneChannel",
    "LangGraphSQLite",
    "LangGraphSQLiteOneChannel",
    "MsgpackSQLite",
    "PickleSQLite",
]

#: SQLite's busy timeout, seconds: W4's processes queue on one database file.
SQLITE_TIMEOUT = 120.0


class _LangGraphSubject(Subject):
    """Entities as the channels of one LangGraph checkpoint per savepoint."""

    group = "peer"
    #: The one channel holding the whole entity list, or None for a channel per entity.
    one_channel: ClassVar[str | None] = None

    def __init__(self, place: Place) -> None:
        # What the graph runtime keeps between steps: each channel's current version
        # and the latest checkpoint id, per run (thread).
        self._versions: dict[str, dict[str, Any]] = {}
        self._parent: dict[str, str] = {}

    @property
    def saver(self) -> Any:
        raise NotImplementedError

    def init_run(self, run_id: str) -> None:
        self._versions[run_id] = {}

    def save(
        self, run_id: str, timestamp: int, entities: Entities, changed: Collection[str] | None
    ) -> None:
        from langgraph.checkpoint.base.id import uuid6

        versions = self._versions.setdefault(run_id, {})
        if self.one_channel is not None:
            written: Collection[str] = [self.one_channel]
            values: dict[str, Any] = {self.one_channel: list(entities)}
        else:
            written = [entity_id for entity_id, _ in entities] if changed is None else changed
            values = dict(entities)
        new_versions = {}
        for channel in written:
            version = self.saver.get_next_version(versions.get(channel), None)
            versions[channel] = new_versions[channel] = version
        checkpoint = {
            "v": 4,
            "id": str(uuid6(clock_seq=timestamp & 0x3FFF)),
            "ts": dt.datetime.fromtimestamp(timestamp / 1000, dt.UTC).isoformat(),
            "channel_values": values,
            "channel_versions": dict(versions),
            "versions_seen": {},
            "updated_channels": list(new_versions),
        }
        configurable = {"thread_id": run_id, "checkpoint_ns": ""}
        if run_id in self._parent:
            configurable["checkpoint_id"] = self._parent[run_id]
        metadata = {"source": "loop", "step": timestamp, "parents": {}}
        saved = self.saver.put({"configurable": configurable}, checkpoint, metadata, new_versions)
        self._parent[run_id] = saved["configurable"]["checkpoint_id"]

    def load(self, run_id: str) -> Sequence[Any]:
        found = self.saver.get_tuple({"configurable": {"thread_id": run_id, "checkpoint_ns": ""}})
        if found is None:
            raise LookupError(f"{self.name}: run {run_id!r} has no checkpoint")
        values = found.checkpoint["channel_values"]
        if self.one_channel is not None:
            loaded: Sequence[Any] = values[self.one_channel]
            return loaded
        return list(values.items())


class LangGraphSQLite(_LangGraphSubject):
    name = "langgraph-sqlite"
    about = "LangGraph SqliteSaver: the whole checkpoint as one msgpack blob per put"

    def __init__(self, place: Place) -> None:
        from langgraph.checkpoint.sqlite import SqliteSaver

        super().__init__(place)
        self._conn = sqlite3.connect(
            place.directory / "langgraph.db", check_same_thread=False, timeout=SQLITE_TIMEOUT
        )
        self._saver = SqliteSaver(self._conn)
        self._saver.setup()  # WAL
        self._conn.execute("PRAGMA synchronous=FULL")

    @property
    def saver(self) -> Any:
        return self._saver

    def close(self) -> None:
        self._conn.close()


class LangGraphPostgres(_LangGraphSubject):
    name = "langgraph-postgresql"
    about = "LangGraph PostgresSaver: a blob per changed channel, JSONB versions row"

    def __init__(self, place: Place) -> None:
        import psycopg
        from langgraph.checkpoint.postgres import PostgresSaver
        from psycopg import sql
        from psycopg.rows import dict_row

        super().__init__(place)
        url = place.postgres(self.name)
        with psycopg.connect(url, autocommit=True) as admin:
            admin.execute(
                sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(place.schema))
            )
        # The saver's tables are unqualified: put them in this subject's own schema.
        self._conn = psycopg.Connection.connect(
            _with_search_path(url, place.schema),
            autocommit=True,
            prepare_threshold=0,
            row_factory=dict_row,
        )
        self._saver = PostgresSaver(self._conn)
        self._saver.setup()

    @property
    def saver(self) -> Any:
        return self._saver

    def close(self) -> None:
        self._conn.close()


class LangGraphSQLiteOneChannel(LangGraphSQLite):
    name = "langgraph-sqlite-one-channel"
    about = "LangGraph SqliteSaver, the entity list as one channel"
    one_channel = "entities"


class LangGraphPostgresOneChannel(LangGraphPostgres):
    name = "langgraph-postgresql-one-channel"
    about = "LangGraph PostgresSaver, the entity list as one channel"
    one_channel = "entities"


def _with_search_path(url: str, schema: str) -> str:
    parts = urllib.parse.urlsplit(url)
    added = urllib.parse.urlencode({"options": f"-csearch_path={schema}"})
    query = f"{parts.query}&{added}" if parts.query else added
    return urllib.parse.urlunsplit(parts._replace(query=query))


class _BlobSQLite(Subject):
    """One serialized blob of the whole entity list per savepoint in a plain SQLite table."""

    group = "peer"
    file: ClassVar[str]

    def __init__(self, place: Place) -> None:
        self._written: int | None = None
        self._conn = sqlite3.connect(
            place.directory / self.file, timeout=SQLITE_TIMEOUT, isolation_level=None
        )
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=FULL")
        self._conn.execute(
            "CREATE TABLE IF NOT EXISTS savepoints "
            "(run_id TEXT NOT NULL, ts INTEGER NOT NULL, data BLOB NOT NULL, "
            "PRIMARY KEY (run_id, ts))"
        )

    def dumps(self, entities: Entities) -> bytes:
        raise NotImplementedError

    def loads(self, data: bytes) -> Sequence[Any]:
        raise NotImplementedError

    def init_run(self, run_id: str) -> None:
        pass  # rows need no preparation

    def save(
        self, run_id: str, timestamp: int, entities: Entities, changed: Collection[str] | None
    ) -> None:
        data = self.dumps(entities)
        self._conn.execute(
            "INSERT OR REPLACE INTO savepoints (run_id, ts, data) VALUES (?, ?, ?)",
            (run_id, timestamp, data),
        )  # autocommit: one durable transaction per savepoint
        self._written = len(data)

    def load(self, run_id: str) -> Sequence[Any]:
        row = self._conn.execute(
            "SELECT data FROM savepoints WHERE run_id = ? ORDER BY ts DESC LIMIT 1", (run_id,)
        ).fetchone()
        if row is None:
            raise LookupError(f"{self.name}: run {run_id!r} has no savepoint")
        return self.loads(row[0])

    def close(self) -> None:
        self._conn.close()

    def last_save_bytes(self, run_id: str) -> int | None:
        return self._written


class MsgpackSQLite(_BlobSQLite):
    name = "msgpack-sqlite"
    about = "plain sqlite3 table, one ormsgpack blob per savepoint (WAL, synchronous=FULL)"
    file = "msgpack.db"

    def dumps(self, entities: Entities) -> bytes:
        data: bytes = ormsgpack.packb(entities)
        return data

    def loads(self, data: bytes) -> Sequence[Any]:
        loaded: Sequence[Any] = ormsgpack.unpackb(data)
        return loaded


class PickleSQLite(_BlobSQLite):
    name = "pickle-sqlite"
    about = "plain sqlite3 table, one pickled blob per savepoint (WAL, synchronous=FULL)"
    file = "pickle.db"

    def dumps(self, entities: Entities) -> bytes:
        return pickle.dumps(entities, protocol=pickle.HIGHEST_PROTOCOL)

    def loads(self, data: bytes) -> Sequence[Any]:
        loaded: Sequence[Any] = pickle.loads(data)
        return loaded
