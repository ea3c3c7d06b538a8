"""How a savepoint becomes bytes: one manifest plus packs of entity states.

A savepoint is stored as two kinds of blob, written by every backend alike:

* a **pack** holds encoded entity states back to back, after a 5-byte header
  (``SSPK`` and the format version);
* a **manifest** says, for every entity in save order, which pack holds its state, at
  which offset and length, whether it is zstd-compressed, its uncompressed length and
  the CRC-32 of its stored bytes; it also names the codec. The manifest itself is
  ``SSMF`` + version + CRC-32 of the body + the MessagePack body.

Because the manifest addresses states by pack and offset, a later savepoint can point
at states an earlier savepoint wrote (the incremental layout) without any backend
knowing: backends only store named blobs and manifests.

Reading checks every checksum before decoding, bounds every decompression by the
length the manifest declares, and turns anything wrong into
:class:`~statestore.errors.CorruptSavepointError` naming the run and timestamp.
"""

from __future__ import annotations

import secrets
import struct
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import msgpack
import zstandard

from ..codecs import Codec, SafeCodec
from ..errors import ConfigError, CorruptSavepointError, EncodeError

FORMAT_VERSION = 1
PACK_MAGIC = b"SSPK"
MANIFEST_MAGIC = b"SSMF"
_PACK_HEADER = PACK_MAGIC + bytes([FORMAT_VERSION])
_MANIFEST_HEADER = struct.Struct(">4sBI")  # magic, version, crc32 of body

#: States whose encoding is longer than this are zstd-compressed (smaller ones gain little).
COMPRESS_THRESHOLD = 4096
#: No state may encode (or claim to decompress) to more than this: a bound against bombs.
MAX_STATE_BYTES = 1 << 30

_FLAG_ZSTD = 1


@dataclass(frozen=True)
class SavepointRecord:
    """What a backend must store, atomically, for one savepoint."""

    timestamp: int
    manifest: bytes
    blobs: Mapping[str, bytes]  # new blobs this savepoint writes
    refs: tuple[str, ...]  # every blob the manifest points into (new or older)
    entity_count: int

    @property
    def size(self) -> int:
        """Bytes this savepoint writes: its manifest plus its new blobs."""
        return len(self.manifest) + sum(len(blob) for blob in self.blobs.values())


@dataclass(frozen=True)
class Manifest:
    timestamp: int
    codec: str
    packs: list[str]
    ids: list[str]
    pack_index: list[int]
    offsets: list[int]
    lengths: list[int]
    raw_lengths: list[int]
    flags: list[int]
    crcs: list[int]


def new_pack_name(timestamp: int) -> str:
    """Unique per commit, so a replaced savepoint's pack is never overwritten in place."""
    return f"{timestamp:020d}-{secrets.token_hex(8)}"


def encode_state(codec: Codec, entity_id: str, state: object, run_id: str) -> bytes:
    """Encode one state, naming the entity and type when the codec refuses it."""
    try:
        data = codec.encode(state)
    except EncodeError as exc:
        raise EncodeError(
            f"run {run_id!r}: entity {entity_id!r}: state of type "
            f"{type(state).__qualname__} cannot be encoded ({exc})"
        ) from None
    if len(data) > MAX_STATE_BYTES:
        raise EncodeError(
            f"run {run_id!r}: entity {entity_id!r}: state encodes to {len(data)} bytes, "
            f"over the limit of {MAX_STATE_BYTES}"
        )
    return data


def build_record(
    run_id: str, timestamp: int, codec: Codec, ids: Sequence[str], encoded: Sequence[bytes]
) -> SavepointRecord:
    """Lay encoded states out as one new pack and a manifest pointing into it."""
    pack_name = new_pack_name(timestamp)
    parts: list[bytes] = [_PACK_HEADER]
    offsets: list[int] = []
    lengths: list[int] = []
    raw_lengths: list[int] = []
    flags: list[int] = []
    crcs: list[int] = []
    offset = len(_PACK_HEADER)
    compressor: zstandard.ZstdCompressor | None = None
    for raw in encoded:
        data, flag, raw_length = raw, 0, len(raw)
        if raw_length > COMPRESS_THRESHOLD:
            compressor = compressor or zstandard.ZstdCompressor(level=3, write_content_size=True)
            compressed = compressor.compress(raw)
            if len(compressed) < raw_length:
                data, flag = compressed, _FLAG_ZSTD
        parts.append(data)
        offsets.append(offset)
        lengths.append(len(data))
        raw_lengths.append(raw_length)
        flags.append(flag)
        crcs.append(zlib.crc32(data))
        offset += len(data)
    body = msgpack.packb(
        {
            "ts": timestamp,
            "codec": codec.name,
            "packs": [pack_name],
            "ids": list(ids),
            "pack": [0] * len(ids),
            "offset": offsets,
            "length": lengths,
            "raw": raw_lengths,
            "flags": flags,
            "crc": crcs,
        },
        use_bin_type=True,
    )
    manifest = _MANIFEST_HEADER.pack(MANIFEST_MAGIC, FORMAT_VERSION, zlib.crc32(body)) + body
    return SavepointRecord(
        timestamp=timestamp,
        manifest=manifest,
        blobs={pack_name: b"".join(parts)},
        refs=(pack_name,),
        entity_count=len(ids),
    )


def _corrupt(run_id: str, timestamp: int, why: str) -> CorruptSavepointError:
    return CorruptSavepointError(f"run {run_id!r}: savepoint {timestamp} is corrupt: {why}")


def decode_manifest(run_id: str, timestamp: int, data: bytes) -> Manifest:
    """Check and parse a manifest; every failure is a CorruptSavepointError."""
    if len(data) < _MANIFEST_HEADER.size:
        raise _corrupt(run_id, timestamp, "manifest is truncated")
    magic, version, crc = _MANIFEST_HEADER.unpack_from(data)
    if magic != MANIFEST_MAGIC:
        raise _corrupt(run_id, timestamp, "manifest has a bad header")
    if version > FORMAT_VERSION:
        raise ConfigError(
            f"run {run_id!r}: savepoint {timestamp} uses format version {version}; this "
            f"statestore reads up to version {FORMAT_VERSION}: upgrade statestore"
        )
    body = memoryview(data)[_MANIFEST_HEADER.size :]
    if zlib.crc32(body) != crc:
        raise _corrupt(run_id, timestamp, "manifest checksum mismatch")
    try:
        fields: dict[str, Any] = msgpack.unpackb(body, raw=False)
        manifest = Manifest(
            timestamp=int(fields["ts"]),
            codec=str(fields["codec"]),
            packs=list(fields["packs"]),
            ids=list(fields["ids"]),
            pack_index=list(fields["pack"]),
            offsets=list(fields["offset"]),
            lengths=list(fields["length"]),
            raw_lengths=list(fields["raw"]),
            flags=list(fields["flags"]),
            crcs=list(fields["crc"]),
        )
    except Exception as exc:  # any malformed body: bad msgpack, missing key, wrong type
        raise _corrupt(run_id, timestamp, f"manifest does not decode ({exc})") from None
    columns = (manifest.pack_index, manifest.offsets, manifest.lengths, manifest.raw_lengths)
    if any(
        len(column) != len(manifest.ids) for column in (*columns, manifest.flags, manifest.crcs)
    ):
        raise _corrupt(run_id, timestamp, "manifest columns differ in length")
    if manifest.timestamp != timestamp:
        raise _corrupt(run_id, timestamp, f"manifest is for timestamp {manifest.timestamp}")
    return manifest


def codec_for(manifest: Manifest, configured: Codec, run_id: str) -> Codec:
    """The codec that reads this manifest's states, or a ConfigError saying which is needed."""
    if manifest.codec == configured.name:
        return configured
    if manifest.codec == SafeCodec.name:
        return SafeCodec()  # safe data stays readable whatever codec is configured now
    raise ConfigError(
        f"run {run_id!r}: savepoint {manifest.timestamp} was written with codec "
        f"{manifest.codec!r}, but this storage uses {configured.name!r}; open it with "
        f"the codec that wrote it (e.g. codec=PickleCodec(key=...))"
    )


def decode_states(
    run_id: str, manifest: Manifest, packs: Mapping[str, bytes], codec: Codec
) -> list[tuple[str, object]]:
    """Verify and decode every state of the manifest, in save order."""
    timestamp = manifest.timestamp
    views: list[memoryview] = []
    for name in manifest.packs:
        pack = packs.get(name)
        if pack is None:
            raise _corrupt(run_id, timestamp, f"pack {name} is missing")
        if pack[: len(_PACK_HEADER)] != _PACK_HEADER:
            raise _corrupt(run_id, timestamp, f"pack {name} has a bad header")
        views.append(memoryview(pack))
    decompressor: zstandard.ZstdDecompressor | None = None
    entities: list[tuple[str, object]] = []
    for i, entity_id in enumerate(manifest.ids):
        try:
            view = views[manifest.pack_index[i]]
            start = manifest.offsets[i]
            data = view[start : start + manifest.lengths[i]]
            if len(data) != manifest.lengths[i] or zlib.crc32(data) != manifest.crcs[i]:
                raise _corrupt(run_id, timestamp, f"entity {entity_id!r}: checksum mismatch")
            raw_length = manifest.raw_lengths[i]
            if not 0 <= raw_length <= MAX_STATE_BYTES:
                raise _corrupt(run_id, timestamp, f"entity {entity_id!r}: bad length")
            if manifest.flags[i] & _FLAG_ZSTD:
                decompressor = decompressor or zstandard.ZstdDecompressor()
                raw = decompressor.decompress(data, max_output_size=raw_length)
                if len(raw) != raw_length:
                    raise _corrupt(run_id, timestamp, f"entity {entity_id!r}: bad length")
            else:
                raw = bytes(data)
            entities.append((entity_id, codec.decode(raw)))
        except CorruptSavepointError:
            raise
        except Exception as exc:  # a decoder may raise anything on hostile bytes
            raise _corrupt(
                run_id,
                timestamp,
                f"entity {entity_id!r} does not decode ({type(exc).__name__}: {exc})",
            ) from None
    return entities
