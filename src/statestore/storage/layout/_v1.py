"""Reading savepoints of format version 1, which statestore no longer writes.

Version 1 packs held states back to back, each addressed by offset and length and
zstd-compressed on its own when over 4096 bytes; its manifests listed every column as
MessagePack lists of ints. Every check the reader made then it still makes, so a crafted
version-1 savepoint ends in a value or a :class:`~statestore.errors.CorruptSavepointError`
as before. A resumed run's first save after loading one writes every state anew, in the
current format: version-1 packs are never reused.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import zstandard

from ...errors import CorruptSavepointError
from ._format import record_problem

VERSION = 1
PACK_HEADER = b"SSPK" + bytes([VERSION])
FLAG_ZSTD = 1
_PACK_NAME = re.compile(r"[0-9]{20}-[0-9a-f]{16}")
_MAX_INT64 = 2**63 - 1
_MAX_CRC = 2**32 - 1
_COLUMNS = (
    "ts", "codec", "packs", "pack_sizes", "pack_crcs", "ids",
    "pack", "offset", "length", "raw", "flags",
)  # fmt: skip


@dataclass(frozen=True)
class ManifestV1:
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

    @property
    def declared_bytes(self) -> int:
        return sum(self.raw_lengths)


def _all_of_type(column: object, kind: type) -> bool:
    """Whether ``column`` is a list of exactly ``kind`` (no subclass: a bool is no int)."""
    return isinstance(column, list) and set(map(type, column)) <= {kind}


def _ints_in(column: object, low: int, high: int) -> bool:
    return _all_of_type(column, int) and (
        not column or (low <= min(column) and max(column) <= high)  # type: ignore[call-overload]
    )


def parse(fields: object, timestamp: int, max_state_bytes: int) -> ManifestV1 | str:
    """The checked manifest, or what is wrong with the decoded body."""
    problem = record_problem(fields, _COLUMNS, timestamp)
    if problem is not None:
        return problem
    assert isinstance(fields, dict)
    ts, codec, packs, ids = fields["ts"], fields["codec"], fields["packs"], fields["ids"]
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
        ("raw", 0, max_state_bytes),
        ("flags", 0, FLAG_ZSTD),
    ):
        if not _ints_in(fields[name], low, high) or len(fields[name]) != len(ids):
            return f"has a bad {name} column"
    # States never share stored bytes, so together they point at no more than the packs
    # hold: without this, entities pointing at one zstd frame multiply what it inflates to.
    if sum(fields["length"]) > sum(fields["pack_sizes"]) - len(PACK_HEADER) * len(packs):
        return "points at more bytes than its packs hold"
    return ManifestV1(
        ts,
        codec,
        packs,
        fields["pack_sizes"],
        fields["pack_crcs"],
        ids,
        fields["pack"],
        fields["offset"],
        fields["length"],
        fields["raw"],
        fields["flags"],
    )


def extract(
    manifest: ManifestV1,
    packs: Mapping[str, bytes],
    corrupt: Callable[[str], CorruptSavepointError],
) -> list[bytes | memoryview]:
    """Verify every pack and cut out each state as the codec wrote it (decompressed)."""
    views: list[memoryview] = []
    for name, size, crc in zip(
        manifest.packs, manifest.pack_sizes, manifest.pack_crcs, strict=True
    ):
        pack = packs.get(name)
        if pack is None:
            raise corrupt(f"pack {name} is missing")
        if len(pack) != size or pack[: len(PACK_HEADER)] != PACK_HEADER:
            raise corrupt(f"pack {name} has a bad header or size")
        if zlib.crc32(pack) != crc:
            raise corrupt(f"pack {name}: checksum mismatch")
        views.append(memoryview(pack))
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
                # The frame must declare the length the manifest does, so nothing larger
                # is ever allocated than was checked.
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
        raise corrupt(
            f"entity {entity_id!r} cannot be read ({type(exc).__name__}: {exc})"
        ) from None
    return raws
