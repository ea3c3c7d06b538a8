"""Reading: a savepoint's head, its table chain and packs, every byte checked first."""

from __future__ import annotations

import collections
import operator
import zlib
from collections.abc import Iterable, Mapping

import msgpack
import zstandard

from ... import collector
from ...codecs import Codec, SafeCodec
from ...errors import ConfigError, CorruptSavepointError
from ..durable import versioned_crc
from . import _v1
from ._format import (
    FORMAT_VERSION,
    LIMIT_OPTION,
    MANIFEST_HEADER,
    MANIFEST_MAGIC,
    MAX_SAVEPOINT_BYTES,
    MAX_STATE_BYTES,
    PACK_HEADER,
    PACK_HEADER_SIZE,
    PACK_MAGIC,
    PACK_WRAPPED,
    PACK_ZSTD,
    Manifest,
    ReuseBase,
    corrupt,
    fingerprint,
)
from ._tables import parse_head, resolve
from ._v1 import ManifestV1


def decode_manifest(
    run_id: str,
    timestamp: int,
    data: bytes,
    blobs: Mapping[str, bytes],
    *,
    max_savepoint_bytes: int = MAX_SAVEPOINT_BYTES,
) -> Manifest | ManifestV1:
    """Check and resolve a savepoint's manifest (its head and, from ``blobs``, its table
    chain); every failure is a CorruptSavepointError naming the run and timestamp."""
    if len(data) < MANIFEST_HEADER.size:
        raise corrupt(run_id, timestamp, "manifest is truncated")
    magic, version, crc = MANIFEST_HEADER.unpack_from(data)
    if magic != MANIFEST_MAGIC:
        raise corrupt(run_id, timestamp, "manifest has a bad header")
    body = memoryview(data)[MANIFEST_HEADER.size :]
    if versioned_crc(version, body) != crc:
        raise corrupt(run_id, timestamp, "manifest checksum mismatch")
    if version > FORMAT_VERSION:
        raise ConfigError(
            f"run {run_id!r}: savepoint {timestamp} uses format version {version}; this "
            f"statestore reads up to version {FORMAT_VERSION}: upgrade statestore"
        )
    try:
        fields = msgpack.unpackb(body, raw=False)
    except Exception as exc:  # msgpack raises several types on malformed bytes
        raise corrupt(run_id, timestamp, f"manifest does not decode ({exc})") from None
    parsed: Manifest | ManifestV1 | str
    if version == _v1.VERSION:
        parsed = _v1.parse(fields, timestamp, MAX_STATE_BYTES)
        declared = parsed.declared_bytes if isinstance(parsed, ManifestV1) else 0
    elif version == FORMAT_VERSION:
        parsed = _resolve(run_id, timestamp, fields, blobs)
        declared = 0
        if isinstance(parsed, Manifest):
            declared = sum(parsed.pack_raw[pack] for pack in parsed.live_packs())
    else:
        parsed = f"has format version {version}, which no statestore wrote"
    if isinstance(parsed, str):
        raise corrupt(run_id, timestamp, f"manifest {parsed}")
    if declared > max_savepoint_bytes:
        raise corrupt(
            run_id,
            timestamp,
            f"its states declare {declared} bytes in all, over the {LIMIT_OPTION}="
            f"{max_savepoint_bytes} limit (if the savepoint is genuine, raise the limit with "
            f"open_storage(url, {LIMIT_OPTION}=N) or ?{LIMIT_OPTION}=N in the URL)",
        )
    return parsed


def _resolve(
    run_id: str, timestamp: int, fields: object, blobs: Mapping[str, bytes]
) -> Manifest | str:
    head = parse_head(fields, timestamp)
    if isinstance(head, str):
        return head
    _codec, _count, names, sizes, crcs = head
    for name, size, crc in zip(names, sizes, crcs, strict=True):
        table = blobs.get(name)
        if table is None:
            raise corrupt(run_id, timestamp, f"table {name} is missing")
        if len(table) != size or zlib.crc32(table) != crc:
            raise corrupt(run_id, timestamp, f"table {name}: checksum mismatch")
    return resolve(timestamp, head, blobs)


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


def _array_count(body: memoryview) -> int | None:
    """The element count a MessagePack array header at the start of ``body`` declares."""
    if len(body) >= 1 and 0x90 <= body[0] <= 0x9F:
        return body[0] & 0x0F
    if len(body) >= 3 and body[0] == 0xDC:
        return int.from_bytes(body[1:3], "big")
    if len(body) >= 5 and body[0] == 0xDD:
        return int.from_bytes(body[1:5], "big")
    return None


def _pack_body(run_id: str, manifest: Manifest, k: int, pack: bytes | None) -> memoryview:
    """Pack ``k``'s verified body, decompressed; checksums before anything is decoded."""
    timestamp, name = manifest.timestamp, manifest.packs[k]
    raw, count, flags = manifest.pack_raw[k], manifest.pack_counts[k], manifest.pack_flags[k]
    if pack is None:
        raise corrupt(run_id, timestamp, f"pack {name} is missing")
    header = PACK_HEADER.pack(PACK_MAGIC, FORMAT_VERSION, flags)
    if len(pack) != manifest.pack_sizes[k] or pack[:PACK_HEADER_SIZE] != header:
        raise corrupt(run_id, timestamp, f"pack {name} has a bad header or size")
    if zlib.crc32(pack) != manifest.pack_crcs[k]:
        raise corrupt(run_id, timestamp, f"pack {name}: checksum mismatch")
    body = memoryview(pack)[PACK_HEADER_SIZE:]
    if flags & PACK_ZSTD:
        # The frame must declare the length the manifest does (the writer always records
        # it), so nothing larger is ever allocated than was checked.
        try:
            if zstandard.frame_content_size(body) != raw:
                raise ValueError("the zstd frame declares another length")
            body = memoryview(zstandard.ZstdDecompressor().decompress(body, max_output_size=raw))
        except MemoryError:
            raise
        except Exception as exc:  # a bad zstd frame
            why = f"pack {name} cannot be read ({type(exc).__name__}: {exc})"
            raise corrupt(run_id, timestamp, why) from None
    if len(body) != raw:
        raise corrupt(run_id, timestamp, f"pack {name} has another length than declared")
    if _array_count(body) != count:
        why = f"pack {name} does not hold the {count} states its manifest declares"
        raise corrupt(run_id, timestamp, why)
    return body


def _pack_bodies(
    run_id: str, manifest: Manifest, packs: Mapping[str, bytes]
) -> dict[int, memoryview]:
    """The verified body of every pack some entity's state is in."""
    return {
        k: _pack_body(run_id, manifest, k, packs.get(manifest.packs[k]))
        for k in manifest.live_packs()
    }


def _decode_pack(
    run_id: str, manifest: Manifest, k: int, body: memoryview, codec: Codec
) -> list[object]:
    """The states of pack ``k``'s array, decoded in one call of the codec where it can."""
    name, count, flags = manifest.packs[k], manifest.pack_counts[k], manifest.pack_flags[k]
    try:
        if flags & PACK_WRAPPED:
            items = msgpack.unpackb(body, raw=False)
            if type(items) is not list or not set(map(type, items)) <= {bytes}:
                raise ValueError("its array holds something else than encoded states")
            decode = codec.decode
            values = [decode(item) for item in items]
        elif getattr(codec, "msgpack_native", False):
            values = codec.decode(body)  # type: ignore[assignment]
        else:
            raise ValueError(f"its states are not in the form codec {codec.name!r} writes")
    except MemoryError:
        raise  # allocations are bounded by checked lengths: this is the machine, not the data
    except Exception as exc:  # a decoder may raise anything on hostile bytes
        why = f"pack {name} does not decode ({type(exc).__name__}: {exc})"
        raise corrupt(run_id, manifest.timestamp, why) from None
    if type(values) is not list or len(values) != count:
        why = f"pack {name} does not hold the {count} states its manifest declares"
        raise corrupt(run_id, manifest.timestamp, why)
    return values


def _slices(manifest: Manifest, bodies: Mapping[int, memoryview]) -> Iterable[memoryview]:
    """Each entity's codec bytes, as views into the verified bodies (bounds checked)."""
    if len(bodies) == 1:  # the common case, in C: every entity is in one pack
        (body,) = bodies.values()
        ends = map(operator.add, manifest.offsets, manifest.lengths)
        return map(body.__getitem__, map(slice, manifest.offsets, ends))
    return [
        bodies[pack][offset : offset + length]
        for pack, offset, length in zip(
            manifest.pack_index, manifest.offsets, manifest.lengths, strict=True
        )
    ]


def extract_states(
    run_id: str, manifest: Manifest | ManifestV1, packs: Mapping[str, bytes]
) -> list[tuple[str, bytes]]:
    """Verify every pack of the manifest and cut out each state as the codec wrote it.

    Any failed check is a :class:`CorruptSavepointError`.
    """
    raws: list[bytes | memoryview] | list[memoryview]
    if isinstance(manifest, ManifestV1):
        raws = _v1.extract(manifest, packs, lambda why: corrupt(run_id, manifest.timestamp, why))
    else:
        raws = list(_slices(manifest, _pack_bodies(run_id, manifest, packs)))
    return [(entity_id, bytes(raw)) for entity_id, raw in zip(manifest.ids, raws, strict=True)]


def stored_states(manifest: Manifest | ManifestV1) -> list[tuple[str, int, int, bool, str]]:
    """``(entity_id, encoded bytes, stored bytes, compressed, pack)`` per entity, from the
    manifest alone (a state of a compressed pack counts its encoded bytes as stored)."""
    if isinstance(manifest, ManifestV1):
        return [
            (entity_id, raw, stored, bool(flag & _v1.FLAG_ZSTD), manifest.packs[pack])
            for entity_id, raw, stored, flag, pack in zip(
                manifest.ids,
                manifest.raw_lengths,
                manifest.lengths,
                manifest.flags,
                manifest.pack_index,
                strict=True,
            )
        ]
    compressed = [bool(flags & PACK_ZSTD) for flags in manifest.pack_flags]
    return [
        (entity_id, length, length, compressed[pack], manifest.packs[pack])
        for entity_id, length, pack in zip(
            manifest.ids, manifest.lengths, manifest.pack_index, strict=True
        )
    ]


def summarize(manifest: Manifest | ManifestV1) -> tuple[int, int, dict[str, int]]:
    """``(encoded bytes of all states, states written anew, {pack: stored size})`` of a
    checked manifest, without an object per entity.

    A state was written anew when its pack's name starts with the savepoint's own
    timestamp (the save that writes a pack names it so); the others are reused from
    earlier savepoints' packs. The packs are those some state is in (format 1: all).
    """
    own = f"{manifest.timestamp:020d}-"
    if isinstance(manifest, ManifestV1):
        states = stored_states(manifest)
        packs = dict(zip(manifest.packs, manifest.pack_sizes, strict=True))
        written = sum(1 for state in states if state[4].startswith(own))
        return sum(state[1] for state in states), written, packs
    per_pack = collections.Counter(manifest.pack_index)  # counted in C
    packs = {manifest.packs[k]: manifest.pack_sizes[k] for k in sorted(per_pack)}
    written = sum(n for k, n in per_pack.items() if manifest.packs[k].startswith(own))
    return sum(manifest.lengths), written, packs


def decode_state(
    run_id: str, timestamp: int, entity_id: str, codec: Codec, raw: bytes | memoryview
) -> object:
    """Decode one verified state; a codec failure is a :class:`CorruptSavepointError`."""
    try:
        return codec.decode(raw)
    except Exception as exc:  # a decoder may raise anything on hostile bytes
        why = f"entity {entity_id!r} does not decode ({type(exc).__name__}: {exc})"
        raise corrupt(run_id, timestamp, why) from None


def decode_states(
    run_id: str, manifest: Manifest | ManifestV1, packs: Mapping[str, bytes], codec: Codec
) -> list[tuple[str, object]]:
    """Verify and decode every state of the manifest, in save order."""
    # Everything built here is the live result, not garbage: see statestore.collector.
    with collector.paused():
        if isinstance(manifest, ManifestV1):
            raws = _v1.extract(
                manifest, packs, lambda why: corrupt(run_id, manifest.timestamp, why)
            )
            return [
                (entity_id, decode_state(run_id, manifest.timestamp, entity_id, codec, raw))
                for entity_id, raw in zip(manifest.ids, raws, strict=True)
            ]
        bodies = _pack_bodies(run_id, manifest, packs)
        decoded = {k: _decode_pack(run_id, manifest, k, body, codec) for k, body in bodies.items()}
        if len(decoded) == 1 and manifest.pack_index and manifest.in_order:
            states = next(iter(decoded.values()))  # one pack, in save order: the common case
            if len(states) != len(manifest.ids):
                states = states[: len(manifest.ids)]
        else:
            states = [
                decoded[pack][index]
                for pack, index in zip(manifest.pack_index, manifest.indexes, strict=True)
            ]
        return list(zip(manifest.ids, states, strict=True))


def reuse_base(
    run_id: str, loaded: Manifest, manifest: bytes, blobs: Mapping[str, bytes]
) -> ReuseBase | None:
    """The base of the run's next save, from the savepoint ``loaded`` (a manifest read
    earlier) as stored now (``manifest`` and ``blobs``, read again): its packs verified
    and each state's hash taken.

    A load does not do this itself: most loads (a reader, a resume that never saves)
    would pay for nothing. None when the savepoint was replaced since (another head)
    or its bytes fail a check: the next save is then a full one.
    """
    try:
        fields = msgpack.unpackb(memoryview(manifest)[MANIFEST_HEADER.size :], raw=False)
        if not isinstance(fields, dict) or fields.get("tables") != loaded.tables:
            return None
        bodies = _pack_bodies(run_id, loaded, blobs)
    except (CorruptSavepointError, ValueError, TypeError, msgpack.UnpackException):
        return None
    with collector.paused():
        hashes = list(map(fingerprint, _slices(loaded, bodies)))
        position = dict(zip(loaded.ids, range(len(loaded.ids)), strict=True))
    return ReuseBase(loaded, position, hashes)
