"""How a savepoint becomes bytes: one manifest plus packs of entity states.

Public as the stored format's one definition: backends store what it builds without
reading it, and tools that read or craft stored bytes (the conformance kit's
forgeries, a forensic script) use it instead of a second parser.

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
see :class:`ReuseBase`). Backends know nothing of this: they store named, immutable
blobs and free the ones no remaining manifest refers to. To keep loading one bounded
read, the live states of the sparsest packs are copied forward into the new pack
whenever the packs a savepoint refers to would hold more than twice its live bytes.

Reading checks every checksum before decoding, and checks every manifest field's type
and range too: CRC-32 is not a MAC, so anyone who can write the store can recompute it,
and a crafted manifest must still end in :class:`~statestore.errors.CorruptSavepointError`
naming the run and timestamp. Memory is bounded before anything is allocated: the
states a manifest points at may not overlap (their stored lengths add up to at most
the packs' bytes), each declares its decoded length (at most :data:`MAX_STATE_BYTES`),
the declared lengths add up to at most the storage's ``max_savepoint_bytes``, and a
compressed state's zstd frame must declare that same length before it is decompressed.
Saving enforces the same limits, so nothing is written that cannot be read back.
"""

from __future__ import annotations

import re
import secrets
import struct
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import msgpack
import zstandard

from .. import collector
from ..codecs import Codec, SafeCodec
from ..errors import ConfigError, CorruptSavepointError, EncodeError
from .durable import versioned_crc

FORMAT_VERSION = 1
PACK_MAGIC = b"SSPK"
MANIFEST_MAGIC = b"SSMF"
#: The bytes every pack starts with.
PACK_HEADER = PACK_MAGIC + bytes([FORMAT_VERSION])
_MANIFEST_HEADER = struct.Struct(">4sBI")  # magic, version, crc32 of version + body
#: The bytes of a manifest before its MessagePack body.
MANIFEST_HEADER_SIZE = _MANIFEST_HEADER.size


#: States whose encoding is longer than this are zstd-compressed (smaller ones gain little).
COMPRESS_THRESHOLD = 4096
#: No state may encode (or claim to decompress) to more than this: a bound against bombs.
MAX_STATE_BYTES = 1 << 30

#: The default of ``max_savepoint_bytes``: the most one savepoint's states may encode to
#: in all. A bound against decompression bombs, high enough for any run this library is
#: for (raise it with ``open_storage(url, max_savepoint_bytes=N)`` or ``?max_savepoint_bytes=N``).
MAX_SAVEPOINT_BYTES = 1 << 31
#: The name of that limit as an ``open_storage`` option and URL query parameter.
LIMIT_OPTION = "max_savepoint_bytes"

FLAG_ZSTD = 1
#: What :func:`new_pack_name` makes; a manifest naming anything else is crafted.
_PACK_NAME = re.compile(r"[0-9]{20}-[0-9a-f]{16}")
_MAX_CODEC_NAME = 128
_MAX_INT64 = 2**63 - 1
_MAX_CRC = 2**32 - 1


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
    pack_crcs: list[int]
    ids: list[str]
    pack_index: list[int]
    offsets: list[int]
    lengths: list[int]
    raw_lengths: list[int]
    flags: list[int]


@dataclass(frozen=True)
class ReuseBase:
    """A savepoint of a run by entity, in columns: the base of the run's next save.

    Row ``position[entity_id]`` says where the entity's state is stored (pack name,
    offset, stored length, flags) and holds its encoded bytes (``raws``) to compare the
    next save's against. Columns, not an object per entity: saving and loading touch
    every entity, and building 10,000 small objects costs more than the I/O.
    """

    timestamp: int
    position: dict[str, int]
    raws: list[bytes | memoryview]
    packs: list[str]
    offsets: list[int]
    lengths: list[int]
    flags: list[int]
    pack_sizes: dict[str, int]
    pack_crcs: dict[str, int]

    def entities(self) -> list[tuple[str, bytes | memoryview]]:
        """``(entity_id, encoded state)`` in save order."""
        return list(zip(self.position, self.raws, strict=True))


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
    check_state_size(run_id, entity_id, data)
    return data


def check_state_size(run_id: str, entity_id: str, data: bytes) -> None:
    """Refuse a state over :data:`MAX_STATE_BYTES`, which no reader would accept."""
    if len(data) > MAX_STATE_BYTES:
        raise EncodeError(
            f"run {run_id!r}: entity {entity_id!r}: state encodes to {len(data)} bytes, "
            f"over the limit of {MAX_STATE_BYTES}; nothing was stored"
        )


def encode_states(
    codec: Codec, ids: Sequence[str], states: Sequence[object], run_id: str
) -> list[bytes]:
    """Encode every state; on a failure, name the first entity the codec refuses."""
    encode = codec.encode
    try:
        encoded = [encode(state) for state in states]  # the hot path: one tight loop
    except EncodeError:
        encoded = []
    if len(encoded) != len(states) or max(map(len, encoded), default=0) > MAX_STATE_BYTES:
        # The slow path, only to raise the error that names the entity.
        for entity_id, state in zip(ids, states, strict=True):
            encode_state(codec, entity_id, state, run_id)
    return encoded


def check_savepoint_size(run_id: str, timestamp: int, encoded: Sequence[bytes], limit: int) -> None:
    """Refuse, before anything is written, a savepoint its readers would refuse."""
    total = sum(map(len, encoded))
    if total > limit:
        raise EncodeError(
            f"run {run_id!r}: savepoint {timestamp}: its states encode to {total} bytes "
            f"in all, over the {LIMIT_OPTION}={limit} limit (raise it with "
            f"open_storage(url, {LIMIT_OPTION}=N) or ?{LIMIT_OPTION}=N in the URL); "
            "nothing was stored"
        )


def _reusable(ids: Sequence[str], encoded: Sequence[bytes], base: ReuseBase) -> list[int]:
    """For each state, its row in ``base`` when it is reused there, else -1.

    A state is reusable when its bytes equal the base's. Then, so that loading reads at
    most ``MAX_READ_AMPLIFICATION`` times the live bytes, the sparsest packs have their
    live states copied forward into the new pack until the bound holds.
    """
    position, raws, packs, lengths = base.position, base.raws, base.packs, base.lengths
    # Comprehensions, not one loop with appends: this touches every entity of every save.
    found = [position.get(entity_id, -1) for entity_id in ids]
    rows = [
        row if row >= 0 and raws[row] == data else -1
        for row, data in zip(found, encoded, strict=True)
    ]
    live: dict[str, int] = {}
    for row in rows:
        if row >= 0:
            pack = packs[row]
            live[pack] = live.get(pack, 0) + lengths[row]
    changed = sum(len(data) for row, data in zip(rows, encoded, strict=True) if row < 0)
    live_total = changed + sum(live.values())
    referenced = changed + sum(base.pack_sizes[pack] for pack in live)
    copied: set[str] = set()
    for pack in sorted(live, key=lambda p: live[p] / base.pack_sizes[p]):  # sparsest first
        if referenced <= MAX_READ_AMPLIFICATION * live_total:
            break
        referenced -= base.pack_sizes[pack] - live[pack]
        copied.add(pack)
    if copied:
        rows = [-1 if row >= 0 and packs[row] in copied else row for row in rows]
    return rows


def build_record(
    run_id: str,
    timestamp: int,
    codec: Codec,
    ids: Sequence[str],
    encoded: Sequence[bytes],
    *,
    base: ReuseBase | None = None,
) -> tuple[SavepointRecord, ReuseBase]:
    """Lay states out as a manifest plus one new pack holding the states not in ``base``.

    Returns the record to commit and the run index it leaves behind (the base of the
    next save once the commit succeeds).
    """
    rows = _reusable(ids, encoded, base) if base is not None else [-1] * len(ids)
    pack_name = new_pack_name(timestamp)
    parts: list[bytes] = [PACK_HEADER]
    offset = len(PACK_HEADER)
    # Only the states written anew go through a Python loop; the columns of reused ones
    # are copied from the base in comprehensions.
    written: dict[int, tuple[int, int, int]] = {}  # position -> offset, length, flags
    compressor: zstandard.ZstdCompressor | None = None
    for i, (raw, row) in enumerate(zip(encoded, rows, strict=True)):
        if row >= 0:
            continue
        data, flag = raw, 0
        if len(raw) > COMPRESS_THRESHOLD:
            compressor = compressor or zstandard.ZstdCompressor(level=3, write_content_size=True)
            compressed = compressor.compress(raw)
            if len(compressed) < len(raw):
                data, flag = compressed, FLAG_ZSTD
        parts.append(data)
        written[i] = (offset, len(data), flag)
        offset += len(data)
    if base is None:  # every state is new: the columns are the written ones, in order
        packs = [pack_name] * len(rows)
        offsets = [entry[0] for entry in written.values()]
        lengths = [entry[1] for entry in written.values()]
        flags = [entry[2] for entry in written.values()]
    else:
        b_packs, b_offsets, b_lengths, b_flags = base.packs, base.offsets, base.lengths, base.flags
        packs = [b_packs[row] if row >= 0 else pack_name for row in rows]
        offsets = [b_offsets[r] if r >= 0 else written[i][0] for i, r in enumerate(rows)]
        lengths = [b_lengths[r] if r >= 0 else written[i][1] for i, r in enumerate(rows)]
        flags = [b_flags[r] if r >= 0 else written[i][2] for i, r in enumerate(rows)]
    pack_sizes: dict[str, int] = {}
    pack_crcs: dict[str, int] = {}
    blobs: dict[str, bytes] = {}
    if len(parts) > 1:
        blobs[pack_name] = b"".join(parts)
        pack_sizes[pack_name], pack_crcs[pack_name] = offset, zlib.crc32(blobs[pack_name])
    if base is not None:
        for name in set(packs) - blobs.keys():
            pack_sizes[name], pack_crcs[name] = base.pack_sizes[name], base.pack_crcs[name]
    names = sorted(pack_sizes)
    number = {name: i for i, name in enumerate(names)}
    body = msgpack.packb(
        {
            "ts": timestamp,
            "codec": codec.name,
            "packs": names,
            "pack_sizes": [pack_sizes[name] for name in names],
            "pack_crcs": [pack_crcs[name] for name in names],
            "ids": list(ids),
            "pack": [number[name] for name in packs],
            "offset": offsets,
            "length": lengths,
            "raw": [len(raw) for raw in encoded],
            "flags": flags,
        },
        use_bin_type=True,
    )
    manifest = seal_manifest(body)
    record = SavepointRecord(
        timestamp=timestamp,
        manifest=manifest,
        blobs=blobs,
        refs=tuple(names),
        entity_count=len(ids),
    )
    position = {entity_id: i for i, entity_id in enumerate(ids)}
    raws: list[bytes | memoryview] = list(encoded)
    index = ReuseBase(
        timestamp, position, raws, packs, offsets, lengths, flags, pack_sizes, pack_crcs
    )
    return record, index


def seal_manifest(body: bytes, version: int = FORMAT_VERSION) -> bytes:
    """A manifest body with its header: magic, version and the checksum over both."""
    return _MANIFEST_HEADER.pack(MANIFEST_MAGIC, version, versioned_crc(version, body)) + body


def _corrupt(run_id: str, timestamp: int, why: str) -> CorruptSavepointError:
    return CorruptSavepointError(f"run {run_id!r}: savepoint {timestamp} is corrupt: {why}")


def decode_manifest(
    run_id: str, timestamp: int, data: bytes, *, max_savepoint_bytes: int = MAX_SAVEPOINT_BYTES
) -> Manifest:
    """Check and parse a manifest; every failure is a CorruptSavepointError.

    Every field is checked for type and range, not only the checksum: a store writer
    can recompute a CRC, so a field that is not what :func:`build_record` writes
    (an id that is not a str, a pack name that is not a pack's, an index out of range,
    columns of different lengths) is corruption, never a raw exception later.
    """
    if len(data) < _MANIFEST_HEADER.size:
        raise _corrupt(run_id, timestamp, "manifest is truncated")
    magic, version, crc = _MANIFEST_HEADER.unpack_from(data)
    if magic != MANIFEST_MAGIC:
        raise _corrupt(run_id, timestamp, "manifest has a bad header")
    body = memoryview(data)[_MANIFEST_HEADER.size :]
    if versioned_crc(version, body) != crc:
        raise _corrupt(run_id, timestamp, "manifest checksum mismatch")
    if version > FORMAT_VERSION:
        raise ConfigError(
            f"run {run_id!r}: savepoint {timestamp} uses format version {version}; this "
            f"statestore reads up to version {FORMAT_VERSION}: upgrade statestore"
        )
    try:
        fields = msgpack.unpackb(body, raw=False)
    except Exception as exc:  # msgpack raises several types on malformed bytes
        raise _corrupt(run_id, timestamp, f"manifest does not decode ({exc})") from None
    problem = _manifest_problem(fields, timestamp)
    if problem is not None:
        raise _corrupt(run_id, timestamp, f"manifest {problem}")
    declared = sum(fields["raw"])
    if declared > max_savepoint_bytes:
        raise _corrupt(
            run_id,
            timestamp,
            f"its states declare {declared} bytes in all, over the {LIMIT_OPTION}="
            f"{max_savepoint_bytes} limit (if the savepoint is genuine, raise the limit with "
            f"open_storage(url, {LIMIT_OPTION}=N) or ?{LIMIT_OPTION}=N in the URL)",
        )
    return Manifest(
        timestamp=fields["ts"],
        codec=fields["codec"],
        packs=fields["packs"],
        pack_sizes=fields["pack_sizes"],
        pack_crcs=fields["pack_crcs"],
        ids=fields["ids"],
        pack_index=fields["pack"],
        offsets=fields["offset"],
        lengths=fields["length"],
        raw_lengths=fields["raw"],
        flags=fields["flags"],
    )


def _all_of_type(column: object, kind: type) -> bool:
    """Whether ``column`` is a list of exactly ``kind`` (no subclass: a bool is no int).

    ``set(map(type, ...))`` runs in C: manifests of 100,000 entities are checked often.
    """
    return isinstance(column, list) and set(map(type, column)) <= {kind}


def _ints_in(column: object, low: int, high: int) -> bool:
    return _all_of_type(column, int) and (
        not column or (low <= min(column) and max(column) <= high)  # type: ignore[call-overload]
    )


def _manifest_problem(fields: object, timestamp: int) -> str | None:
    """What is wrong with a decoded manifest body, or None when every field is sound."""
    if not isinstance(fields, dict):
        return "is not a record"
    missing = {
        "ts",
        "codec",
        "packs",
        "pack_sizes",
        "pack_crcs",
        "ids",
        "pack",
        "offset",
        "length",
        "raw",
        "flags",
    } - fields.keys()
    if missing:
        return f"lacks {sorted(missing)[0]!r}"
    ts, codec, packs, ids = fields["ts"], fields["codec"], fields["packs"], fields["ids"]
    if type(ts) is not int or ts != timestamp:
        return f"is for timestamp {ts!r}"
    if type(codec) is not str or not 0 < len(codec) <= _MAX_CODEC_NAME:
        return "names no codec"
    if not _all_of_type(packs, str) or not all(_PACK_NAME.fullmatch(name) for name in packs):
        return "names a pack that is not one"
    if len(set(packs)) != len(packs):
        return "names a pack twice"
    for name, low, high in (
        ("pack_sizes", len(PACK_HEADER), _MAX_INT64),
        ("pack_crcs", 0, _MAX_CRC),
    ):
        if not _ints_in(fields[name], low, high) or len(fields[name]) != len(packs):
            return f"has a bad {name} column"
    if not _all_of_type(ids, str):
        return "has an entity id that is not a str"
    if len(set(ids)) != len(ids):
        return "has an entity id twice"
    for name, low, high in (
        ("pack", 0, len(packs) - 1),
        ("offset", len(PACK_HEADER), _MAX_INT64),
        ("length", 0, _MAX_INT64),
        ("raw", 0, MAX_STATE_BYTES),
        ("flags", 0, FLAG_ZSTD),
    ):
        if not _ints_in(fields[name], low, high) or len(fields[name]) != len(ids):
            return f"has a bad {name} column"
    # States never share stored bytes, so together they point at no more than the packs
    # hold: without this, entities pointing at one zstd frame multiply what it inflates to.
    if sum(fields["length"]) > sum(fields["pack_sizes"]) - len(PACK_HEADER) * len(packs):
        return "points at more bytes than its packs hold"
    return None


def codec_for(codec_name: str, configured: Codec, run_id: str, timestamp: int) -> Codec:
    """The codec that reads states written by ``codec_name``, or a ConfigError naming it."""
    if codec_name == configured.name:
        return configured
    if codec_name == SafeCodec.name:
        return SafeCodec()  # safe data stays readable whatever codec is configured now
    raise ConfigError(
        f"run {run_id!r}: savepoint {timestamp} was written with codec "
        f"{codec_name!r}, but this storage uses {configured.name!r}; open it with "
        f"the codec that wrote it (e.g. codec=PickleCodec(key=...))"
    )


def extract_states(run_id: str, manifest: Manifest, packs: Mapping[str, bytes]) -> ReuseBase:
    """Verify every pack of the manifest and cut out each state as stored, not decoded.

    Each state's ``raws`` entry is what the codec wrote (a view into its pack, copied
    only when decompressed); the index is also the base of the run's next incremental
    save. Any failed check is a :class:`CorruptSavepointError`.
    """
    timestamp = manifest.timestamp
    views: list[memoryview] = []
    for name, size, crc in zip(
        manifest.packs, manifest.pack_sizes, manifest.pack_crcs, strict=True
    ):
        pack = packs.get(name)
        if pack is None:
            raise _corrupt(run_id, timestamp, f"pack {name} is missing")
        if len(pack) != size or pack[: len(PACK_HEADER)] != PACK_HEADER:
            raise _corrupt(run_id, timestamp, f"pack {name} has a bad header or size")
        if zlib.crc32(pack) != crc:
            raise _corrupt(run_id, timestamp, f"pack {name}: checksum mismatch")
        views.append(memoryview(pack))
    names = manifest.packs
    raws: list[bytes | memoryview] = []
    try:
        for pack_index, start, length, raw_length, flag in zip(
            manifest.pack_index,
            manifest.offsets,
            manifest.lengths,
            manifest.raw_lengths,
            manifest.flags,
            strict=True,
        ):
            data = views[pack_index][start : start + length]
            if len(data) != length:
                raise ValueError("offset and length run past the end of the pack")
            raw: bytes | memoryview = data
            if flag:
                # The frame must declare the length the manifest does (the writer always
                # records it), so nothing larger is ever allocated than was checked.
                if zstandard.frame_content_size(data) != raw_length:
                    raise ValueError("the zstd frame declares another length")
                raw = zstandard.ZstdDecompressor().decompress(data, max_output_size=raw_length)
            if len(raw) != raw_length:
                raise ValueError("the state has another length than declared")
            raws.append(raw)
    except MemoryError:
        raise  # allocations are bounded by checked lengths: this is the machine, not the data
    except Exception as exc:  # a bad zstd frame, a length that does not match
        entity_id = manifest.ids[len(raws)] if len(raws) < len(manifest.ids) else "?"
        why = f"entity {entity_id!r} cannot be read ({type(exc).__name__}: {exc})"
        raise _corrupt(run_id, timestamp, why) from None
    return ReuseBase(
        timestamp,
        {entity_id: i for i, entity_id in enumerate(manifest.ids)},
        raws,
        [names[i] for i in manifest.pack_index],
        manifest.offsets,
        manifest.lengths,
        manifest.flags,
        dict(zip(names, manifest.pack_sizes, strict=True)),
        dict(zip(names, manifest.pack_crcs, strict=True)),
    )


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
) -> tuple[list[tuple[str, object]], ReuseBase]:
    """Verify and decode every state of the manifest, in save order, with its run index."""
    # Everything built here is the live result, not garbage: see statestore.collector.
    with collector.paused():
        index = extract_states(run_id, manifest, packs)
        decode = codec.decode
        try:
            states = [decode(raw) for raw in index.raws]
        except Exception:  # name the entity that does not decode (the slow path, once)
            for entity_id, raw in zip(manifest.ids, index.raws, strict=True):
                decode_state(run_id, manifest.timestamp, entity_id, codec, raw)
            raise
        return list(zip(manifest.ids, states, strict=True)), index
