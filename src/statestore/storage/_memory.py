"""``memory://``: an in-process backend for tests and experiments.

It stores the same bytes as every other backend (manifests, packs, checksums), so
what passes here exercises the whole contract except durability. ``memory://NAME``
shares one store between every storage opened with that name in the process.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ..codecs import Codec
from ..errors import ConfigError
from ._base import (
    Capabilities,
    MissingBlobsError,
    SavepointInfo,
    SavepointParts,
    Storage,
    WriterToken,
    epoch_ms,
)
from .layout import SavepointRecord

__all__ = ["MemoryStorage"]


@dataclass
class _Saved:
    manifest: bytes
    refs: tuple[str, ...]
    info: SavepointInfo


@dataclass
class _Run:
    token: int = 0
    token_taken_at: int | None = None
    savepoints: dict[int, _Saved] = field(default_factory=dict)
    blobs: dict[str, bytes] = field(default_factory=dict)


@dataclass
class _Store:
    lock: threading.Lock = field(default_factory=threading.Lock)
    runs: dict[str, _Run] = field(default_factory=dict)
    # One counter for the store, so a token is never handed out twice, even to a run
    # deleted and created again: a writer fenced before stays fenced.
    last_token: int = 0


_named_stores: dict[str, _Store] = {}
_named_stores_lock = threading.Lock()


class MemoryStorage(Storage):
    """Savepoints in a dict; ``name`` shares one store across instances in the process."""

    capabilities = Capabilities(durable=False, multi_process=False, multi_host=False)
    driver_errors = ()

    def __init__(self, name: str | None = None, codec: Codec | None = None) -> None:
        super().__init__(codec)
        self.name = name
        if name is None:
            self._store = _Store()
        else:
            with _named_stores_lock:
                self._store = _named_stores.setdefault(name, _Store())

    @classmethod
    def from_url(cls, url: str, codec: Codec | None = None, **options: Any) -> MemoryStorage:
        """``memory://`` is private to this object; ``memory://NAME`` is shared by name."""
        if options:
            raise ConfigError(f"memory:// takes no options, got {sorted(options)}")
        name = url.split("://", 1)[1]
        return cls(name=name or None, codec=codec)

    def __repr__(self) -> str:
        return f"MemoryStorage(name={self.name!r})"

    def _create_run(self, run_id: str) -> None:
        with self._store.lock:
            self._store.runs.setdefault(run_id, _Run())

    def _run_exists(self, run_id: str) -> bool:
        with self._store.lock:
            return run_id in self._store.runs

    def _list_run_ids(self) -> list[str]:
        with self._store.lock:
            return list(self._store.runs)

    def _drop_run(self, run_id: str) -> None:
        with self._store.lock:
            self._store.runs.pop(run_id, None)

    def _take_writer_token(self, run_id: str) -> int:
        with self._store.lock:
            run = self._store.runs.get(run_id)
            if run is None:
                raise self._not_initialized(run_id)
            self._store.last_token += 1
            run.token = self._store.last_token
            run.token_taken_at = epoch_ms()
            return run.token

    def _read_writer_token(self, run_id: str) -> WriterToken | None:
        with self._store.lock:
            run = self._store.runs.get(run_id)
            if run is None or not run.token:
                return None
            return WriterToken(run.token, run.token_taken_at)

    def _commit(self, run_id: str, record: SavepointRecord, writer_token: int | None) -> None:
        with self._store.lock:
            run = self._store.runs.get(run_id)
            if run is None:
                raise self._not_initialized(run_id)
            if writer_token is not None and writer_token != run.token:
                raise self._stale(run_id, writer_token, run.token)
            if any(name not in run.blobs and name not in record.blobs for name in record.refs):
                raise MissingBlobsError(run_id)
            run.blobs.update(record.blobs)
            info = SavepointInfo(record.timestamp, record.entity_count, record.size)
            replaced = run.savepoints.get(record.timestamp)
            run.savepoints[record.timestamp] = _Saved(record.manifest, record.refs, info)
            if replaced is not None:
                self._collect(run)

    def _read_savepoint(
        self, run_id: str, timestamp: int | None, *, with_blobs: bool
    ) -> SavepointParts | None:
        with self._store.lock:
            run = self._store.runs.get(run_id)
            if run is None or not run.savepoints:
                return None
            if timestamp is None:
                timestamp = max(run.savepoints)
            saved = run.savepoints.get(timestamp)
            if saved is None:
                return None
            names = saved.refs if with_blobs else ()
            blobs = {name: run.blobs[name] for name in names if name in run.blobs}
            return SavepointParts(timestamp, saved.manifest, blobs)

    def _list_savepoints(self, run_id: str) -> list[SavepointInfo]:
        with self._store.lock:
            run = self._store.runs.get(run_id)
            if run is None:
                return []
            return [run.savepoints[ts].info for ts in sorted(run.savepoints)]

    def _delete_savepoints(self, run_id: str, timestamps: Sequence[int]) -> None:
        with self._store.lock:
            run = self._store.runs.get(run_id)
            if run is None:
                return
            for timestamp in timestamps:
                run.savepoints.pop(timestamp, None)
            self._collect(run)

    @staticmethod
    def _collect(run: _Run) -> None:
        """Drop every blob no remaining savepoint refers to."""
        needed = {name for saved in run.savepoints.values() for name in saved.refs}
        for name in [name for name in run.blobs if name not in needed]:
            del run.blobs[name]
