"""S3Storage: the storage primitives over S3 conditional writes, with no lock anywhere.

How each primitive keeps the contract (docs/s3.md has the whole protocol and its cost):

* Every write of a run goes through its **head object**, replaced only by a conditional
  put on the ETag this writer read (``If-Match``), or created with ``If-None-Match``.
  Two writers that read one head cannot both replace it: the loser re-reads and decides
  again, so commits, prunes, drops and token grabs of one run never interleave (rule 2
  of docs/backends.md) across processes and hosts.
* ``_commit`` uploads its blobs and manifest under fresh keys first (invisible: no head
  names them), then checks the token and the older blobs against the head it read and
  replaces that head; the replacement is the commit point. A lost race is retried on the
  new head unless the new head fences this writer or lost the blobs it builds on.
* Objects are deleted only after a head update that no longer names them succeeded: a
  prune or replace frees what the old head named; garbage (a writer killed between its
  uploads and its head update) is collected under a new *epoch* (see ``_head.py``).
* A request the server applied but whose answer was lost is retried by the client; a
  retried conditional head put then fails its precondition, and the writer finds its own
  nonce in the head: the write landed, it is not repeated.
"""

from __future__ import annotations

import dataclasses
import logging
import secrets
import threading
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any, cast

import obstore
from obstore.exceptions import (
    AlreadyExistsError,
    BaseError,
    NotSupportedError,
    PermissionDeniedError,
    PreconditionError,
)
from obstore.store import S3Store

from ...codecs import Codec
from ...errors import (
    BackendError,
    ConfigError,
    RunNotInitializedError,
    StaleWriterError,
    StateStoreError,
)
from .._base import (
    Capabilities,
    MissingBlobsError,
    SavepointInfo,
    SavepointParts,
    Storage,
    WriterToken,
    epoch_ms,
)
from ..layout import SavepointRecord
from . import _head
from ._head import Head, SavepointEntry, decode_head, encode_head, run_dir
from ._options import Settings, settings_from_url

if TYPE_CHECKING:
    from obstore import PutMode
    from obstore.store import ClientConfig, RetryConfig, S3Config

__all__ = ["S3Storage"]

logger = logging.getLogger("statestore.s3")

#: How often a read starts again when a prune or replace deleted what the head it read
#: named; each retry needs another host's head update in between, so a few suffice.
READ_ATTEMPTS = 10
#: How many runs' heads one handle remembers (see ``_read_head``).
HEAD_CACHE_RUNS = 64
#: Batch size of bulk deletes (S3's DeleteObjects takes at most 1000 keys).
DELETE_BATCH = 1000

Change = Callable[[Head | None], Head | None]


class S3Storage(Storage):
    """Savepoints in an S3 bucket (AWS S3, MinIO, R2, Ceph, SeaweedFS, ...), many hosts at once."""

    capabilities = Capabilities(durable=True, multi_process=True, multi_host=True)
    # obstore raises FileNotFoundError (an OSError) for a missing object, BaseError's
    # subclasses for the rest.
    driver_errors = (BaseError, OSError)

    def __init__(self, settings: Settings, codec: Codec | None = None) -> None:
        super().__init__(codec)
        self.settings = settings
        #: Requests this handle sent, by kind (GET, PUT, LIST, DELETE): what a store's
        #: bill counts. The client's own retries of a failed request are not counted.
        self.requests: Counter[str] = Counter()
        self._requests_lock = threading.Lock()
        # The head (and its ETag) this handle last read or wrote, by run, most recent
        # last: a write starts from it and saves the head's GET when no one else wrote.
        self._heads: dict[str, tuple[Head, str]] = {}
        self._heads_lock = threading.Lock()
        self._store = S3Store(
            settings.bucket,
            prefix=settings.prefix or None,
            config=cast("S3Config", settings.config),
            client_options=cast("ClientConfig", settings.client_options),
            retry_config=cast("RetryConfig", settings.retry_config),
        )
        with self._boundary():
            self._check_conditional_writes()

    @classmethod
    def from_url(cls, url: str, codec: Codec | None = None, **options: Any) -> S3Storage:
        """``s3://BUCKET[/PREFIX]``; options and environment variables in ``_options.py``."""
        return cls(settings_from_url(url, options), codec)

    def __repr__(self) -> str:
        return f"S3Storage({self.settings.target!r})"

    def _describe_failure(self, exc: BaseException) -> str:
        # obstore appends a multi-line debug dump; its first line says what failed.
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        return self.settings.scrub(
            f"S3 store {self.settings.target} failed: {type(exc).__name__}: {first}"
        )

    # ---------------------------------------------------------------- the check at open

    def _check_conditional_writes(self) -> None:
        """Refuse (or warn about) a server that ignores ``If-Match`` or ``If-None-Match``.

        Every safety rule of this backend rests on them: a server that ignored them would
        let two writers' head updates both land, and a fenced writer's savepoint with them.
        """
        key = f"{_head.PROBES}{secrets.token_hex(8)}"
        try:
            self._put(key, b"probe", "create")
        except PermissionDeniedError:
            # Credentials that may only read (an auditor's, ``statestore verify``): reads
            # need no conditional writes; every write will be refused by the server.
            self.capabilities = dataclasses.replace(self.capabilities, read_only=True)
            return
        try:
            enforced = self._refused(key, {"e_tag": '"statestore-probe-wrong-etag"'})
            enforced = enforced and self._refused(key, "create")
        finally:
            self._delete([key])
        if enforced:
            return
        message = (
            f"the S3 server of {self.settings.target} does not enforce conditional writes "
            "(a put with a wrong If-Match or an If-None-Match on an existing object "
            "succeeded); concurrent writers could corrupt runs"
        )
        if self.settings.conditional_writes == "require":
            raise ConfigError(
                f"{message}. Use a server that enforces them, or open the store with "
                "conditional_writes=warn if only one process ever writes to it"
            )
        logger.warning("%s; used anyway (conditional_writes=warn)", message)

    def _refused(self, key: str, mode: PutMode) -> bool:
        try:
            self._put(key, b"probe-overwritten", mode)
        except (PreconditionError, AlreadyExistsError, NotSupportedError):
            return True
        return False

    # ---------------------------------------------------------------- objects

    def _put(self, key: str, data: bytes, mode: PutMode = "overwrite") -> str | None:
        """Put one object; its new ETag (None if the server sent none)."""
        # One request: conditional puts cannot be multipart, and one savepoint's pack is
        # below S3's 5 GiB limit of a single put (max_savepoint_bytes is 2 GiB by default).
        self._count("PUT")
        result = obstore.put(self._store, key, data, mode=mode, use_multipart=False)
        return result.get("e_tag")

    def _get(self, key: str) -> tuple[bytes, str] | None:
        """The object's bytes and ETag, or None when there is no such object."""
        try:
            self._count("GET")
            result = obstore.get(self._store, key)
            return bytes(result.bytes()), str(result.meta["e_tag"])
        except FileNotFoundError:
            return None

    def _list_directories(self) -> dict[str, Any]:
        """The run directories of the store (one listing, paged by 1,000 by the client)."""
        self._count("LIST")
        return dict(obstore.list_with_delimiter(self._store, _head.RUNS))

    def _count(self, kind: str) -> None:
        with self._requests_lock:
            self.requests[kind] += 1

    def _delete(self, keys: Sequence[str]) -> None:
        if not keys:
            return
        for start in range(0, len(keys), DELETE_BATCH):
            self._count("DELETE")
            obstore.delete(self._store, list(keys[start : start + DELETE_BATCH]))

    def _delete_quietly(self, keys: Sequence[str]) -> None:
        """Delete objects no head names; a failure leaves garbage that compact collects."""
        try:
            self._delete(keys)
        except (BaseError, OSError) as exc:
            logger.warning("left %d unreferenced objects: %s", len(keys),
                           self._describe_failure(exc))  # fmt: skip

    # ---------------------------------------------------------------- the head

    def _cached_head(self, run_id: str) -> tuple[Head, str] | None:
        """The head (and ETag) this handle last read or wrote for the run, if it has one.

        Only a write may start from it, and only to write: the write is conditional on
        the ETag, so a head another host changed meanwhile fails it, and the writer reads
        the head afresh. Any other outcome from a remembered head (a refusal, nothing to
        do) is decided again on a fresh read; reads always ask the server.
        """
        with self._heads_lock:
            return self._heads.get(run_id)

    def _read_head(self, run_id: str) -> tuple[Head | None, str | None]:
        """The run's head and its ETag; (None, None) when the run never existed."""
        found = self._get(run_dir(run_id) + _head.HEAD)
        if found is None:
            self._forget_head(run_id)
            return None, None
        data, etag = found
        head = decode_head(data, f"run {run_id!r}")
        if head.run_id != run_id:
            raise BackendError(f"run {run_id!r}: the run's head object names another run")
        self._remember_head(run_id, head, etag)
        return head, etag

    def _remember_head(self, run_id: str, head: Head, etag: str | None) -> None:
        if etag is None:
            self._forget_head(run_id)
            return
        with self._heads_lock:
            self._heads.pop(run_id, None)
            self._heads[run_id] = (head, etag)
            while len(self._heads) > HEAD_CACHE_RUNS:
                del self._heads[next(iter(self._heads))]

    def _forget_head(self, run_id: str) -> None:
        with self._heads_lock:
            self._heads.pop(run_id, None)

    def _replace_head(self, run_id: str, new: Head, etag: str | None) -> bool:
        """Put ``new`` if the head is still the one with ``etag`` (None: no head yet).

        True when it landed; False when another writer changed the head first (the head
        read to find out is then this handle's remembered one). A put the server applied
        but whose answer was lost fails its precondition when the client retries it;
        finding its own nonce in the head then says it landed.
        """
        mode: PutMode = "create" if etag is None else {"e_tag": etag}
        try:
            new_etag = self._put(run_dir(run_id) + _head.HEAD, encode_head(new), mode)
        except (PreconditionError, AlreadyExistsError):
            current, _ = self._read_head(run_id)
            return current is not None and current.nonce == new.nonce
        except (BaseError, OSError):
            # The client gave up on the put (retries exhausted, connection lost): it may
            # have landed. The head says so; if it moved on, ours can no longer land.
            current, now = self._read_head(run_id)
            if current is not None and current.nonce == new.nonce:
                return True
            if now != etag:
                return False
            raise  # still the head we read: whether the put lands is unknown
        self._remember_head(run_id, new, new_etag)
        return True

    def _update(self, run_id: str, change: Change) -> tuple[Head | None, Head | None]:
        """Apply ``change`` to the run's head until it lands: (old head, new head).

        ``change`` returns the new head, or None for nothing to do (then the new head is
        None too), or raises; it is called again on the newer head after a lost race.
        """
        known = self._cached_head(run_id)
        while True:
            head, etag = known if known is not None else self._read_head(run_id)
            try:
                new = change(head)
            except (StateStoreError, MissingBlobsError):
                if known is None:
                    raise
                known = None  # decided on a remembered head: decide on a fresh one
                continue
            if new is None and known is not None:
                known = None
                continue
            known = None
            if new is None or self._replace_head(run_id, new, etag):
                return head, new
            known = self._cached_head(run_id)  # the head the lost race was read against

    def _collect_quietly(self, run_id: str, head: Head) -> None:
        """``_collect`` after a prune or drop that has landed: a failure to delete leaves
        garbage (which ``compact`` collects), not a failed prune."""
        try:
            self._collect(run_id, head)
        except (BaseError, OSError) as exc:
            logger.warning("run %r: unreferenced objects left: %s", run_id,
                           self._describe_failure(exc))  # fmt: skip

    def _collect(self, run_id: str, head: Head) -> None:
        """Delete every object of the run from before ``head.epoch`` that it does not name."""
        prefix = run_dir(run_id)
        needed = head.referenced_keys()
        doomed = []
        self._count("LIST")  # one per 1,000 keys listed, counted as one
        for batch in obstore.list(self._store, prefix):
            for meta in batch:
                relative = meta["path"].removeprefix(prefix)
                epoch = _head.epoch_of(relative)
                if epoch is not None and epoch < head.epoch and relative not in needed:
                    doomed.append(meta["path"])
        self._delete(doomed)

    # ---------------------------------------------------------------- primitives

    def _create_run(self, run_id: str) -> None:
        def change(head: Head | None) -> Head | None:
            if head is None:
                return Head(run_id=run_id).next()
            # A dropped run's tombstone keeps its token (a fenced writer stays fenced)
            # and its epoch (what the drop still deletes is below it).
            return head.next(deleted=False) if head.deleted else None

        self._update(run_id, change)

    def _run_exists(self, run_id: str) -> bool:
        head, _ = self._read_head(run_id)
        return head is not None and not head.deleted

    def _list_run_ids(self) -> list[str]:
        listing = self._list_directories()
        run_ids = []
        for directory in listing["common_prefixes"]:
            found = self._get(directory.rstrip("/") + "/" + _head.HEAD)
            if found is None:
                continue
            head = decode_head(found[0], f"{directory}")
            if not head.deleted and run_dir(head.run_id) == directory.rstrip("/") + "/":
                run_ids.append(head.run_id)
        return run_ids

    def _drop_run(self, run_id: str) -> None:
        def change(head: Head | None) -> Head | None:
            if head is None or head.deleted:
                return None
            return head.next(deleted=True, savepoints=(), blobs={}, epoch=head.epoch + 1)

        _, tombstone = self._update(run_id, change)
        if tombstone is not None:
            self._collect_quietly(run_id, tombstone)

    def _take_writer_token(self, run_id: str) -> int:
        def change(head: Head | None) -> Head | None:
            if head is None or head.deleted:
                raise self._not_initialized(run_id)
            return head.next(token=head.token + 1, token_taken_at=epoch_ms())

        _, new = self._update(run_id, change)
        assert new is not None
        return new.token

    def _read_writer_token(self, run_id: str) -> WriterToken | None:
        head, _ = self._read_head(run_id)
        if head is None or head.deleted or not head.token:
            return None
        return WriterToken(head.token, head.token_taken_at)

    def _commit(self, run_id: str, record: SavepointRecord, writer_token: int | None) -> None:
        written: list[str] = []
        try:
            self._commit_once_landed(run_id, record, writer_token, written)
        except (RunNotInitializedError, MissingBlobsError, StaleWriterError):
            self._delete_quietly(written)  # never named by a head: nobody needs them
            raise

    def _commit_once_landed(
        self, run_id: str, record: SavepointRecord, writer_token: int | None, written: list[str]
    ) -> None:
        prefix = run_dir(run_id)
        older = [name for name in record.refs if name not in record.blobs]
        uploaded_epoch: int | None = None
        manifest_key = ""
        known = self._cached_head(run_id)
        while True:
            head, etag = known if known is not None else self._read_head(run_id)
            refused = (
                head is None
                or head.deleted
                or (writer_token is not None and writer_token != head.token)
                or any(name not in head.blobs for name in older)
            )
            if refused and known is not None:
                known = None  # a remembered head refuses nothing: read the current one
                continue
            known = None
            if head is None or head.deleted:
                raise self._not_initialized(run_id)
            if writer_token is not None and writer_token != head.token:
                raise self._stale(run_id, writer_token, head.token)
            if any(name not in head.blobs for name in older):
                raise MissingBlobsError(run_id)
            if uploaded_epoch != head.epoch:
                # First attempt, or a collection raised the epoch since the upload and may
                # delete what was uploaded: upload again under the new epoch.
                self._delete_quietly(written)
                written.clear()
                for name, data in record.blobs.items():
                    self._put(prefix + _head.blob_key(head.epoch, name), data)
                    written.append(prefix + _head.blob_key(head.epoch, name))
                manifest_key = _head.new_manifest_key(head.epoch, record.timestamp)
                self._put(prefix + manifest_key, record.manifest)
                written.append(prefix + manifest_key)
                uploaded_epoch = head.epoch
            entry = SavepointEntry(
                record.timestamp, manifest_key, tuple(record.refs), record.entity_count, record.size
            )
            kept = [sp for sp in head.savepoints if sp.timestamp != record.timestamp]
            new = head.with_savepoints([*kept, entry], dict.fromkeys(record.blobs, head.epoch))
            if self._replace_head(run_id, new, etag):
                break
            known = self._cached_head(run_id)  # the head the lost race was read against
        # The commit landed: what the replaced savepoint alone named is free now.
        freed = head.referenced_keys() - new.referenced_keys()
        self._delete_quietly([prefix + key for key in sorted(freed)])

    def _read_savepoint(
        self, run_id: str, timestamp: int | None, *, with_blobs: bool
    ) -> SavepointParts | None:
        prefix = run_dir(run_id)
        for _attempt in range(READ_ATTEMPTS):
            head, etag = self._read_head(run_id)
            entry = None if head is None or head.deleted else head.entry(timestamp)
            if head is None or entry is None:
                return None
            found = self._get(prefix + entry.manifest_key) if entry.manifest_key else None
            blobs: dict[str, bytes] = {}
            complete = found is not None
            for name in entry.refs if with_blobs else ():
                epoch = head.blobs.get(name)
                blob = None if epoch is None else self._get(prefix + _head.blob_key(epoch, name))
                if blob is None:
                    complete = False
                else:
                    blobs[name] = blob[0]
            # Objects missing under an unchanged head are damage, which the base reports;
            # under a changed one, a prune or replace deleted them: read the newer head.
            if complete or self._read_head(run_id)[1] == etag:
                return SavepointParts(entry.timestamp, found[0] if found else b"", blobs)
        raise BackendError(
            f"run {run_id!r}: other writers changed the run during each of {READ_ATTEMPTS} "
            "attempts to read a savepoint; nothing is damaged, try again"
        )

    def _list_savepoints(self, run_id: str) -> list[SavepointInfo]:
        head, _ = self._read_head(run_id)
        if head is None or head.deleted:
            return []
        return [SavepointInfo(sp.timestamp, sp.entity_count, sp.size) for sp in head.savepoints]

    def _delete_savepoints(self, run_id: str, timestamps: Sequence[int]) -> None:
        doomed = set(timestamps)

        def change(head: Head | None) -> Head | None:
            if head is None or head.deleted:
                return None
            kept = [sp for sp in head.savepoints if sp.timestamp not in doomed]
            if len(kept) == len(head.savepoints):
                return None
            return replace(head.with_savepoints(kept, {}), epoch=head.epoch + 1)

        _, new = self._update(run_id, change)
        if new is not None:
            self._collect_quietly(run_id, new)

    def _compact(self) -> None:
        """Collect the garbage of every run: objects no head names, left by killed writers."""
        listing = self._list_directories()
        for directory in listing["common_prefixes"]:
            found = self._get(directory.rstrip("/") + "/" + _head.HEAD)
            if found is None:
                continue
            run_id = decode_head(found[0], directory).run_id
            if run_dir(run_id) != directory.rstrip("/") + "/":
                continue  # a head that is not where its run id puts it: not ours to touch
            _, new = self._update(run_id, _next_epoch)
            if new is not None:
                self._collect(run_id, new)


def _next_epoch(head: Head | None) -> Head | None:
    """The head with its epoch raised: what a collection writes before it deletes."""
    return None if head is None else head.next(epoch=head.epoch + 1)
