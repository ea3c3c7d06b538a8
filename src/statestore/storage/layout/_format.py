"""The stored format's constants and records, shared by the writer and the reader."""

from __future__ import annotations

import functools
import hashlib
import secrets
import struct
import sys
from array import array
from collections.abc import Mapping
from dataclasses import dataclass

from ...errors import CorruptSavepointError
from ..durable import versioned_crc

FORMAT_VERSION = 2
PACK_MAGIC = b"SSPK"
MANIFEST_MAGIC = b"SSMF"
TABLE_MAGIC = b"SSTB"
PACK_HEADER = struct.Struct(">4sBB")  # magic, version, flags
#: The bytes of a pack before its body.
PACK_HEADER_SIZE = PACK_HEADER.size
MANIFEST_HEADER = struct.Struct(">4sBI")  # magic, version, crc32 of version + body
#: The bytes of a manifest before its MessagePack body.
MANIFEST_HEADER_SIZE = MANIFEST_HEADER.size
TABLE_HEADER = struct.Struct(">4sBB")  # magic, version, kind
TABLE_FULL = 0
TABLE_DELTA = 1

#: Pack flag: the body is one zstd frame declaring its decompressed length.
PACK_ZSTD = 1
#: Pack flag: each element is a MessagePack ``bin`` holding the codec's bytes (codecs
#: whose encodings are not MessagePack values, such as pickle).
PACK_WRAPPED = 2
PACK_FLAGS = PACK_ZSTD | PACK_WRAPPED

#: Packs whose states average more than this are zstd-compressed (smaller ones gain little).
COMPRESS_THRESHOLD = 4096
#: States per pack: one pack decodes in one call, which holds the GIL throughout
#: (about 15 ms for 16,384 states of 150 bytes on the reference machine).
MAX_PACK_STATES = 16_384
#: A pack closes once its body passes this, so offsets fit the 32-bit columns.
MAX_PACK_BYTES = 64 << 20
#: No state may encode to more than this: a bound against bombs.
MAX_STATE_BYTES = 1 << 30
#: Deltas after a full table at most; the next save then writes a full table.
MAX_CHAIN = 32
#: The packs a savepoint points into hold at most this many times its live bytes.
MAX_READ_AMPLIFICATION = 2.0
#: A save that finds the bound passed copies live states forward until the packs hold at
#: most this many times the live bytes: well under the bound, so the saves after it
#: (change sets above all, which cannot copy without reading) need not copy again soon.
COMPACTED_AMPLIFICATION = 1.25
#: The highest state version a savepoint may record.
MAX_STATE_VERSION = 2**31 - 1

#: The default of ``max_savepoint_bytes``: the most one savepoint's packs may hold in
#: all, decompressed. A bound against decompression bombs, high enough for any run this
#: library is for (raise it with ``open_storage(url, max_savepoint_bytes=N)`` or
#: ``?max_savepoint_bytes=N``).
MAX_SAVEPOINT_BYTES = 1 << 31
#: The name of that limit as an ``open_storage`` option and URL query parameter.
LIMIT_OPTION = "max_savepoint_bytes"

MAX_CODEC_NAME = 128
MAX_INT64 = 2**63 - 1
MAX_U32 = 2**32 - 1
#: The manifest's per-entity columns: unsigned 32-bit, little-endian.
_U32 = next(code for code in "IL" if array(code).itemsize == 4)
_BIG_ENDIAN = sys.byteorder == "big"
#: The per-pack lists of a table, in order.
PACK_FIELDS = (
    "packs", "pack_sizes", "pack_crcs", "pack_raw", "pack_counts", "pack_flags", "pack_versions",
)  # fmt: skip
#: The per-entity columns of a table, in order.
ENTITY_COLUMNS = ("pack", "index", "offset", "length")


def _fingerprint_blake2b(data: bytes | memoryview) -> int:
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big")


#: A state's change-detection hash: Python's ``hash`` of bytes is SipHash keyed at random
#: per process, 64 bits wide on 64-bit builds and computed in C; elsewhere BLAKE2b-64.
#: It lives in memory only, so a crafted store cannot choose a collision.
fingerprint = hash if sys.hash_info.width >= 64 else _fingerprint_blake2b


@dataclass(frozen=True)
class SavepointRecord:
    """What a backend must store, atomically, for one savepoint."""

    timestamp: int
    manifest: bytes
    blobs: Mapping[str, bytes]  # new blobs this savepoint writes
    refs: tuple[str, ...]  # every blob the manifest points into (new or older)
    entity_count: int
    #: States this savepoint wrote anew; the others point at earlier savepoints' packs.
    states_written: int = 0
    #: Bytes the savepoint refers to: its manifest and the stored packs its states are
    #: in, earlier savepoints' included (what describe_savepoint reports).
    full_size: int = 0

    @property
    def size(self) -> int:
        """Bytes this savepoint writes: its manifest plus its new blobs."""
        return len(self.manifest) + sum(len(blob) for blob in self.blobs.values())

    @property
    def states_reused(self) -> int:
        return self.entity_count - self.states_written


@dataclass(frozen=True)
class Manifest:
    """A savepoint's checked, resolved manifest: its table chain applied.

    Per pack (every pack the chain named, live or not): name, stored size, CRC-32, body
    length, state count, flags, and the state version its states were written with. Per
    entity, in save order: id, pack, position in the pack's array, and where its codec
    bytes lie in the pack's body.
    """

    timestamp: int
    codec: str
    packs: list[str]
    pack_sizes: list[int]  # stored bytes, header included
    pack_crcs: list[int]
    pack_raw: list[int]  # body bytes, decompressed
    pack_counts: list[int]  # states in the body's array
    pack_flags: list[int]
    pack_versions: list[int]
    ids: list[str]
    pack_index: list[int]  # per entity: which pack
    indexes: list[int]  # per entity: its position in that pack's array
    offsets: list[int]  # per entity: where its codec bytes start in the pack's body
    lengths: list[int]  # per entity: how many codec bytes
    #: The table blobs the savepoint's head names: a full table, then deltas.
    tables: list[str]
    table_sizes: list[int]
    table_crcs: list[int]
    #: Entity rows the chain's deltas hold in all (what a load applies after the full table).
    delta_rows: int

    @functools.cached_property
    def in_order(self) -> bool:
        """Whether entity ``i``'s state is element ``i`` of its pack's array: so it is
        after a full save, and a load and its checks take the fast path (computed once:
        both ask)."""
        return self.indexes == list(range(len(self.ids)))

    def live_packs(self) -> list[int]:
        """The packs some entity's state is in, ascending: the only ones a load reads."""
        return sorted(set(self.pack_index))

    def live_bytes(self) -> list[int]:
        """Per pack, the codec bytes of the states some entity uses there."""
        live = [0] * len(self.packs)
        for pack, length in zip(self.pack_index, self.lengths, strict=True):
            live[pack] += length
        return live

    def versions(self) -> list[int]:
        """The state version each entity's state was written with, in save order."""
        by_pack = self.pack_versions
        return [by_pack[pack] for pack in self.pack_index]


class ReuseBase:
    """A savepoint of a run, as the next save compares against it.

    ``position[entity_id]`` is the entity's row in the manifest's columns, and
    ``hashes[row]`` the :func:`fingerprint` of its encoding: no state's bytes are kept.
    :attr:`live` (per pack, the bytes of its states some entity still uses) is counted
    when a change set first needs it, or handed over by the save that made it.
    """

    __slots__ = ("_live", "hashes", "manifest", "position")

    def __init__(
        self,
        manifest: Manifest,
        position: dict[str, int],
        hashes: list[int],
        live: list[int] | None = None,
    ) -> None:
        self.manifest = manifest
        self.position = position
        self.hashes = hashes
        self._live = live

    @property
    def live(self) -> list[int]:
        if self._live is None:
            self._live = self.manifest.live_bytes()
        return self._live

    @property
    def timestamp(self) -> int:
        return self.manifest.timestamp


def new_blob_name(timestamp: int) -> str:
    """Unique per commit, so a replaced savepoint's blob is never overwritten in place."""
    return f"{timestamp:020d}-{secrets.token_hex(8)}"


def is_blob_name(name: object) -> bool:
    """Whether ``name`` is one :func:`new_blob_name` makes; anything else is crafted."""
    return (
        type(name) is str
        and len(name) == 37
        and name[20] == "-"
        and name[:20].isdigit()
        and name[:20].isascii()
        and all(char in "0123456789abcdef" for char in name[21:])
    )


def to_column(values: list[int]) -> bytes:
    """A per-entity column as stored: unsigned 32-bit little-endian numbers."""
    column = array(_U32, values)
    if _BIG_ENDIAN:
        column.byteswap()
    return column.tobytes()


def from_column(data: object, count: int | None = None) -> list[int] | None:
    """A stored column's numbers, or None when ``data`` is not such a column (of ``count``)."""
    if type(data) is not bytes or len(data) % 4 or (count is not None and len(data) != 4 * count):
        return None
    column = array(_U32)
    column.frombytes(data)
    if _BIG_ENDIAN:
        column.byteswap()
    return column.tolist()


def record_problem(fields: object, needed: tuple[str, ...], timestamp: int) -> str | None:
    """What is wrong with a decoded manifest's common fields (a record holding ``needed``,
    ``ts`` the savepoint's timestamp, ``codec`` a name), if anything."""
    if not isinstance(fields, dict):
        return "is not a record"
    missing = set(needed) - fields.keys()
    if missing:
        return f"lacks {sorted(missing)[0]!r}"
    ts, codec = fields["ts"], fields["codec"]
    if type(ts) is not int or ts != timestamp:
        return f"is for timestamp {ts!r}"
    if type(codec) is not str or not 0 < len(codec) <= MAX_CODEC_NAME:
        return "names no codec"
    return None


def seal_manifest(body: bytes, version: int = FORMAT_VERSION) -> bytes:
    """A manifest body with its header: magic, version and the checksum over both."""
    return MANIFEST_HEADER.pack(MANIFEST_MAGIC, version, versioned_crc(version, body)) + body


def corrupt(run_id: str, timestamp: int, why: str) -> CorruptSavepointError:
    return CorruptSavepointError(f"run {run_id!r}: savepoint {timestamp} is corrupt: {why}")
