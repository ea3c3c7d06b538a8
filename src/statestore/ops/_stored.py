"""A savepoint as it is stored: encoded states with their checksums verified, not decoded.

``copy`` and ``export`` move a savepoint's encoded states byte for byte
(:meth:`Storage.read_encoded_savepoint`), whatever codec wrote them, so they never need
a pickle key; ``verify`` decodes them when the storage can
(:meth:`Storage.decode_encoded_savepoint`). Only the public ``Storage`` API is used.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ..storage import EncodedSavepoint, Storage

__all__ = [
    "StoredSavepoint",
    "decode_states",
    "delete_savepoints",
    "read_stored",
]


@dataclass(frozen=True)
class StoredSavepoint:
    """One savepoint's encoded states, every checksum verified, in save order."""

    run_id: str
    timestamp: int
    codec: str
    entities: list[tuple[str, bytes]]


def read_stored(storage: Storage, run_id: str, timestamp: int) -> StoredSavepoint:
    """Read one savepoint's encoded states, verifying every checksum and length.

    Raises :class:`~statestore.errors.CorruptSavepointError` for damage and
    :class:`~statestore.errors.NoSavepointError` when there is no such savepoint.
    """
    found_ts, codec, entities = storage.read_encoded_savepoint(run_id, timestamp)
    return StoredSavepoint(run_id, found_ts, codec, entities)


def decode_states(storage: Storage, stored: StoredSavepoint) -> list[tuple[str, object]]:
    """Decode verified states with the storage's codec; ConfigError when it cannot."""
    encoded = EncodedSavepoint(stored.timestamp, stored.codec, stored.entities)
    return storage.decode_encoded_savepoint(stored.run_id, encoded).entities


def delete_savepoints(storage: Storage, run_id: str, timestamps: Sequence[int]) -> None:
    """Delete exactly these savepoints of the run (and the packs only they needed)."""
    storage.delete_savepoints(run_id, timestamps)
