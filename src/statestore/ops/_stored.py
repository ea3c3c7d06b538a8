"""A savepoint as it is stored: encoded states with their checksums verified, not decoded.

The operations under the command line need three things the public ``Storage`` API
does not offer: a savepoint's encoded states (so ``copy`` and ``export`` move exact
bytes, whatever codec wrote them, and never need a pickle key), its manifest (pack
sizes, for the space a prune frees and the sizes ``stats`` shows), and the deletion of
chosen savepoints (``import --replace``). They are reached here, in this one module,
through the storage primitives, so the rest of ``statestore.ops`` uses only this
module's functions and the public API. Checksums, decompression and manifest parsing
stay in :mod:`statestore.storage._layout`: nothing about the format is repeated here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import cast

from ..codecs import Codec, SafeCodec
from ..errors import ConfigError, CorruptSavepointError, NoSavepointError
from ..storage import Storage, _layout
from ..storage._base import READ_ATTEMPTS
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


class _Passthrough:
    """A codec that hands back the encoded bytes: the layout checks them, we keep them."""

    name = "statestore-ops-passthrough"

    def encode(self, value: object) -> bytes:  # pragma: no cover - never used for writing
        raise NotImplementedError

    def decode(self, data: bytes | memoryview) -> object:
        return bytes(data)


_PASSTHROUGH = _Passthrough()


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
    return _layout.decode_manifest(run_id, found_ts, data), len(data)


def read_stored(storage: Storage, run_id: str, timestamp: int) -> StoredSavepoint:
    """Read one savepoint's encoded states, verifying every checksum and length.

    Raises :class:`~statestore.errors.CorruptSavepointError` for damage and
    :class:`~statestore.errors.NoSavepointError` when there is no such savepoint.
    """
    with storage._boundary(run_id, timestamp):
        for _attempt in range(READ_ATTEMPTS):
            found = storage._read_manifest(run_id, timestamp)
            if found is None:
                raise NoSavepointError(f"run {run_id!r} has no savepoint at {timestamp}")
            found_ts, data = found
            manifest = _layout.decode_manifest(run_id, found_ts, data)
            packs = storage._read_blobs(run_id, manifest.packs)
            if len(packs) == len(set(manifest.packs)):
                break
            # A concurrent prune freed the packs between the two reads: read again
            # (as Storage._load does); still missing, decode_states reports it corrupt.
    entities, _index = _layout.decode_states(run_id, manifest, packs, _PASSTHROUGH)
    encoded = [(entity_id, cast(bytes, state)) for entity_id, state in entities]
    return StoredSavepoint(run_id, found_ts, manifest.codec, encoded)


def decoder_for(storage: Storage, stored: StoredSavepoint) -> Codec | None:
    """The codec that decodes ``stored`` with this storage, or None when it has none.

    The safe codec is always available; another codec only when the storage was
    opened with it (a pickle codec and its key).
    """
    if stored.codec == storage.codec.name:
        return storage.codec
    if stored.codec == SafeCodec.name:
        return SafeCodec()
    return None


def decode_states(storage: Storage, stored: StoredSavepoint) -> list[tuple[str, object]]:
    """Decode verified states with the storage's codec; ConfigError when it cannot."""
    codec = decoder_for(storage, stored)
    if codec is None:
        raise ConfigError(
            f"run {stored.run_id!r}: savepoint {stored.timestamp} was written with codec "
            f"{stored.codec!r}; this storage uses {storage.codec.name!r}"
        )
    decoded: list[tuple[str, object]] = []
    for entity_id, data in stored.entities:
        try:
            decoded.append((entity_id, codec.decode(data)))
        except Exception as exc:  # a decoder may raise anything on bytes it cannot read
            raise CorruptSavepointError(
                f"run {stored.run_id!r}: savepoint {stored.timestamp} is corrupt: entity "
                f"{entity_id!r} does not decode ({type(exc).__name__}: {exc})"
            ) from None
    return decoded


def delete_savepoints(storage: Storage, run_id: str, timestamps: Sequence[int]) -> None:
    """Delete exactly these savepoints of the run (and the packs only they needed)."""
    if timestamps:
        storage._forget_index(run_id)  # the next save must not build on a deleted one
        with storage._boundary(run_id):
            storage._delete_savepoints(run_id, list(timestamps))
