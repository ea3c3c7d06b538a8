"""The run's head object and the keys of everything else: the S3 backend's format.

Keys, relative to the store's prefix::

    runs/<sha256 of run id>/head                    the head: JSON, replaced conditionally
    runs/<sha256>/e<epoch:020d>/b/<blob name>       blobs (packs), immutable
    runs/<sha256>/e<epoch:020d>/m/<ts:020d>-<hex>   manifests, immutable, one key per write
    probes/<hex>                                     the check at open, deleted at once

A run's directory is the hash of its id (a run id may be 512 characters of anything);
the head holds the id itself. Objects are written under the *epoch* the writer read in
the head; a garbage collection (prune, ``compact``, ``delete_run``) raises the epoch
with its head update and then deletes only objects of lower epochs that the new head
does not name, so a writer's uploads can be collected only after its commit has become
impossible (its conditional head update would fail). See docs/s3.md.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
from dataclasses import dataclass, field, replace
from typing import Any

from ...errors import BackendError

__all__ = ["Head", "SavepointEntry", "decode_head", "encode_head", "run_dir"]

FORMAT = 1
RUNS = "runs/"
PROBES = "probes/"
HEAD = "head"
_EPOCH_DIGITS = 20
# What a head may name: checked on every read, so a damaged or hostile head can never
# make the backend read or delete outside the run's own directory.
_MANIFEST_KEY = re.compile(r"e[0-9]{20}/m/[0-9]{20}-[0-9a-f]{16}")
_BLOB_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}")


def run_dir(run_id: str) -> str:
    """The key prefix of one run's objects (ending in ``/``)."""
    digest = hashlib.sha256(run_id.encode("utf-8", "surrogatepass")).hexdigest()
    return f"{RUNS}{digest}/"


def epoch_dir(epoch: int) -> str:
    return f"e{epoch:0{_EPOCH_DIGITS}d}/"


def epoch_of(relative_key: str) -> int | None:
    """The epoch of an object key relative to its run directory (None for the head)."""
    match = re.match(r"e([0-9]{20})/", relative_key)
    return int(match.group(1)) if match else None


def blob_key(epoch: int, name: str) -> str:
    return f"{epoch_dir(epoch)}b/{name}"


def new_manifest_key(epoch: int, timestamp: int) -> str:
    return f"{epoch_dir(epoch)}m/{timestamp:020d}-{secrets.token_hex(8)}"


def is_blob_name(name: object) -> bool:
    return isinstance(name, str) and _BLOB_NAME.fullmatch(name) is not None


@dataclass(frozen=True)
class SavepointEntry:
    """One savepoint as the head lists it."""

    timestamp: int
    manifest_key: str  # relative to the run directory; "" when damaged
    refs: tuple[str, ...]
    entity_count: int
    size: int


@dataclass(frozen=True)
class Head:
    """A run's head: its id, token, epoch, savepoints and where their blobs live.

    ``version`` grows with every write and ``nonce`` is new each time, so no two heads
    are the same bytes: an ETag (an MD5 of the bytes on most servers) never comes back,
    and a writer that finds its own nonce in the head knows its write landed.
    """

    run_id: str
    token: int = 0
    #: When ``token`` was taken (epoch ms); None when not recorded. Display only.
    token_taken_at: int | None = None
    epoch: int = 1
    version: int = 0
    deleted: bool = False
    savepoints: tuple[SavepointEntry, ...] = ()
    blobs: dict[str, int] = field(default_factory=dict)  # blob name -> its epoch
    nonce: str = ""

    def next(self, **changes: Any) -> Head:
        """The head that replaces this one: ``changes`` applied, a new version and nonce."""
        return replace(self, version=self.version + 1, nonce=secrets.token_hex(8), **changes)

    def entry(self, timestamp: int | None) -> SavepointEntry | None:
        """The savepoint at ``timestamp`` (None: the latest), or None."""
        if not self.savepoints:
            return None
        if timestamp is None:
            return self.savepoints[-1]
        return next((sp for sp in self.savepoints if sp.timestamp == timestamp), None)

    def referenced_keys(self) -> set[str]:
        """Every object key (relative to the run) this head's savepoints need."""
        keys = {sp.manifest_key for sp in self.savepoints if sp.manifest_key}
        keys.update(blob_key(epoch, name) for name, epoch in self.blobs.items())
        return keys

    def with_savepoints(self, savepoints: list[SavepointEntry], new_blobs: dict[str, int]) -> Head:
        """Savepoints replaced (sorted), the blob map cut to what they refer to."""
        savepoints.sort(key=lambda sp: sp.timestamp)
        known = {**self.blobs, **new_blobs}
        needed = {name for sp in savepoints for name in sp.refs}
        return self.next(
            savepoints=tuple(savepoints),
            blobs={name: known[name] for name in sorted(needed) if name in known},
        )


def encode_head(head: Head) -> bytes:
    document = {
        "format": FORMAT,
        "run_id": head.run_id,
        "token": head.token,
        "token_taken_at": head.token_taken_at,
        "epoch": head.epoch,
        "version": head.version,
        "deleted": head.deleted,
        "nonce": head.nonce,
        "savepoints": [
            [sp.timestamp, sp.manifest_key, list(sp.refs), sp.entity_count, sp.size]
            for sp in head.savepoints
        ],
        "blobs": head.blobs,
    }
    return json.dumps(document, separators=(",", ":"), ensure_ascii=True).encode()


def decode_head(data: bytes, where: str) -> Head:
    """A head from its bytes; BackendError naming ``where`` when it is not one.

    A damaged savepoint row keeps what can be trusted (its timestamp) and loses the rest,
    so it is still listed, reads as damaged and can be pruned; a head whose own fields
    are damaged cannot be used at all (no token, no epoch to write against).
    """
    try:
        document = json.loads(data)
        if not isinstance(document, dict) or document.get("format") != FORMAT:
            raise ValueError("not a head of format 1")
        run_id, token, epoch, version = (
            document["run_id"], document["token"], document["epoch"], document["version"]
        )  # fmt: skip
        if not isinstance(run_id, str) or not all(
            _count(value) for value in (token, epoch, version)
        ):
            raise ValueError("bad run id, token, epoch or version")
        blobs = {
            name: value
            for name, value in dict(document["blobs"]).items()
            if is_blob_name(name) and _count(value)
        }
        rows = [_entry(row) for row in document["savepoints"]]
    except (ValueError, TypeError, KeyError, AttributeError, RecursionError) as exc:
        raise BackendError(f"{where}: the run's head object is damaged ({exc})") from None
    entries = sorted({entry.timestamp: entry for entry in rows if entry}.values(),
                     key=lambda sp: sp.timestamp)  # fmt: skip
    return Head(
        run_id=run_id,
        token=token,
        # A key an older statestore neither writes nor keeps; never trusted past its type.
        token_taken_at=taken_at if _count(taken_at := document.get("token_taken_at")) else None,
        epoch=epoch,
        version=version,
        deleted=document.get("deleted") is True,
        savepoints=tuple(entries),
        blobs=blobs,
        nonce=str(document.get("nonce", "")),
    )


def _count(value: object) -> bool:
    return type(value) is int and 0 <= value < 2**63


def _entry(row: object) -> SavepointEntry | None:
    """A savepoint row; None when even its timestamp cannot be trusted."""
    if not isinstance(row, list) or not row or not _count(row[0]):
        return None
    fields = [*row[1:5], None, None, None, None][:4]
    key, refs, entity_count, size = fields
    return SavepointEntry(
        timestamp=row[0],
        manifest_key=key if isinstance(key, str) and _MANIFEST_KEY.fullmatch(key) else "",
        refs=tuple(ref for ref in refs if is_blob_name(ref)) if isinstance(refs, list) else (),
        entity_count=entity_count if _count(entity_count) else 0,
        size=size if _count(size) else 0,
    )
