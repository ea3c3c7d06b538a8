"""The storage contract: one abstract base, policy written once, primitives per backend.

:class:`Storage` holds every rule of the contract (argument validation, encoding,
checksums, the savepoint layout, retention, error translation). A backend subclasses
it and implements only the storage primitives below, each a small, mostly atomic
operation on named bytes; a new backend is a file of a few hundred lines, and the
shared conformance suite (:mod:`statestore.testing`) checks it.

A backend implements ``from_url`` and ten primitives, each documented below where it
is declared (the section "primitives" of :class:`Storage`): ``_create_run``,
``_run_exists``, ``_list_run_ids``, ``_drop_run``, ``_take_writer_token``,
``_read_writer_token``, ``_commit``, ``_read_savepoint``, ``_list_savepoints`` and
``_delete_savepoints``; ``_close`` and ``_compact``
are optional. It stores named, immutable blobs and one manifest per savepoint, and
never interprets either: what a savepoint refers to is ``record.refs``, kept beside
the manifest to know which blobs are still needed. docs/backends.md shows a whole
backend and how the conformance kit checks it.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, NamedTuple, Self, TypeVar

from .. import collector, observe
from ..aio import DEFAULT_WORKERS, Workers, twin
from ..codecs import Codec, SafeCodec
from ..errors import (
    BackendError,
    ConfigError,
    InvalidArgumentError,
    NoSavepointError,
    RunNotInitializedError,
    StaleWriterError,
    StateStoreError,
)
from . import layout, validate
from .layout import ReuseBase, SavepointRecord

__all__ = [
    "Capabilities",
    "EncodedSavepoint",
    "MissingBlobsError",
    "Savepoint",
    "SavepointInfo",
    "SavepointLayout",
    "SavepointParts",
    "SavepointSummary",
    "Storage",
    "StoredSavepoint",
    "StoredState",
    "WriterToken",
    "epoch_ms",
]

_T = TypeVar("_T")

#: How many runs' previous savepoints one storage object remembers for incremental saves.
REUSE_CACHE_RUNS = 64
#: How many savepoint summaries one storage object remembers (a few hundred bytes each).
SUMMARY_CACHE_SIZE = 4096


class MissingBlobsError(Exception):
    """Raised by ``_commit`` when a referenced older blob is gone; never reaches users.

    The base then saves again in full. It happens when another process pruned or
    replaced the savepoint this one's incremental save was based on.
    """


class Savepoint(NamedTuple):
    """The state of every entity of a run at ``timestamp``, in save order."""

    timestamp: int
    entities: list[tuple[str, Any]]


class StoredSavepoint(NamedTuple):
    """A savepoint with the state version each state was written with
    (:meth:`Storage.load_savepoint`); 1 for states stored before versions existed."""

    timestamp: int
    entities: list[tuple[str, Any]]
    versions: list[int]


def _savepoint(
    manifest: layout.Manifest | layout.ManifestV1, entities: list[tuple[str, Any]]
) -> Savepoint:
    return Savepoint(manifest.timestamp, entities)


def _stored_savepoint(
    manifest: layout.Manifest | layout.ManifestV1, entities: list[tuple[str, Any]]
) -> StoredSavepoint:
    if isinstance(manifest, layout.ManifestV1):  # format 1 knew no versions
        return StoredSavepoint(manifest.timestamp, entities, [1] * len(entities))
    return StoredSavepoint(manifest.timestamp, entities, manifest.versions())


class EncodedSavepoint(NamedTuple):
    """A savepoint's states as stored bytes, with the name of the codec that decodes them."""

    timestamp: int
    codec: str
    entities: list[tuple[str, bytes]]


class SavepointParts(NamedTuple):
    """One savepoint as a backend stores it: what ``_read_savepoint`` returns.

    ``blobs`` maps each name of the savepoint's refs to its bytes, all read in the same
    consistent step as the manifest (a transaction, a lock, one statement), so a prune
    or replace by another handle never leaves a manifest without the packs it needs.
    A name missing from ``blobs`` is damage, which the base reports.
    """

    timestamp: int
    manifest: bytes
    blobs: dict[str, bytes]


#: The causes of an OSError a user can act on, named plainly in a BackendError.
_PLAIN_OS_ERRORS = {
    errno.ENOSPC: "the disk is full",
    errno.EDQUOT: "the disk quota is exceeded",
    errno.EROFS: "the file system is read-only",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EIO: "I/O error",
    errno.EFBIG: "file too large",
}


def describe_error(exc: BaseException) -> str:
    """A driver error in a few words: a full disk or a read-only store said plainly."""
    if isinstance(exc, OSError) and exc.errno in _PLAIN_OS_ERRORS:
        code = errno.errorcode[exc.errno]
        path = f" ({exc.filename})" if exc.filename else ""
        return f"{_PLAIN_OS_ERRORS[exc.errno]} ({code}){path}"
    return f"{type(exc).__name__}: {exc}"


@dataclass(frozen=True)
class Capabilities:
    """What a backend offers beyond what every backend keeps (:attr:`Storage.capabilities`).

    Every backend keeps the whole contract: atomic, durable saves; a savepoint
    replaced at its timestamp in one step; writer tokens that fence other writers.
    These flags say where the store may be shared from, and whether this handle writes.
    """

    #: Data outlives the process (memory:// does not).
    durable: bool
    #: Processes on one host may use the store at once.
    multi_process: bool
    #: Processes on several hosts may use the store at once.
    multi_host: bool
    #: This handle can only read (a read-only file or mount); every write raises BackendError.
    read_only: bool = False


class StoredState(NamedTuple):
    """How one entity's state is stored: its encoded and stored (maybe compressed) bytes,
    and the pack that holds it."""

    entity_id: str
    encoded_size: int
    stored_size: int
    compressed: bool
    pack: str = ""


class SavepointLayout(NamedTuple):
    """How one savepoint is stored (:meth:`Storage.describe_savepoint`), no state read.

    ``packs`` maps each pack the savepoint refers to (its own and, for an incremental
    savepoint, earlier ones) to its size; ``manifest_size`` is the manifest's bytes.
    """

    timestamp: int
    codec: str
    manifest_size: int
    packs: dict[str, int]
    states: list[StoredState]

    @property
    def state_bytes(self) -> int:
        """The encoded bytes of every state together (what the codec wrote)."""
        return sum(state.encoded_size for state in self.states)

    @property
    def states_written(self) -> int:
        """The states this savepoint wrote anew: those in packs named for its timestamp
        (a pack's name starts with the timestamp of the save that wrote it); the others
        are reused from earlier savepoints' packs."""
        own = f"{self.timestamp:020d}-"
        return sum(1 for state in self.states if state.pack.startswith(own))


class SavepointSummary(NamedTuple):
    """A savepoint's sizes (:meth:`Storage.summarize_savepoint`): what statistics need.

    ``state_bytes`` is the encoded size of every state together; ``states_written`` the
    states this savepoint stored anew (the others it reuses from earlier savepoints'
    packs); ``packs`` maps each pack a state is in to its stored size, and
    ``manifest_size`` is the manifest's bytes.
    """

    timestamp: int
    entity_count: int
    state_bytes: int
    states_written: int
    manifest_size: int
    packs: dict[str, int]


class _Summaries:
    """The summaries a storage object made, by (run, timestamp), each kept with a digest
    of the manifest it was made from: a savepoint replaced since has another manifest,
    so a summary is never served for bytes it does not describe."""

    def __init__(self) -> None:
        self._entries: dict[tuple[str, int], tuple[bytes, SavepointSummary]] = {}
        self._lock = threading.Lock()

    @staticmethod
    def digest(manifest: bytes) -> bytes:
        return hashlib.blake2b(manifest, digest_size=16).digest()

    def get(self, key: tuple[str, int], digest: bytes) -> SavepointSummary | None:
        with self._lock:
            found = self._entries.get(key)
        if found is None or found[0] != digest:
            return None
        return found[1]._replace(packs=dict(found[1].packs))  # the caller's to change

    def put(self, key: tuple[str, int], digest: bytes, summary: SavepointSummary) -> None:
        with self._lock:
            self._entries.pop(key, None)
            self._entries[key] = (digest, summary)
            if len(self._entries) > SUMMARY_CACHE_SIZE:  # the oldest goes first
                del self._entries[next(iter(self._entries))]


class WriterToken(NamedTuple):
    """A run's current writer token (:meth:`Storage.current_writer`) and when it was taken.

    ``taken_at`` is epoch milliseconds by the clock of the process that took it (by the
    database server's clock on PostgreSQL, the file's modification time in a file
    store), or None when the store did not record it (a token taken by an older
    statestore). Display only: nothing depends on it, so it carries no checksum.
    """

    token: int
    taken_at: int | None


def epoch_ms() -> int:
    """Now, in integer milliseconds since the Unix epoch: the time a backend records."""
    return time.time_ns() // 1_000_000


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

    #: What this backend offers; a handle that can only read says so in its own copy.
    capabilities: Capabilities = Capabilities(durable=True, multi_process=True, multi_host=False)

    #: Driver exceptions this backend lets escape its primitives; translated to
    #: :class:`~statestore.errors.BackendError` in one place (:meth:`_boundary`).
    driver_errors: tuple[type[BaseException], ...] = (OSError,)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # Metrics of what each save wrote and each prune deleted (statestore.observe).
        observe.watch_primitives(cls)

    def __init__(self, codec: Codec | None = None) -> None:
        self.codec: Codec = codec if codec is not None else SafeCodec()
        #: The most bytes one savepoint's states may encode to in all, on save and on
        #: read (a bound against decompression bombs); ``open_storage`` sets it from its
        #: ``max_savepoint_bytes`` option.
        self.max_savepoint_bytes: int = layout.MAX_SAVEPOINT_BYTES
        self._closed = False
        self._close_lock = threading.Lock()
        # The previous savepoint of recently written or loaded runs, by entity: what
        # makes the next save incremental. Insertion-ordered; oldest evicted first. A
        # loaded savepoint is kept as its manifest and made a base when a save needs it.
        self._reuse_bases: dict[str, ReuseBase | layout.Manifest] = {}
        self._reuse_bases_lock = threading.Lock()
        self._summaries = _Summaries()
        #: The threads the ``a``-prefixed twins run in (statestore.aio), started on first use.
        self._workers = Workers(type(self).__name__, self.async_workers)

    #: How many worker threads this storage's coroutine twins may use at once.
    async_workers: int = DEFAULT_WORKERS

    # ---------------------------------------------------------------- the contract

    def is_initialized(self, run_id: str) -> bool:
        """Whether storage exists for ``run_id``."""
        run_id = validate.run_id(run_id)
        with self._boundary(run_id):
            return self._run_exists(run_id)

    def init_storage(self, run_id: str) -> None:
        """Create storage for ``run_id``; calling it again changes nothing."""
        run_id = validate.run_id(run_id)
        with self._boundary(run_id):
            self._create_run(run_id)

    def save_savepoint(
        self,
        run_id: str,
        timestamp: int,
        entities: Iterable[tuple[str, Any]],
        *,
        writer_token: int | None = None,
        state_version: int = 1,
    ) -> None:
        """Persist one savepoint, all or nothing; durable once this returns.

        Saving at an existing timestamp replaces that savepoint. With
        ``writer_token``, the save is refused with
        :class:`~statestore.errors.StaleWriterError` (storing nothing) unless the
        token is still the run's current one (see :meth:`acquire_writer`). Every state
        records ``state_version`` (see :meth:`load_savepoint`).
        """
        run_id = validate.save_target(run_id, timestamp, writer_token)
        state_version = validate.state_version(state_version)
        ids, states = validate.entities(entities, run_id)
        encoded = layout.encode_states(self.codec, ids, states, run_id)
        self._save(
            run_id, timestamp, ids, encoded, writer_token=writer_token, state_version=state_version
        )

    def encode_state(self, run_id: str, entity_id: str, state: Any) -> bytes:
        """Encode one state with this storage's codec, as :meth:`save_encoded_savepoint` takes it.

        Encoding at the moment of the call captures the state by value: the caller may
        mutate the object afterwards. Raises :class:`~statestore.errors.EncodeError`
        naming the run, the entity and the type.
        """
        run_id = validate.run_id(run_id)
        if not isinstance(entity_id, str):
            raise InvalidArgumentError(
                f"run {run_id!r}: entity id must be a str, not {entity_id!r}"
            )
        return layout.encode_state(self.codec, entity_id, state, run_id)

    def save_encoded_savepoint(
        self,
        run_id: str,
        timestamp: int,
        encoded_entities: Iterable[tuple[str, bytes]],
        *,
        writer_token: int | None = None,
        state_version: int = 1,
    ) -> None:
        """Like :meth:`save_savepoint`, with states already encoded by :meth:`encode_state`.

        The engine encodes each state once when an entity saves it and reuses the
        bytes for every savepoint that save fills. Bytes that :meth:`encode_state` did
        not return (from an archive, another store) are checked to be one value this
        storage's codec decodes, else :class:`~statestore.errors.InvalidArgumentError`
        and nothing is stored.
        """
        run_id = validate.save_target(run_id, timestamp, writer_token)
        state_version = validate.state_version(state_version)
        ids, encoded = validate.entities(encoded_entities, run_id)
        self._check_encoded(run_id, ids, encoded)
        self._save(
            run_id, timestamp, ids, encoded, writer_token=writer_token, state_version=state_version
        )

    def save_changes(
        self,
        run_id: str,
        timestamp: int,
        changed: Iterable[tuple[str, Any]],
        removed: Iterable[str] = (),
        *,
        writer_token: int | None = None,
        state_version: int = 1,
    ) -> None:
        """Persist a savepoint given as changes to this handle's last one of the run.

        The savepoint stored at ``timestamp`` is the one this storage object last saved
        or loaded (with :meth:`get_latest_savepoint` or :meth:`load_savepoint`) for
        ``run_id`` (its *base*), with the states of ``changed`` set (ids the base lacks
        are appended, in the order given) and the ids of ``removed`` left out (ids it
        lacks are ignored). Its cost grows with the changes, not with the run: only the
        changed states are encoded and written, and the manifest written is a delta.
        The changed states record ``state_version``; the others keep theirs.

        Raises :class:`~statestore.errors.NoSavepointError`, storing nothing, when this
        handle has no base for the run (save a whole savepoint or load the run first)
        or when the base's stored parts were deleted meanwhile (by a prune in another
        process, say). Otherwise as :meth:`save_savepoint`: atomic, durable, fenced by
        ``writer_token``, replacing a savepoint at ``timestamp``.
        """
        run_id = validate.save_target(run_id, timestamp, writer_token)
        state_version = validate.state_version(state_version)
        ids, states = validate.entities(changed, run_id)
        gone = validate.removed_ids(removed, run_id, ids)
        encoded = layout.encode_states(self.codec, ids, states, run_id)
        self._save_changes(
            run_id, timestamp, ids, encoded,
            removed=gone, writer_token=writer_token, state_version=state_version,
        )  # fmt: skip

    def save_encoded_changes(
        self,
        run_id: str,
        timestamp: int,
        changed: Iterable[tuple[str, bytes]],
        removed: Iterable[str] = (),
        *,
        writer_token: int | None = None,
        state_version: int = 1,
    ) -> None:
        """Like :meth:`save_changes`, with states already encoded by :meth:`encode_state`."""
        run_id = validate.save_target(run_id, timestamp, writer_token)
        state_version = validate.state_version(state_version)
        ids, encoded = validate.entities(changed, run_id)
        self._check_encoded(run_id, ids, encoded)
        gone = validate.removed_ids(removed, run_id, ids)
        self._save_changes(
            run_id, timestamp, ids, encoded,
            removed=gone, writer_token=writer_token, state_version=state_version,
        )  # fmt: skip

    def _check_encoded(self, run_id: str, ids: list[str], encoded: list[Any]) -> None:
        # In bulk first (C loops: the engine saves thousands of states at once); one by
        # one only to name the entity at fault.
        kinds = set(map(type, encoded))
        if not kinds <= {bytes, layout.EncodedState} or (
            encoded and max(map(len, encoded)) > layout.MAX_STATE_BYTES
        ):
            for entity_id, data in zip(ids, encoded, strict=True):
                if not isinstance(data, bytes):
                    raise InvalidArgumentError(
                        f"run {run_id!r}: entity {entity_id!r}: encoded state must be "
                        f"bytes, not {type(data).__name__}"
                    )
                layout.check_state_size(run_id, entity_id, data)
        if kinds != {layout.EncodedState}:  # states encode_state made need no check
            layout.check_encoded(self.codec, run_id, ids, encoded)

    def _save(
        self,
        run_id: str,
        timestamp: int,
        ids: list[str],
        encoded: list[bytes],
        *,
        writer_token: int | None,
        state_version: int,
        keep_versions: bool = False,
    ) -> None:
        total = sum(map(len, encoded))
        layout.check_savepoint_size(run_id, timestamp, total, self.max_savepoint_bytes)
        base = self._reuse_base(run_id)
        built = layout.build_record(
            run_id, timestamp, self.codec, ids, encoded,
            base=base, state_version=state_version, keep_versions=keep_versions,
        )  # fmt: skip

        def anew() -> tuple[SavepointRecord, ReuseBase]:
            # The base savepoint was pruned under us: save every state anew.
            return layout.build_record(
                run_id, timestamp, self.codec, ids, encoded, state_version=state_version
            )

        # A change set's unchanged states were in the base's packs: they cannot be anew.
        self._commit_built(
            run_id, timestamp, built, writer_token, anew=None if keep_versions else anew
        )

    def _save_changes(
        self,
        run_id: str,
        timestamp: int,
        ids: list[str],
        encoded: list[bytes],
        *,
        removed: list[str],
        writer_token: int | None,
        state_version: int,
    ) -> None:
        base = self._reuse_base(run_id)
        if base is None or base.manifest.codec != self.codec.name:
            raise NoSavepointError(
                f"run {run_id!r}: this storage has no savepoint of the run to apply changes "
                "to; save a whole savepoint or load the run first; nothing was stored"
            )
        built = layout.build_changes(
            timestamp,
            self.codec,
            base,
            ids,
            encoded,
            removed_ids=removed,
            state_version=state_version,
        )
        if built is None:
            # The packs would hold too much dead data: save the whole savepoint, which
            # copies the live states of the sparsest packs forward.
            self._save_merged(
                run_id, timestamp, base, dict(zip(ids, encoded, strict=True)),
                removed=removed, writer_token=writer_token, state_version=state_version,
            )  # fmt: skip
            return
        self._commit_built(run_id, timestamp, built, writer_token, anew=None)

    def _commit_built(
        self,
        run_id: str,
        timestamp: int,
        built: tuple[SavepointRecord, ReuseBase],
        writer_token: int | None,
        *,
        anew: Callable[[], tuple[SavepointRecord, ReuseBase]] | None,
    ) -> None:
        """Commit a laid-out savepoint and remember it as the run's base.

        The limit is checked on what a reader checks (the packs' decoded bodies), so
        nothing is written that cannot be read back. When the base's blobs are gone,
        ``anew`` lays the savepoint out without them; without it, NoSavepointError.
        """
        record, after = built
        total = sum(after.manifest.pack_raw[pack] for pack in after.manifest.live_packs())
        layout.check_savepoint_size(run_id, timestamp, total, self.max_savepoint_bytes)
        try:
            with self._boundary(run_id, timestamp):
                try:
                    self._commit(run_id, record, writer_token)
                except MissingBlobsError:
                    if anew is None:
                        raise self._base_gone(run_id) from None
                    record, after = anew()
                    self._commit(run_id, record, writer_token)
        except BaseException:
            self._forget_base(run_id)
            raise
        self._remember_base(run_id, after)

    def _save_merged(
        self,
        run_id: str,
        timestamp: int,
        base: ReuseBase,
        changed: dict[str, bytes],
        *,
        removed: list[str],
        writer_token: int | None,
        state_version: int,
    ) -> None:
        """A change set saved as a whole savepoint: the base's stored states, changed."""
        try:
            manifest, parts = self._read_checked(run_id, base.timestamp)
        except NoSavepointError:
            raise self._base_gone(run_id) from None
        if not isinstance(manifest, layout.Manifest) or manifest.tables != base.manifest.tables:
            raise self._base_gone(run_id)  # replaced at its timestamp since
        states = dict(layout.extract_states(run_id, manifest, parts.blobs))
        for entity_id in removed:
            states.pop(entity_id, None)
        states.update(changed)
        self._save(
            run_id, timestamp, list(states), list(states.values()),
            writer_token=writer_token, state_version=state_version, keep_versions=True,
        )  # fmt: skip

    @staticmethod
    def _base_gone(run_id: str) -> NoSavepointError:
        return NoSavepointError(
            f"run {run_id!r}: the savepoint this change set applies to was deleted or "
            "replaced meanwhile; save a whole savepoint instead; nothing was stored"
        )

    def _reuse_base(self, run_id: str) -> ReuseBase | None:
        with self._reuse_bases_lock:
            base = self._reuse_bases.get(run_id)
        if not isinstance(base, layout.Manifest):
            return base
        # A loaded savepoint: read its packs again, check and hash them (see reuse_base).
        try:
            with self._boundary(run_id, base.timestamp):
                parts = self._read_savepoint(run_id, base.timestamp, with_blobs=True)
        except StateStoreError:
            parts = None  # gone or unreadable: this save is a full one
        made = None
        if parts is not None:
            made = layout.reuse_base(run_id, base, parts.manifest, parts.blobs)
        with self._reuse_bases_lock:
            if self._reuse_bases.get(run_id) is base:
                if made is None:
                    del self._reuse_bases[run_id]
                else:
                    self._reuse_bases[run_id] = made
        return made

    def _remember_base(self, run_id: str, base: ReuseBase | layout.Manifest) -> None:
        with self._reuse_bases_lock:
            self._reuse_bases.pop(run_id, None)
            self._reuse_bases[run_id] = base
            while len(self._reuse_bases) > REUSE_CACHE_RUNS:
                del self._reuse_bases[next(iter(self._reuse_bases))]

    def _forget_base(self, run_id: str) -> None:
        with self._reuse_bases_lock:
            self._reuse_bases.pop(run_id, None)

    def get_latest_savepoint(self, run_id: str) -> Savepoint:
        """The savepoint with the highest timestamp; ``NoSavepointError`` when none."""
        run_id = validate.run_id(run_id)
        return self._load(run_id, None, _savepoint)

    def get_latest_savepoint_timestamp(self, run_id: str) -> int:
        """The highest savepoint timestamp of the run, without reading any state."""
        run_id = validate.run_id(run_id)
        with self._boundary(run_id):
            rows = self._list_savepoints(run_id)
        if not rows:
            raise NoSavepointError(f"run {run_id!r} has no savepoint")
        return rows[-1].timestamp

    def get_savepoint(self, run_id: str, timestamp: int) -> Savepoint:
        """The savepoint at exactly ``timestamp``; ``NoSavepointError`` when none."""
        run_id = validate.run_id(run_id)
        return self._load(run_id, validate.timestamp(timestamp), _savepoint)

    def load_savepoint(self, run_id: str, timestamp: int | None = None) -> StoredSavepoint:
        """The savepoint at ``timestamp`` (the latest when None), with each state's version.

        ``versions[i]`` is the ``state_version`` entity ``i``'s state was saved with, so
        a caller can upgrade states written by older code. Loading the latest makes it
        this handle's base for :meth:`save_changes`.
        """
        run_id = validate.run_id(run_id)
        at = None if timestamp is None else validate.timestamp(timestamp)
        return self._load(run_id, at, _stored_savepoint)

    def list_savepoints(self, run_id: str) -> list[SavepointInfo]:
        """Every savepoint of the run, ascending by timestamp (empty for an unknown run)."""
        run_id = validate.run_id(run_id)
        with self._boundary(run_id):
            return list(self._list_savepoints(run_id))

    def read_encoded_savepoint(self, run_id: str, timestamp: int | None = None) -> EncodedSavepoint:
        """A savepoint's states as the codec wrote them, every checksum verified, none decoded.

        For moving savepoints between stores byte for byte (``statestore copy``,
        ``export``) whatever codec wrote them: ``codec`` names it, and
        :meth:`save_encoded_savepoint` on the destination stores the same bytes.
        ``timestamp=None`` reads the latest savepoint.
        """
        run_id = validate.run_id(run_id)
        if timestamp is not None:
            timestamp = validate.timestamp(timestamp)
        manifest, parts = self._read_checked(run_id, timestamp)
        entities = layout.extract_states(run_id, manifest, parts.blobs)
        return EncodedSavepoint(manifest.timestamp, manifest.codec, entities)

    def describe_savepoint(self, run_id: str, timestamp: int) -> SavepointLayout:
        """How the savepoint at ``timestamp`` is stored, from its checked manifest alone.

        Reads no state (for sizes and statistics); ``NoSavepointError`` when there is no
        such savepoint, ``CorruptSavepointError`` when its manifest is damaged.
        """
        run_id = validate.run_id(run_id)
        timestamp = validate.timestamp(timestamp)
        # With the blobs: a manifest's tables are blobs too.
        manifest, parts = self._read_checked(run_id, timestamp)
        states = [StoredState(*stored) for stored in layout.stored_states(manifest)]
        packs = layout.summarize(manifest)[2]
        return SavepointLayout(
            manifest.timestamp, manifest.codec, len(parts.manifest), packs, states
        )

    def summarize_savepoint(self, run_id: str, timestamp: int) -> SavepointSummary:
        """The sizes of the savepoint at ``timestamp``, from its checked manifest.

        What :meth:`describe_savepoint` gives in total, without an object per entity, and
        remembered: asked again while the savepoint's manifest is unchanged, it reads only
        the manifest (a listing of a large run's savepoints, page after page, reads each
        savepoint's tables once). Damage to a table after its summary was made shows in a
        load or a verify, not here. ``NoSavepointError`` when there is no such savepoint,
        ``CorruptSavepointError`` when its manifest is damaged.
        """
        run_id = validate.run_id(run_id)
        timestamp = validate.timestamp(timestamp)
        key = (run_id, timestamp)
        with self._boundary(run_id, timestamp):
            head = self._read_savepoint(run_id, timestamp, with_blobs=False)
        if head is not None:
            found = self._summaries.get(key, _Summaries.digest(head.manifest))
            if found is not None:
                return found
        # Not remembered (or not there: the read below says so).
        manifest, parts = self._read_checked(run_id, timestamp)
        state_bytes, written, packs = layout.summarize(manifest)
        summary = SavepointSummary(
            timestamp, len(manifest.ids), state_bytes, written, len(parts.manifest), packs
        )
        self._summaries.put(key, _Summaries.digest(parts.manifest), summary)
        return summary

    def can_decode(self, codec_name: str) -> bool:
        """Whether this storage decodes states written by the codec named ``codec_name``."""
        try:
            layout.codec_for(codec_name, self.codec, "", 0)
        except ConfigError:
            return False
        return True

    def decode_encoded_savepoint(self, run_id: str, encoded: EncodedSavepoint) -> Savepoint:
        """Decode what :meth:`read_encoded_savepoint` returned, with this storage's codecs.

        ``ConfigError`` when the codec that wrote it is not this storage's (see
        :meth:`can_decode`); ``CorruptSavepointError`` for a state that does not decode.
        """
        run_id = validate.run_id(run_id)
        timestamp, codec_name, entities = encoded
        codec = layout.codec_for(codec_name, self.codec, run_id, timestamp)
        return Savepoint(
            timestamp,
            [
                (entity_id, layout.decode_state(run_id, timestamp, entity_id, codec, data))
                for entity_id, data in entities
            ],
        )

    def delete_savepoints(self, run_id: str, timestamps: Iterable[int]) -> None:
        """Delete exactly these savepoints of the run; timestamps it does not have are ignored."""
        run_id = validate.run_id(run_id)
        doomed = sorted({validate.timestamp(ts) for ts in timestamps})
        if doomed:
            with self._boundary(run_id):
                self._delete_savepoints(run_id, doomed)

    def list_runs(self) -> list[str]:
        """Every run id with storage, sorted."""
        with self._boundary():
            return sorted(self._list_run_ids())

    def delete_old_savepoints(self, run_id: str, keep_n: int) -> None:
        """Keep the ``keep_n`` newest savepoints of the run, delete the rest."""
        run_id = validate.run_id(run_id)
        keep_n = validate.keep_n(keep_n)
        with self._boundary(run_id):
            rows = self._list_savepoints(run_id)
            doomed = rows[: max(len(rows) - keep_n, 0)]
            if doomed:
                self._delete_savepoints(run_id, [row.timestamp for row in doomed])

    def delete_run(self, run_id: str) -> None:
        """Delete everything of the run; unknown runs are ignored."""
        run_id = validate.run_id(run_id)
        self._forget_base(run_id)
        with self._boundary(run_id):
            self._drop_run(run_id)

    def acquire_writer(self, run_id: str) -> int:
        """Take the run's writer token: a number that only grows.

        Saves passing an older token are refused from then on, across threads,
        processes and (for server backends) hosts.
        """
        run_id = validate.run_id(run_id)
        with self._boundary(run_id):
            if not self._run_exists(run_id):
                raise RunNotInitializedError(f"run {run_id!r} is not initialized")
            return self._take_writer_token(run_id)

    def current_writer(self, run_id: str) -> WriterToken | None:
        """The run's current writer token and when it was taken; None when no writer
        has taken one yet. Raises RunNotInitializedError for a run without storage.

        Shows who holds the run: a token taken long ago by a job that no longer saves
        is a writer that died, one taken a minute ago a job that just (re)started.
        """
        run_id = validate.run_id(run_id)
        with self._boundary(run_id):
            found = self._read_writer_token(run_id)
            if found is None and not self._run_exists(run_id):
                raise RunNotInitializedError(f"run {run_id!r} is not initialized")
            return found

    def compact(self) -> None:
        """Give space freed by deleted savepoints back to the operating system."""
        with self._boundary():
            self._compact()

    def disk_usage(self) -> int | None:
        """Bytes the store takes on this machine's disks; None where it lives elsewhere
        (a server, object storage, memory), so a caller never shows a made-up figure."""
        with self._boundary():
            return self._disk_usage()

    def close(self) -> None:
        """Release connections and files; further use is an error of the caller."""
        # The coroutine twins' calls, queued or running, finish first, on the open store.
        self._workers.shutdown()
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

    # ---------------------------------------------------------------- coroutine twins
    # The same operations, awaitable (DESIGN §9, docs/async.md): each runs the blocking
    # method above in this storage's worker threads; ``persists`` marks those that write.

    ais_initialized = twin(is_initialized, persists=False)
    ainit_storage = twin(init_storage, persists=True)
    asave_savepoint = twin(save_savepoint, persists=True)
    asave_encoded_savepoint = twin(save_encoded_savepoint, persists=True)
    asave_changes = twin(save_changes, persists=True)
    asave_encoded_changes = twin(save_encoded_changes, persists=True)
    aget_latest_savepoint = twin(get_latest_savepoint, persists=False)
    aload_savepoint = twin(load_savepoint, persists=False)
    aget_latest_savepoint_timestamp = twin(get_latest_savepoint_timestamp, persists=False)
    aget_savepoint = twin(get_savepoint, persists=False)
    alist_savepoints = twin(list_savepoints, persists=False)
    alist_runs = twin(list_runs, persists=False)
    adelete_old_savepoints = twin(delete_old_savepoints, persists=True)
    adelete_run = twin(delete_run, persists=True)

    async def aclose(self) -> None:
        """Awaitable :meth:`close`: waits for the twins' calls in flight, then closes.

        It runs on a thread of its own, since closing waits for this storage's worker
        threads and cannot run on one of them; cancelled, it ends first, as a write does.
        """
        await self._workers.close_with(self.close)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()

    # ---------------------------------------------------------------- shared helpers

    def _read_checked(
        self, run_id: str, timestamp: int | None
    ) -> tuple[layout.Manifest | layout.ManifestV1, SavepointParts]:
        """A savepoint's checked manifest and its stored parts (the manifest's bytes, its
        packs and tables); NoSavepointError when there is none."""
        with self._boundary(run_id, timestamp):
            parts = self._read_savepoint(run_id, timestamp, with_blobs=True)
        if parts is None:
            where = "no savepoint" if timestamp is None else f"no savepoint at {timestamp}"
            raise NoSavepointError(f"run {run_id!r} has {where}")
        return self._decode_manifest(run_id, parts), parts

    def _decode_manifest(
        self, run_id: str, parts: SavepointParts
    ) -> layout.Manifest | layout.ManifestV1:
        return layout.decode_manifest(
            run_id,
            parts.timestamp,
            parts.manifest,
            parts.blobs,
            max_savepoint_bytes=self.max_savepoint_bytes,
        )

    def _load(
        self,
        run_id: str,
        timestamp: int | None,
        build: Callable[[layout.Manifest | layout.ManifestV1, list[tuple[str, Any]]], _T],
    ) -> _T:
        """A decoded savepoint, as ``build(manifest, entities)`` makes it.

        The collector stays paused until the result is built: every object made here is
        part of it, not garbage (see :mod:`statestore.collector`).
        """
        with collector.paused():
            manifest, parts = self._read_checked(run_id, timestamp)
            codec = layout.codec_for(manifest.codec, self.codec, run_id, manifest.timestamp)
            entities = layout.decode_states(run_id, manifest, parts.blobs, codec)
            if timestamp is None and isinstance(manifest, layout.Manifest):
                # A resumed run saves next: that save builds on what was loaded.
                self._remember_base(run_id, manifest)
            return build(manifest, entities)

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
        """One line about a driver error; backends override to name their store or to
        redact secrets."""
        return f"{type(self).__name__} failed: {describe_error(exc)}"

    @staticmethod
    def _stale(run_id: str, writer_token: int, current: int) -> StaleWriterError:
        return StaleWriterError(
            f"run {run_id!r}: writer token {writer_token} is stale (current token is {current}); "
            "another writer has taken this run, nothing was stored"
        )

    @staticmethod
    def _not_initialized(run_id: str) -> RunNotInitializedError:
        return RunNotInitializedError(
            f"run {run_id!r} is not initialized; call init_storage({run_id!r}) first"
        )

    # ---------------------------------------------------------------- primitives
    #
    # What a backend implements. Arguments are already validated (``run_id`` a valid
    # run id, timestamps ints in range); a primitive raises the driver's own errors
    # (listed in ``driver_errors``), which the base turns into BackendError naming the
    # run and savepoint, or the statestore errors its docstring names.

    @classmethod
    @abstractmethod
    def from_url(cls, url: str, codec: Codec | None = None, **options: Any) -> Self:
        """Open the store a URL of this backend's scheme names (see :func:`open_storage`).

        ``url`` has had the options every backend shares taken out (``max_savepoint_bytes``);
        ``options`` are the keywords given to ``open_storage``. Refuse an unknown option,
        or one given both in the URL and as a keyword, with ConfigError naming it.
        """

    @classmethod
    def missing_location(cls, url: str) -> str | None:
        """Where the local store ``url`` names would be, when nothing is there yet.

        The command line asks before it opens a store for reading, so that a mistyped
        path is "no store at ..." instead of a new, empty store. ``None`` (the default)
        when the store exists, when the URL is not well formed (opening it explains
        why), or when the backend has no local location (a server, memory).
        """
        return None

    @abstractmethod
    def _create_run(self, run_id: str) -> None:
        """Make storage for the run: then ``_run_exists`` is true, ``_list_savepoints`` empty.

        Idempotent: a run that exists is left as it is. Atomic: a crash leaves the run
        either absent or complete, never half-made.
        """

    @abstractmethod
    def _run_exists(self, run_id: str) -> bool:
        """Whether storage for the run exists (it may hold no savepoint yet)."""

    @abstractmethod
    def _list_run_ids(self) -> list[str]:
        """Every run id with storage, exactly as given to ``_create_run``, in any order."""

    @abstractmethod
    def _drop_run(self, run_id: str) -> None:
        """Delete the run, its savepoints, blobs and writer token, as one atomic step.

        A reader sees the whole run or none of it. An unknown run is no error.
        Must not interleave with ``_commit`` or ``_delete_savepoints`` of the same run.
        """

    @abstractmethod
    def _take_writer_token(self, run_id: str) -> int:
        """Increment the run's writer token, record when, and return it, atomically and durably.

        Tokens only grow, across processes and hosts: two callers never get the same
        one. Raise ``self._not_initialized(run_id)`` for a run without storage.
        """

    @abstractmethod
    def _read_writer_token(self, run_id: str) -> WriterToken | None:
        """The run's current token and when ``_take_writer_token`` took it.

        Record the time (:func:`epoch_ms`) in the same step as the token; None for a run
        whose token was never taken (or a run without storage), ``taken_at`` None for a
        token whose time was not recorded. A reading only: never raise for a damaged time.
        """

    @abstractmethod
    def _commit(self, run_id: str, record: SavepointRecord, writer_token: int | None) -> None:
        """Store one savepoint as one atomic, durable step; durable when this returns.

        Store ``record.blobs`` (new, uniquely named, immutable) and ``record.manifest``
        at ``record.timestamp`` with its ``record.refs`` (every blob it needs, new ones
        and earlier ones) and its ``entity_count`` and ``size`` for ``_list_savepoints``. A
        savepoint already at that timestamp is replaced, and blobs only it referred to
        are freed. Inside the same step:

        * with a ``writer_token``, raise ``self._stale(run_id, writer_token, current)``
          unless it is the run's current token;
        * raise :class:`MissingBlobsError` when a name of ``record.refs`` that is not
          in ``record.blobs`` is not stored (a prune by another handle freed it; the
          base then saves in full);
        * raise ``self._not_initialized(run_id)`` for a run without storage.

        A crash at any moment leaves the previous state or the new one. Must not
        interleave with ``_delete_savepoints`` or ``_drop_run`` of the same run: the check
        that earlier blobs exist holds until the commit is done (a transaction, a lock
        on the run, a conditional write of the run's head object).
        """

    @abstractmethod
    def _read_savepoint(
        self, run_id: str, timestamp: int | None, *, with_blobs: bool
    ) -> SavepointParts | None:
        """One savepoint as stored, read in one consistent step, or None when there is none.

        ``timestamp`` None means the latest. With ``with_blobs``, ``blobs`` holds every
        stored blob named by the savepoint's refs, read consistently with the manifest: a
        concurrent prune or replace must not leave a manifest without its packs (read
        both in one transaction or statement, or hold the run's lock, or retry on the
        newer head). Without it, ``blobs`` is empty (the manifest alone, to describe it).
        A blob that is missing although the manifest names it is left out: the base
        reports that as damage. Check nothing else: the base verifies every byte.
        """

    @abstractmethod
    def _list_savepoints(self, run_id: str) -> list[SavepointInfo]:
        """Every savepoint of the run as ``SavepointInfo``, ascending by timestamp.

        Reads no manifest or blob. A savepoint whose stored metadata is damaged is still
        listed (with entity count and size 0), so it can be verified, skipped by a
        resuming run and pruned; a row whose timestamp cannot be trusted is left out.
        An unknown run has no savepoints.
        """

    @abstractmethod
    def _delete_savepoints(self, run_id: str, timestamps: Sequence[int]) -> None:
        """Delete these savepoints (those the run has) and free every blob no remaining
        savepoint refers to, atomically and durably. Must not interleave with ``_commit``
        or ``_drop_run`` of the same run."""

    def _close(self) -> None:  # noqa: B027 - optional hook
        """Release resources; the default has none."""

    def _compact(self) -> None:  # noqa: B027 - optional hook
        """Return freed space to the OS (SQLite VACUUM, ...); the default has nothing to do."""

    def _disk_usage(self) -> int | None:
        """Bytes of every local file the store consists of, or None (the default) for a
        store that is not a set of local files. Files that vanish while being counted
        (a concurrent prune) count as 0."""
        return None


# A span and metrics around each public operation; nothing at all without OpenTelemetry.
observe.instrument_operations(Storage)
