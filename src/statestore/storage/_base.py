"""The storage contract: one abstract base, policy written once, primitives per backend.

:class:`Storage` holds every rule of the contract (argument validation, encoding,
checksums, the savepoint layout, retention, error translation). A backend subclasses
it and implements only the storage primitives below, each a small, mostly atomic
operation on named bytes; a new backend is a file of a few hundred lines, and the
shared conformance suite (:mod:`statestore.testing`) checks it.

Primitives a backend implements (``run_id`` is always already validated):

===============================  =======================================================
``_create_run(run_id)``          make storage for the run; idempotent
``_run_exists(run_id)``          whether that storage exists
``_list_run_ids()``              every run id
``_drop_run(run_id)``            delete everything of the run at once; no-op if unknown
``_take_writer_token(run_id)``   increment and return the run's writer token
``_commit(run_id, record, fence)`` store ``record.blobs`` and the manifest at
                                 ``record.timestamp`` (replacing one there) as one atomic,
                                 durable step; inside it, check ``fence`` against the
                                 writer token and raise ``MissingBlobsError`` if a name
                                 of ``record.refs`` not in ``record.blobs`` is not stored
``_read_manifest(run_id, ts)``   ``(timestamp, manifest)`` at ``ts`` (latest when None)
``_read_blobs(run_id, names)``   the named blobs that exist
``_index(run_id)``               ``SavepointInfo`` rows, ascending; a savepoint whose
                                 stored metadata is damaged is still listed (entity
                                 count 0), so it can be verified, skipped and pruned
``_delete_savepoints(run_id, timestamps)``  drop those manifests and every blob no
                                 remaining savepoint refers to
===============================  =======================================================

Blobs are immutable and uniquely named, so a backend never overwrites data in place;
what a savepoint refers to is ``record.refs``, which the backend keeps beside the
manifest to know which blobs are still needed. ``_commit``, ``_delete_savepoints`` and
``_drop_run`` of one run must not interleave (a write transaction, a lock on the run):
an incremental savepoint refers to blobs of earlier savepoints, and the check that
they still exist must hold until the commit is done.
"""

from __future__ import annotations

import contextlib
import threading
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Sequence
from types import TracebackType
from typing import Any, NamedTuple, Self

from ..codecs import Codec, SafeCodec
from ..errors import (
    BackendError,
    InvalidArgumentError,
    NoSavepointError,
    RunNotInitializedError,
    StaleWriterError,
    StateStoreError,
)
from . import _layout, _validate
from ._layout import RunIndex, SavepointRecord

__all__ = ["EncodedSavepoint", "MissingBlobsError", "Savepoint", "SavepointInfo", "Storage"]

#: Reads of a manifest and its packs, when a concurrent prune frees packs in between.
READ_ATTEMPTS = 3

#: How many runs' previous savepoints one storage object remembers for incremental saves.
INDEX_CACHE_RUNS = 64


class MissingBlobsError(Exception):
    """Raised by ``_commit`` when a referenced older blob is gone; never reaches users.

    The base then saves again in full. It happens when another process pruned or
    replaced the savepoint this one's incremental save was based on.
    """


class Savepoint(NamedTuple):
    """The state of every entity of a run at ``timestamp``, in save order."""

    timestamp: int
    entities: list[tuple[str, Any]]


class EncodedSavepoint(NamedTuple):
    """A savepoint's states as stored bytes, with the name of the codec that decodes them."""

    timestamp: int
    codec: str
    entities: list[tuple[str, bytes]]


class SavepointInfo(NamedTuple):
    """One row of :meth:`Storage.list_savepoints`: ``size`` is the bytes it stored."""

    timestamp: int
    entity_count: int
    size: int


class Storage(ABC):
    """Abstract base of every backend; see the module docstring for the primitives.

    A storage object may be shared by threads. Use it as a context manager, or call
    :meth:`close` when done.
    """

    #: Driver exceptions this backend lets escape its primitives; translated to
    #: :class:`~statestore.errors.BackendError` in one place (:meth:`_boundary`).
    driver_errors: tuple[type[BaseException], ...] = (OSError,)

    def __init__(self, codec: Codec | None = None) -> None:
        self.codec: Codec = codec if codec is not None else SafeCodec()
        #: The most bytes one savepoint's states may encode to in all, on save and on
        #: read (a bound against decompression bombs); ``open_storage`` sets it from its
        #: ``max_savepoint_bytes`` option.
        self.max_savepoint_bytes: int = _layout.MAX_SAVEPOINT_BYTES
        self._closed = False
        self._close_lock = threading.Lock()
        # The previous savepoint of recently written or loaded runs, by entity: what
        # makes the next save incremental. Insertion-ordered; oldest evicted first.
        self._run_index: dict[str, RunIndex] = {}
        self._run_index_lock = threading.Lock()

    # ---------------------------------------------------------------- the contract

    def is_initialized(self, run_id: str) -> bool:
        """Whether storage exists for ``run_id``."""
        run_id = _validate.run_id(run_id)
        with self._boundary(run_id):
            return self._run_exists(run_id)

    def init_storage(self, run_id: str) -> None:
        """Create storage for ``run_id``; calling it again changes nothing."""
        run_id = _validate.run_id(run_id)
        with self._boundary(run_id):
            self._create_run(run_id)

    def save_savepoint(
        self,
        run_id: str,
        timestamp: int,
        entities: Iterable[tuple[str, Any]],
        *,
        writer_token: int | None = None,
    ) -> None:
        """Persist one savepoint, all or nothing; durable once this returns.

        Saving at an existing timestamp replaces that savepoint. With
        ``writer_token``, the save is refused with
        :class:`~statestore.errors.StaleWriterError` (storing nothing) unless the
        token is still the run's current one (see :meth:`acquire_writer`).
        """
        run_id = _validate.save_target(run_id, timestamp, writer_token)
        ids, states = _validate.entities(entities, run_id)
        self._save(
            run_id,
            timestamp,
            ids,
            _layout.encode_states(self.codec, ids, states, run_id),
            writer_token,
        )

    def encode_state(self, run_id: str, entity_id: str, state: Any) -> bytes:
        """Encode one state with this storage's codec, as :meth:`save_encoded_savepoint` takes it.

        Encoding at the moment of the call captures the state by value: the caller may
        mutate the object afterwards. Raises :class:`~statestore.errors.EncodeError`
        naming the run, the entity and the type.
        """
        run_id = _validate.run_id(run_id)
        if not isinstance(entity_id, str):
            raise InvalidArgumentError(
                f"run {run_id!r}: entity id must be a str, not {entity_id!r}"
            )
        return _layout.encode_state(self.codec, entity_id, state, run_id)

    def save_encoded_savepoint(
        self,
        run_id: str,
        timestamp: int,
        encoded_entities: Iterable[tuple[str, bytes]],
        *,
        writer_token: int | None = None,
    ) -> None:
        """Like :meth:`save_savepoint`, with states already encoded by :meth:`encode_state`.

        The engine encodes each state once when an entity saves it and reuses the
        bytes for every savepoint that save fills.
        """
        run_id = _validate.save_target(run_id, timestamp, writer_token)
        ids, encoded = _validate.entities(encoded_entities, run_id)
        for entity_id, data in zip(ids, encoded, strict=True):
            if not isinstance(data, bytes):
                raise InvalidArgumentError(
                    f"run {run_id!r}: entity {entity_id!r}: encoded state must be bytes, "
                    f"not {type(data).__name__}"
                )
            _layout.check_state_size(run_id, entity_id, data)
        self._save(run_id, timestamp, ids, encoded, writer_token)

    def _save(
        self,
        run_id: str,
        timestamp: int,
        ids: list[str],
        encoded: list[bytes],
        writer_token: int | None,
    ) -> None:
        _layout.check_savepoint_size(run_id, timestamp, encoded, self.max_savepoint_bytes)
        base = self._cached_index(run_id)
        record, index = _layout.build_record(run_id, timestamp, self.codec, ids, encoded, base=base)
        try:
            with self._boundary(run_id, timestamp):
                try:
                    self._commit(run_id, record, writer_token)
                except MissingBlobsError:
                    # The base savepoint was pruned under us: save every state anew.
                    record, index = _layout.build_record(
                        run_id, timestamp, self.codec, ids, encoded
                    )
                    self._commit(run_id, record, writer_token)
        except BaseException:
            self._forget_index(run_id)
            raise
        self._remember_index(run_id, index)

    def _cached_index(self, run_id: str) -> RunIndex | None:
        with self._run_index_lock:
            return self._run_index.get(run_id)

    def _remember_index(self, run_id: str, index: RunIndex) -> None:
        with self._run_index_lock:
            self._run_index.pop(run_id, None)
            self._run_index[run_id] = index
            while len(self._run_index) > INDEX_CACHE_RUNS:
                del self._run_index[next(iter(self._run_index))]

    def _forget_index(self, run_id: str) -> None:
        with self._run_index_lock:
            self._run_index.pop(run_id, None)

    def get_latest_savepoint(self, run_id: str) -> Savepoint:
        """The savepoint with the highest timestamp; ``NoSavepointError`` when none."""
        run_id = _validate.run_id(run_id)
        return self._load(run_id, None)

    def get_latest_savepoint_timestamp(self, run_id: str) -> int:
        """The highest savepoint timestamp of the run, without reading any state."""
        run_id = _validate.run_id(run_id)
        with self._boundary(run_id):
            rows = self._index(run_id)
        if not rows:
            raise NoSavepointError(f"run {run_id!r} has no savepoint")
        return rows[-1].timestamp

    def get_savepoint(self, run_id: str, timestamp: int) -> Savepoint:
        """The savepoint at exactly ``timestamp``; ``NoSavepointError`` when none."""
        run_id = _validate.run_id(run_id)
        return self._load(run_id, _validate.timestamp(timestamp))

    def list_savepoints(self, run_id: str) -> list[SavepointInfo]:
        """Every savepoint of the run, ascending by timestamp (empty for an unknown run)."""
        run_id = _validate.run_id(run_id)
        with self._boundary(run_id):
            return list(self._index(run_id))

    def read_encoded_savepoint(self, run_id: str, timestamp: int | None = None) -> EncodedSavepoint:
        """A savepoint's states as the codec wrote them, every checksum verified, none decoded.

        For moving savepoints between stores byte for byte (``statestore copy``,
        ``export``) whatever codec wrote them: ``codec`` names it, and
        :meth:`save_encoded_savepoint` on the destination stores the same bytes.
        ``timestamp=None`` reads the latest savepoint.
        """
        run_id = _validate.run_id(run_id)
        if timestamp is not None:
            timestamp = _validate.timestamp(timestamp)
        manifest, packs = self._read_checked(run_id, timestamp)
        index = _layout.extract_states(run_id, manifest, packs)
        entities = [(entity_id, bytes(raw)) for entity_id, raw in index.entities()]
        return EncodedSavepoint(manifest.timestamp, manifest.codec, entities)

    def delete_savepoints(self, run_id: str, timestamps: Iterable[int]) -> None:
        """Delete exactly these savepoints of the run; timestamps it does not have are ignored."""
        run_id = _validate.run_id(run_id)
        doomed = sorted({_validate.timestamp(ts) for ts in timestamps})
        if doomed:
            with self._boundary(run_id):
                self._delete_savepoints(run_id, doomed)

    def list_runs(self) -> list[str]:
        """Every run id with storage, sorted."""
        with self._boundary():
            return sorted(self._list_run_ids())

    def delete_old_savepoints(self, run_id: str, keep_n: int) -> None:
        """Keep the ``keep_n`` newest savepoints of the run, delete the rest."""
        run_id = _validate.run_id(run_id)
        keep_n = _validate.keep_n(keep_n)
        with self._boundary(run_id):
            rows = self._index(run_id)
            doomed = rows[: max(len(rows) - keep_n, 0)]
            if doomed:
                self._delete_savepoints(run_id, [row.timestamp for row in doomed])

    def delete_run(self, run_id: str) -> None:
        """Delete everything of the run; unknown runs are ignored."""
        run_id = _validate.run_id(run_id)
        self._forget_index(run_id)
        with self._boundary(run_id):
            self._drop_run(run_id)

    def acquire_writer(self, run_id: str) -> int:
        """Take the run's writer token: a number that only grows.

        Saves passing an older token are refused from then on, across threads,
        processes and (for server backends) hosts.
        """
        run_id = _validate.run_id(run_id)
        with self._boundary(run_id):
            if not self._run_exists(run_id):
                raise RunNotInitializedError(f"run {run_id!r} is not initialized")
            return self._take_writer_token(run_id)

    def compact(self) -> None:
        """Give space freed by deleted savepoints back to the operating system."""
        with self._boundary():
            self._compact()

    def close(self) -> None:
        """Release connections and files; further use is an error of the caller."""
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
        with self._boundary():
            self._close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    # ---------------------------------------------------------------- shared helpers

    def _read_checked(
        self, run_id: str, timestamp: int | None
    ) -> tuple[_layout.Manifest, dict[str, bytes]]:
        """A savepoint's checked manifest and its packs; NoSavepointError when there is none."""
        with self._boundary(run_id, timestamp):
            for _attempt in range(READ_ATTEMPTS):
                found = self._read_manifest(run_id, timestamp)
                if found is None:
                    where = "no savepoint" if timestamp is None else f"no savepoint at {timestamp}"
                    raise NoSavepointError(f"run {run_id!r} has {where}")
                found_ts, manifest_bytes = found
                manifest = _layout.decode_manifest(
                    run_id, found_ts, manifest_bytes, max_savepoint_bytes=self.max_savepoint_bytes
                )
                packs = self._read_blobs(run_id, manifest.packs)
                if len(packs) == len(set(manifest.packs)):
                    break
                # A prune or replace by another handle may have freed these packs between
                # the two reads: read the (new) manifest again. Still missing after the
                # last attempt, the layout reports the savepoint corrupt.
        return manifest, packs

    def _load(self, run_id: str, timestamp: int | None) -> Savepoint:
        manifest, packs = self._read_checked(run_id, timestamp)
        codec = _layout.codec_for(manifest.codec, self.codec, run_id, manifest.timestamp)
        entities, index = _layout.decode_states(run_id, manifest, packs, codec)
        if timestamp is None:  # a resumed run saves next: base that save on what it loaded
            self._remember_index(run_id, index)
        return Savepoint(manifest.timestamp, entities)

    @contextlib.contextmanager
    def _boundary(self, run_id: str | None = None, timestamp: int | None = None) -> Iterator[None]:
        """Translate this backend's driver errors into BackendError, naming run and timestamp."""
        try:
            yield
        except StateStoreError:
            raise
        except self.driver_errors as exc:
            where = "" if run_id is None else f"run {run_id!r}: "
            if timestamp is not None:
                where += f"savepoint {timestamp}: "
            raise BackendError(f"{where}{self._describe_failure(exc)}") from None

    def _describe_failure(self, exc: BaseException) -> str:
        """One line about a driver error; backends override to redact secrets."""
        return f"{type(self).__name__} failed: {type(exc).__name__}: {exc}"

    @staticmethod
    def _stale(run_id: str, fence: int, current: int) -> StaleWriterError:
        return StaleWriterError(
            f"run {run_id!r}: writer token {fence} is stale (current token is {current}); "
            "another writer has taken this run, nothing was stored"
        )

    @staticmethod
    def _not_initialized(run_id: str) -> RunNotInitializedError:
        return RunNotInitializedError(
            f"run {run_id!r} is not initialized; call init_storage({run_id!r}) first"
        )

    # ---------------------------------------------------------------- primitives

    @abstractmethod
    def _create_run(self, run_id: str) -> None: ...

    @abstractmethod
    def _run_exists(self, run_id: str) -> bool: ...

    @abstractmethod
    def _list_run_ids(self) -> list[str]: ...

    @abstractmethod
    def _drop_run(self, run_id: str) -> None: ...

    @abstractmethod
    def _take_writer_token(self, run_id: str) -> int: ...

    @abstractmethod
    def _commit(self, run_id: str, record: SavepointRecord, fence: int | None) -> None: ...

    @abstractmethod
    def _read_manifest(self, run_id: str, timestamp: int | None) -> tuple[int, bytes] | None: ...

    @abstractmethod
    def _read_blobs(self, run_id: str, names: Sequence[str]) -> dict[str, bytes]: ...

    @abstractmethod
    def _index(self, run_id: str) -> list[SavepointInfo]: ...

    @abstractmethod
    def _delete_savepoints(self, run_id: str, timestamps: Sequence[int]) -> None: ...

    def _close(self) -> None:  # noqa: B027 - optional hook
        """Release resources; the default has none."""

    def _compact(self) -> None:  # noqa: B027 - optional hook
        """Return freed space to the OS (SQLite VACUUM, ...); the default has nothing to do."""
