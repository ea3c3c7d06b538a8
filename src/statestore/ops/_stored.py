"""A savepoint as it is stored: encoded states with their checksums verified, not decoded.

``copy`` and ``export`` move a savepoint's encoded states byte for byte
(:meth:`Storage.read_encoded_savepoint`), whatever codec wrote them, so they never need
a pickle key. The one thing the public ``Storage`` API does not offer is a savepoint's
manifest (pack sizes, for the space a prune frees and the sizes ``stats`` shows): it is
read here, in this one module, through the storage primitives. Checksums,
decompression and manifest parsing stay in :mod:`statestore.storage._layout`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ..codecs import Codec
from ..errors import ConfigError, NoSavepointError
from ..storage import Storage, _layout
from ..storage._layout import Manifest

__all__ = [
    "COMPRESSED",
    "StoredSavepoint",
    "decode_states",
    "decoder_for",
    "delete_savepoints",
    "read_manifest",
    "read_stored",
]


#: The manifest flag of a state stored zstd-compressed.
COMPRESSED = _layout._FLAG_ZSTD


@dataclass(frozen=True)
class StoredSavepoint:
    """One savepoint's encoded states, every checksum verified, in save order."""

    run_id: str
    timestamp: int
    codec: str
    entities: list[tuple[str, bytes]]


def read_manifest(storage: Storage, run_id: str, timestamp: int) -> tuple[Manifest, int]:
    """The checked manifest of one savepoint and its size in bytes (no state is read)."""
    with storage._boundary(run_id, timestamp):
        found = storage._read_manifest(run_id, timestamp)
    if found is None:
        raise NoSavepointError(f"run {run_id!r} has no savepoint at {timestamp}")
    found_ts, data = found
    manifest = _layout.decode_manifest(
        run_id, found_ts, data, max_savepoint_bytes=storage.max_savepoint_bytes
    )
    return manifest, len(data)


def read_stored(storage: Storage, run_id: str, timestamp: int) -> StoredSavepoint:
    """Read one savepoint's encoded states, verifying every checksum and length.

    Raises :class:`~statestore.errors.CorruptSavepointError` for damage and
    :class:`~statestore.errors.NoSavepointError` when there is no such savepoint.
    """
    found_ts, codec, entities = storage.read_encoded_savepoint(run_id, timestamp)
    return StoredSavepoint(run_id, found_ts, codec, entities)


def decoder_for(storage: Storage, stored: StoredSavepoint) -> Codec | None:
    """The codec that decodes ``stored`` with this storage, or None when it has none.

    The safe codec is always available; another codec only when the storage was
    opened with it (a pickle codec and its key).
    """
    try:
        return _decoder(storage, stored)
    except ConfigError:
        return None


def _decoder(storage: Storage, stored: StoredSavepoint) -> Codec:
    return _layout.codec_for(stored.codec, storage.codec, stored.run_id, stored.timestamp)


def decode_states(storage: Storage, stored: StoredSavepoint) -> list[tuple[str, object]]:
    """Decode verified states with the storage's codec; ConfigError when it cannot."""
    codec = _decoder(storage, stored)
    return [
        (entity_id, _layout.decode_state(stored.run_id, stored.timestamp, entity_id, codec, data))
        for entity_id, data in stored.entities
    ]


def delete_savepoints(storage: Storage, run_id: str, timestamps: Sequence[int]) -> None:
    """Delete exactly these savepoints of the run (and the packs only they needed)."""
    storage.delete_savepoints(run_id, timestamps)
