"""How a savepoint becomes bytes: one manifest plus packs of entity states.

A savepoint is stored as two kinds of blob, written by every backend alike:

* a **pack** holds encoded entity states back to back, after a 5-byte header
  (``SSPK`` and the format version);
* a **manifest** says, for every entity in save order, which pack holds its state, at
  which offset and length, whether it is zstd-compressed, its uncompressed length and
  the CRC-32 of its stored bytes; it also names the codec and the size of every pack
  it points into. The manifest itself is ``SSMF`` + version + CRC-32 of the body + the
  MessagePack body.

**Incremental savepoints.** Because the manifest addresses states by pack and offset,
a savepoint points at the unchanged states an earlier savepoint wrote and packs only
the states that changed (compared byte for byte with the run's previous savepoint,
see :class:`RunIndex`). Backends know nothing of this: they store named, immutable
blobs and free the ones no remaining manifest refers to. To keep loading one bounded
read, the live states of the sparsest packs are copied forward into the new pack
whenever the packs a savepoint refers to would hold more than twice its live bytes.

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
_MANIFEST_HEADER = struct.Struct(">4sBI")  # magic, version, crc32 of version + body


def _manifest_crc(version: int, body: bytes | memoryview) -> int:
    """The checksum covers the version byte too: damage there is corruption, not a
    "newer format" (every future version keeps this header)."""
    return zlib.crc32(body, zlib.crc32(bytes([version])))


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
    pack_sizes: list[int]
    ids: list[str]
    pack_index: list[int]
    offsets: list[int]
    lengths: list[int]
    raw_lengths: list[int]
    flags: list[int]
    crcs: list[int]


@dataclass(frozen=True)
class StoredState:
    """Where one entity's state lives, with its encoded bytes to compare against."""

    raw: bytes | memoryview
    pack: str
    offset: int
    length: int
    flags: int
    crc: int


@dataclass(frozen=True)
class RunIndex:
    """The previous savepoint of a run, by entity: the base of the next incremental save."""

    timestamp: int
    states: dict[str, StoredState]
    pack_sizes: dict[str, int]


#: The packs a savepoint points into hold at most this many times its live bytes.
MAX_READ_AMPLIFICATION = 2.0


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


def _reusable(ids: Sequence[str], encoded: Sequence[bytes], base: RunIndex | None) -> list[bool]:
    """Which states to point at in the base's packs rather than write anew.

    A state is reusable when its bytes equal the base's. Then, so that loading reads at
    most ``MAX_READ_AMPLIFICATION`` times the live bytes, the sparsest packs have their
    live states copied forward into the new pack until the bound holds.
    """
    if base is None:
        return [False] * len(ids)
    reuse: list[bool] = []
    live: dict[str, int] = {}
    changed = 0
    for entity_id, data in zip(ids, encoded, strict=True):
        old = base.states.get(entity_id)
        same = old is not None and old.raw == data
        reuse.append(same)
        if same and old is not None:
            live[old.pack] = live.get(old.pack, 0) + old.length
        else:
            changed += len(data)
    live_total = changed + sum(live.values())
    referenced = changed + sum(base.pack_sizes[pack] for pack in live)
    copied: set[str] = set()
    for pack in sorted(live, key=lambda p: live[p] / base.pack_sizes[p]):  # sparsest first
        if referenced <= MAX_READ_AMPLIFICATION * live_total:
            break
        referenced -= base.pack_sizes[pack] - live[pack]
        copied.add(pack)
    if copied:
        for i, entity_id in enumerate(ids):
            if reuse[i] and base.states[entity_id].pack in copied:
                reuse[i] = False
    return reuse


def build_record(
    run_id: str,
    timestamp: int,
    codec: Codec,
    ids: Sequence[str],
    encoded: Sequence[bytes],
    *,
    base: RunIndex | None = None,
) -> tuple[SavepointRecord, RunIndex]:
    """Lay states out as a manifest plus one new pack holding the states not in ``base``.

    Returns the record to commit and the run index it leaves behind (the base of the
    next save once the commit succeeds).
    """
    reuse = _reusable(ids, encoded, base)
    pack_name = new_pack_name(timestamp)
    packs: dict[str, int] = {}  # pack name -> index in the manifest
    pack_sizes: list[int] = []
    parts: list[bytes] = [_PACK_HEADER]
    offset = len(_PACK_HEADER)
    index: list[int] = []
    offsets: list[int] = []
    lengths: list[int] = []
    raw_lengths: list[int] = []
    flags: list[int] = []
    crcs: list[int] = []
    states: dict[str, StoredState] = {}
    compressor: zstandard.ZstdCompressor | None = None
    for entity_id, raw, reused in zip(ids, encoded, reuse, strict=True):
        if reused and base is not None:
            stored = base.states[entity_id]
            if stored.pack not in packs:
                packs[stored.pack] = len(packs)
                pack_sizes.append(base.pack_sizes[stored.pack])
        else:
            data, flag = raw, 0
            if len(raw) > COMPRESS_THRESHOLD:
                compressor = compressor or zstandard.ZstdCompressor(
                    level=3, write_content_size=True
                )
                compressed = compressor.compress(raw)
                if len(compressed) < len(raw):
                    data, flag = compressed, _FLAG_ZSTD
            if pack_name not in packs:
                packs[pack_name] = len(packs)
                pack_sizes.append(0)  # filled in once the pack is complete
            stored = StoredState(raw, pack_name, offset, len(data), flag, zlib.crc32(data))
            parts.append(data)
            offset += len(data)
        states[entity_id] = stored
        index.append(packs[stored.pack])
        offsets.append(stored.offset)
        lengths.append(stored.length)
        raw_lengths.append(len(raw))
        flags.append(stored.flags)
        crcs.append(stored.crc)
    blobs: dict[str, bytes] = {}
    if pack_name in packs:
        blobs[pack_name] = b"".join(parts)
        pack_sizes[packs[pack_name]] = offset
    body = msgpack.packb(
        {
            "ts": timestamp,
            "codec": codec.name,
            "packs": list(packs),
            "pack_sizes": pack_sizes,
            "ids": list(ids),
            "pack": index,
            "offset": offsets,
            "length": lengths,
            "raw": raw_lengths,
            "flags": flags,
            "crc": crcs,
        },
        use_bin_type=True,
    )
    crc = _manifest_crc(FORMAT_VERSION, body)
    manifest = _MANIFEST_HEADER.pack(MANIFEST_MAGIC, FORMAT_VERSION, crc) + body
    record = SavepointRecord(
        timestamp=timestamp,
        manifest=manifest,
        blobs=blobs,
        refs=tuple(packs),
        entity_count=len(ids),
    )
    return record, RunIndex(timestamp, states, dict(zip(packs, pack_sizes, strict=True)))


def _corrupt(run_id: str, timestamp: int, why: str) -> CorruptSavepointError:
    return CorruptSavepointError(f"run {run_id!r}: savepoint {timestamp} is corrupt: {why}")


def decode_manifest(run_id: str, timestamp: int, data: bytes) -> Manifest:
    """Check and parse a manifest; every failure is a CorruptSavepointError."""
    if len(data) < _MANIFEST_HEADER.size:
        raise _corrupt(run_id, timestamp, "manifest is truncated")
    magic, version, crc = _MANIFEST_HEADER.unpack_from(data)
    if magic != MANIFEST_MAGIC:
        raise _corrupt(run_id, timestamp, "manifest has a bad header")
    body = memoryview(data)[_MANIFEST_HEADER.size :]
    if _manifest_crc(version, body) != crc:
        raise _corrupt(run_id, timestamp, "manifest checksum mismatch")
    if version > FORMAT_VERSION:
        raise ConfigError(
            f"run {run_id!r}: savepoint {timestamp} uses format version {version}; this "
            f"statestore reads up to version {FORMAT_VERSION}: upgrade statestore"
        )
    try:
        fields: dict[str, Any] = msgpack.unpackb(body, raw=False)
        manifest = Manifest(
            timestamp=int(fields["ts"]),
            codec=str(fields["codec"]),
            packs=list(fields["packs"]),
            pack_sizes=list(fields["pack_sizes"]),
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


def extract_states(run_id: str, manifest: Manifest, packs: Mapping[str, bytes]) -> RunIndex:
    """Verify every state of the manifest and return them as stored, not decoded.

    Each state's ``raw`` bytes are what the codec wrote (views into ``packs``, copied
    only when decompressed); the index is also the base of the run's next incremental
    save. Any failed check is a :class:`CorruptSavepointError`.
    """
    timestamp = manifest.timestamp
    views: list[memoryview] = []
    for name, size in zip(manifest.packs, manifest.pack_sizes, strict=True):
        pack = packs.get(name)
        if pack is None:
            raise _corrupt(run_id, timestamp, f"pack {name} is missing")
        if len(pack) != size or pack[: len(_PACK_HEADER)] != _PACK_HEADER:
            raise _corrupt(run_id, timestamp, f"pack {name} has a bad header or size")
        views.append(memoryview(pack))
    decompressor: zstandard.ZstdDecompressor | None = None
    states: dict[str, StoredState] = {}
    for i, entity_id in enumerate(manifest.ids):
        try:
            pack_index, start, length = (
                manifest.pack_index[i],
                manifest.offsets[i],
                manifest.lengths[i],
            )
            data = views[pack_index][start : start + length]
            crc = manifest.crcs[i]
            if len(data) != length or zlib.crc32(data) != crc:
                raise _corrupt(run_id, timestamp, f"entity {entity_id!r}: checksum mismatch")
            raw_length = manifest.raw_lengths[i]
            if not 0 <= raw_length <= MAX_STATE_BYTES:
                raise _corrupt(run_id, timestamp, f"entity {entity_id!r}: bad length")
            raw: bytes | memoryview = data
            if manifest.flags[i] & _FLAG_ZSTD:
                decompressor = decompressor or zstandard.ZstdDecompressor()
                raw = decompressor.decompress(data, max_output_size=raw_length)
            if len(raw) != raw_length:
                raise _corrupt(run_id, timestamp, f"entity {entity_id!r}: bad length")
            if entity_id in states:
                raise _corrupt(run_id, timestamp, f"entity {entity_id!r} appears twice")
            stored = StoredState(
                raw, manifest.packs[pack_index], start, length, manifest.flags[i], crc
            )
        except CorruptSavepointError:
            raise
        except Exception as exc:  # hostile manifests: bad index, bad zstd frame, wrong types
            why = f"entity {entity_id!r} cannot be read ({type(exc).__name__}: {exc})"
            raise _corrupt(run_id, timestamp, why) from None
        states[entity_id] = stored
    sizes = dict(zip(manifest.packs, manifest.pack_sizes, strict=True))
    return RunIndex(timestamp, states, sizes)


def decode_state(
    run_id: str, timestamp: int, entity_id: str, codec: Codec, raw: bytes | memoryview
) -> object:
    """Decode one verified state; a codec failure is a :class:`CorruptSavepointError`."""
    try:
        return codec.decode(raw)
    except Exception as exc:  # a decoder may raise anything on hostile bytes
        why = f"entity {entity_id!r} does not decode ({type(exc).__name__}: {exc})"
        raise _corrupt(run_id, timestamp, why) from None


def decode_states(
    run_id: str, manifest: Manifest, packs: Mapping[str, bytes], codec: Codec
) -> tuple[list[tuple[str, object]], RunIndex]:
    """Verify and decode every state of the manifest, in save order, with its run index."""
    index = extract_states(run_id, manifest, packs)
    ts = manifest.timestamp
    entities = [
        (entity_id, decode_state(run_id, ts, entity_id, codec, stored.raw))
        for entity_id, stored in index.states.items()
    ]
    return entities, index
