"""Writing: states into packs, and a manifest (a head and a table) that points at them."""

from __future__ import annotations

import bisect
import itertools
import operator
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import msgpack
import zstandard

from ...codecs import Codec
from ...errors import EncodeError, InvalidArgumentError
from ._format import (
    COMPACTED_AMPLIFICATION,
    COMPRESS_THRESHOLD,
    FORMAT_VERSION,
    LIMIT_OPTION,
    MAX_CHAIN,
    MAX_PACK_BYTES,
    MAX_PACK_STATES,
    MAX_READ_AMPLIFICATION,
    MAX_STATE_BYTES,
    PACK_HEADER,
    PACK_MAGIC,
    PACK_WRAPPED,
    PACK_ZSTD,
    Manifest,
    ReuseBase,
    SavepointRecord,
    fingerprint,
    new_blob_name,
    seal_manifest,
)
from ._tables import Delta, Packs, Rows, apply, encode_head, encode_table


class EncodedState(bytes):
    """Bytes that this library's codec call produced: one whole value of the codec.

    What :func:`encode_state` returns, so a save of encoded states knows which ones it
    need not check (:func:`check_encoded`); any other bytes are checked.
    """

    __slots__ = ()


def encode_state(codec: Codec, entity_id: str, state: object, run_id: str) -> EncodedState:
    """Encode one state, naming the entity and type when the codec refuses it."""
    try:
        data = codec.encode(state)
    except EncodeError as exc:
        raise EncodeError(
            f"run {run_id!r}: entity {entity_id!r}: state of type "
            f"{type(state).__qualname__} cannot be encoded ({exc})"
        ) from None
    check_state_size(run_id, entity_id, data)
    return EncodedState(data)


def check_encoded(codec: Codec, run_id: str, ids: Sequence[str], encoded: Sequence[bytes]) -> None:
    """Refuse, before anything is written, an encoded state that is not one whole value
    of a MessagePack codec (bytes from an archive or another store, say).

    Such a codec's pack decodes in one call, so one state with a second value behind it
    would shift its neighbours. States :func:`encode_state` made are trusted; the others
    cost one check and one decode each, which the safe codec does without running any
    code. Other codecs' states are never decoded here (unpickling foreign bytes would
    run code they choose): each is stored wrapped on its own, as it was given.
    """
    if not getattr(codec, "msgpack_native", False):
        return
    for entity_id, data in zip(ids, encoded, strict=True):
        if type(data) is EncodedState:
            continue
        try:
            unpacker = msgpack.Unpacker(max_buffer_size=max(len(data), 1))
            unpacker.feed(data)
            unpacker.skip()
            if unpacker.tell() != len(data):
                raise ValueError("bytes follow its value")
            codec.decode(data)
        except Exception as exc:  # a decoder may raise anything on foreign bytes
            raise InvalidArgumentError(
                f"run {run_id!r}: entity {entity_id!r}: encoded state is not a value of "
                f"codec {codec.name!r} ({type(exc).__name__}: {exc}); nothing was stored"
            ) from None


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
    encode_many = getattr(codec, "encode_many", None)  # a codec's bulk path, if it has one
    try:
        encoded = encode_many(states) if encode_many else list(map(codec.encode, states))
    except EncodeError:
        encoded = []
    if len(encoded) != len(states) or max(map(len, encoded), default=0) > MAX_STATE_BYTES:
        # The slow path, only to raise the error that names the entity.
        for entity_id, state in zip(ids, states, strict=True):
            encode_state(codec, entity_id, state, run_id)
    return encoded


def check_savepoint_size(run_id: str, timestamp: int, total: int, limit: int) -> None:
    """Refuse, before anything is written, a savepoint whose states take ``total`` bytes,
    which its readers would refuse."""
    if total > limit:
        raise EncodeError(
            f"run {run_id!r}: savepoint {timestamp}: its states encode to {total} bytes "
            f"in all, over the {LIMIT_OPTION}={limit} limit (raise it with "
            f"open_storage(url, {LIMIT_OPTION}=N) or ?{LIMIT_OPTION}=N in the URL); "
            "nothing was stored"
        )


# ---------------------------------------------------------------------- packs


def _array_header(count: int) -> bytes:
    if count < 16:
        return bytes([0x90 | count])
    if count < 1 << 16:
        return b"\xdc" + count.to_bytes(2, "big")
    return b"\xdd" + count.to_bytes(4, "big")


def _bin_header(length: int) -> bytes:
    if length < 1 << 8:
        return b"\xc4" + length.to_bytes(1, "big")
    if length < 1 << 16:
        return b"\xc5" + length.to_bytes(2, "big")
    return b"\xc6" + length.to_bytes(4, "big")


def _chunks(lengths: Sequence[int]) -> list[tuple[int, int]]:
    """``(start, end)`` of consecutive states filling packs of at most MAX_PACK_STATES
    states and (unless one state is larger) MAX_PACK_BYTES bytes."""
    ends = list(itertools.accumulate(lengths, initial=0))
    chunks, start = [], 0
    while start < len(lengths):
        end = min(start + MAX_PACK_STATES, len(lengths))
        end = min(end, bisect.bisect_right(ends, ends[start] + MAX_PACK_BYTES, start + 1) - 1)
        end = max(end, start + 1)
        chunks.append((start, end))
        start = end
    return chunks


@dataclass(frozen=True)
class _NewPacks:
    """Packs holding fresh states: their table entries, blobs and the states' columns."""

    packs: Packs
    blobs: dict[str, bytes]
    rows: Rows  # per fresh state, in order (ids unused)


def _pack_states(
    timestamp: int, states: Sequence[bytes], first: int, *, wrapped: bool, version: int
) -> _NewPacks:
    """Lay ``states`` out in new packs numbered from ``first``."""
    packs, blobs, rows = Packs(), {}, Rows()
    lengths = list(map(len, states))
    for start, end in _chunks(lengths):
        chunk = states[start:end]
        head = _array_header(len(chunk))
        if wrapped:
            elements = [_bin_header(len(data)) + data for data in chunk]
            skips = [
                len(element) - len(data) for element, data in zip(elements, chunk, strict=True)
            ]
        else:
            elements, skips = list(chunk), [0] * len(chunk)
        starts = itertools.accumulate(map(len, elements), initial=len(head))
        body = head + b"".join(elements)
        flags, stored = (PACK_WRAPPED if wrapped else 0), body
        if len(body) > COMPRESS_THRESHOLD * len(chunk):
            compressed = zstandard.ZstdCompressor(level=3, write_content_size=True).compress(body)
            if len(compressed) < len(body):
                flags, stored = flags | PACK_ZSTD, compressed
        blob = PACK_HEADER.pack(PACK_MAGIC, FORMAT_VERSION, flags) + stored
        name = new_blob_name(timestamp)
        blobs[name] = blob
        for column, value in zip(
            packs.lists(),
            (name, len(blob), zlib.crc32(blob), len(body), len(chunk), flags, version),
            strict=True,
        ):
            column.append(value)
        rows.pack += [first + len(packs.names) - 1] * len(chunk)
        rows.index += range(len(chunk))
        rows.offset += map(operator.add, starts, skips)
        rows.length += lengths[start:end]
    return _NewPacks(packs, blobs, rows)


# ---------------------------------------------------------------------- records


def _record(
    timestamp: int,
    codec: Codec,
    base: Manifest | None,
    delta: Delta,
    new: _NewPacks,
    *,
    live: list[int] | None = None,
) -> tuple[SavepointRecord, Manifest]:
    """The record of a savepoint that ``delta`` makes of ``base``, and its manifest;
    ``live``, when known, says which packs are in use (else they are counted)."""
    table = encode_table(delta)
    name = new_blob_name(timestamp)
    manifest = apply(
        base,
        delta,
        timestamp=timestamp,
        codec=codec.name,
        table=(name, len(table), zlib.crc32(table)),
    )
    used = manifest.live_packs() if live is None else [p for p, size in enumerate(live) if size]
    refs = (*manifest.tables, *(manifest.packs[p] for p in used))
    head = seal_manifest(encode_head(manifest))
    record = SavepointRecord(
        timestamp=timestamp,
        manifest=head,
        blobs={**new.blobs, name: table},
        refs=refs,
        entity_count=len(manifest.ids),
        states_written=len(new.rows.pack),
        full_size=len(head) + sum(manifest.pack_sizes[p] for p in used),
    )
    return record, manifest


def _full_delta(
    timestamp: int,
    codec: Codec,
    ids: Sequence[str],
    rows: list[int] | None,
    fresh_states: Sequence[bytes],
    *,
    base: Manifest | None,
    version: int,
) -> tuple[Delta, _NewPacks]:
    """A full table of ``ids``: row ``rows[i]`` of ``base`` where >= 0, else the next
    fresh state. Only the packs some entity uses are listed."""
    wrapped = not getattr(codec, "msgpack_native", False)
    if rows is None or base is None:
        new = _pack_states(timestamp, fresh_states, 0, wrapped=wrapped, version=version)
        return Delta(True, new.packs, added=Rows(list(ids), *new.rows.columns())), new
    kept = sorted({base.pack_index[row] for row in rows if row >= 0})
    renumber = dict(zip(kept, range(len(kept)), strict=True))
    new = _pack_states(timestamp, fresh_states, len(kept), wrapped=wrapped, version=version)
    packs = Packs.of(base).take(kept)
    for mine, added in zip(packs.lists(), new.packs.lists(), strict=True):
        mine.extend(added)
    fresh = iter(zip(*new.rows.columns(), strict=True))
    b_pack, b_index, b_offset, b_length = base.pack_index, base.indexes, base.offsets, base.lengths
    columns = [
        (renumber[b_pack[row]], b_index[row], b_offset[row], b_length[row])
        if row >= 0
        else next(fresh)
        for row in rows
    ]
    return Delta(True, packs, added=Rows(list(ids), *_columns(columns))), new


_ONES = itertools.repeat(1)


def _reusable(
    ids: Sequence[str],
    hashes: list[int],
    lengths: list[int],
    base: ReuseBase,
    version: int,
    *,
    keep_versions: bool,
) -> list[int]:
    """For each state, its row in ``base`` when it is reused there, else -1.

    A state is reusable when its encoding has the base's length and hash. Its version
    must be ``version`` too, unless ``keep_versions`` (the states keep the versions they
    were stored with: a change set's unchanged entities). Then, so that loading reads at
    most ``MAX_READ_AMPLIFICATION`` times the live bytes, the sparsest packs of
    ``version`` have their live states copied forward into the new pack until the bound
    holds.
    """
    position, b_hashes, m = base.position, base.hashes, base.manifest
    b_lengths, b_packs = m.lengths, m.pack_index
    # This touches every entity of every save: C-level maps, not Python loops.
    if list(ids) == m.ids:  # the base's entities in its order: row i is entity i
        same = list(
            map(
                operator.and_,
                map(operator.eq, hashes, b_hashes),
                map(operator.eq, lengths, b_lengths),
            )
        )
        # i where the state is the base's, else -1: (i + 1) * same - 1.
        rows = list(map(operator.sub, map(operator.mul, same, range(1, len(same) + 1)), _ONES))
    else:
        found = list(map(position.get, ids, itertools.repeat(-1)))
        rows = [
            row if row >= 0 and b_hashes[row] == digest and b_lengths[row] == length else -1
            for row, digest, length in zip(found, hashes, lengths, strict=True)
        ]
    reused = list(filter((-1).__lt__, rows))
    if not reused:
        return rows
    other = {pack for pack, written in enumerate(m.pack_versions) if written != version}
    live = [0] * len(m.packs)
    if len(live) == 1:
        live[0] = sum(map(b_lengths.__getitem__, reused))
    else:
        for row in reused:
            live[b_packs[row]] += b_lengths[row]
    changed = sum(itertools.compress(lengths, map((0).__gt__, rows)))
    used = [pack for pack, size in enumerate(live) if size and pack not in other]
    live_total = changed + sum(live[pack] for pack in used)
    referenced = changed + sum(m.pack_raw[pack] for pack in used)
    copied = set() if keep_versions else other
    # Past the bound, copy down to well under it, so the next saves need no copying.
    bound = MAX_READ_AMPLIFICATION
    if referenced > bound * live_total:
        bound = COMPACTED_AMPLIFICATION
    for pack in sorted(used, key=lambda p: live[p] / m.pack_raw[p]):  # sparsest first
        if referenced <= bound * live_total:
            break
        referenced -= m.pack_raw[pack] - live[pack]
        copied.add(pack)
    if copied:
        rows = [-1 if row >= 0 and b_packs[row] in copied else row for row in rows]
    return rows


def build_record(
    run_id: str,
    timestamp: int,
    codec: Codec,
    ids: Sequence[str],
    encoded: Sequence[bytes],
    *,
    base: ReuseBase | None = None,
    state_version: int = 1,
    keep_versions: bool = False,
) -> tuple[SavepointRecord, ReuseBase]:
    """Lay a whole savepoint out as new packs for the states not in ``base`` and a table:
    a delta on ``base`` when the entities keep its order (removed ones left out, new ones
    at the end) and its chain has room, else a full table.

    With ``keep_versions``, a state equal to the base's keeps the version it was stored
    with (the compaction of a change set); otherwise every state is ``state_version``.
    Returns the record to commit and the base it leaves behind (the base of the next
    save once the commit succeeds).
    """
    hashes = list(map(fingerprint, encoded))
    lengths = list(map(len, encoded))
    rows: list[int] | None = None
    if base is not None and base.manifest.codec == codec.name:
        rows = _reusable(ids, hashes, lengths, base, state_version, keep_versions=keep_versions)
        if max(rows, default=-1) < 0:
            rows = None  # nothing reused: lay out as a first save
    fresh = range(len(ids)) if rows is None else [i for i, row in enumerate(rows) if row < 0]
    fresh_states = encoded if rows is None else [encoded[i] for i in fresh]
    delta_plan = None if rows is None or base is None else _as_delta(ids, rows, base)
    m = None if base is None else base.manifest
    if delta_plan is not None and m is not None and base is not None:
        moved_ids, removed, added_from = delta_plan
        wrapped = not getattr(codec, "msgpack_native", False)
        new = _pack_states(
            timestamp, fresh_states, len(m.packs), wrapped=wrapped, version=state_version
        )
        fresh_rows = iter(zip(*new.rows.columns(), strict=True))
        moved_to = [next(fresh_rows) for _ in moved_ids]
        added = [next(fresh_rows) for _ in range(added_from, len(ids))]
        delta = Delta(
            False,
            new.packs,
            moved=[base.position[ids[i]] for i in moved_ids],
            moved_to=Rows([], *_columns(moved_to)),
            removed=removed,
            added=Rows(list(ids[added_from:]), *_columns(added)),
            base_count=len(m.ids),
        )
    else:
        delta, new = _full_delta(
            timestamp, codec, ids, rows, fresh_states, base=m, version=state_version
        )
        m = None
    record, manifest = _record(timestamp, codec, m, delta, new)
    position = (
        base.position
        if base is not None and manifest.ids is base.manifest.ids
        else dict(zip(manifest.ids, range(len(manifest.ids)), strict=True))
    )
    return record, ReuseBase(manifest, position, hashes)


def _columns(
    rows: list[tuple[int, int, int, int]],
) -> tuple[list[int], list[int], list[int], list[int]]:
    """Rows of (pack, index, offset, length) as four columns (four empty ones for none)."""
    if not rows:
        return [], [], [], []
    pack, index, offset, length = (list(column) for column in zip(*rows, strict=True))
    return pack, index, offset, length


def _as_delta(
    ids: Sequence[str], rows: list[int], base: ReuseBase
) -> tuple[list[int], list[int], int] | None:
    """How ``ids`` (reusing ``rows`` of ``base``) is a delta on ``base``:
    ``(positions of moved states, removed base rows, where the added ids start)``, or
    None when a full table is due (another order, a full chain, too many rows)."""
    m = base.manifest
    if len(m.tables) > MAX_CHAIN:
        return None
    if list(ids) == m.ids:
        removed: list[int] = []
        kept = len(ids)
    else:
        present = set(ids)
        removed = [row for row, entity_id in enumerate(m.ids) if entity_id not in present]
        kept = len(m.ids) - len(removed)
        gone = set(removed)
        if list(ids[:kept]) != [
            entity_id for row, entity_id in enumerate(m.ids) if row not in gone
        ]:
            return None
    moved = [i for i in range(kept) if rows[i] < 0]
    if m.delta_rows + len(moved) + len(removed) + len(ids) - kept > len(ids):
        return None
    return moved, removed, kept


def build_changes(
    timestamp: int,
    codec: Codec,
    base: ReuseBase,
    ids: Sequence[str],
    encoded: Sequence[bytes],
    *,
    removed_ids: Sequence[str],
    state_version: int = 1,
) -> tuple[SavepointRecord, ReuseBase] | None:
    """Lay out ``base`` with the states of ``ids`` set to ``encoded`` (ids it lacks are
    appended) and ``removed_ids`` left out, touching only those entities.

    Returns None when the packs the result would point into hold more than
    ``MAX_READ_AMPLIFICATION`` times its live bytes: the caller then saves the whole
    savepoint, which copies the sparse packs' live states forward.
    """
    m, position, b_hashes = base.manifest, base.position, base.hashes
    hashes = list(map(fingerprint, encoded))
    removed = sorted({position[entity_id] for entity_id in removed_ids if entity_id in position})
    moved_at: list[int] = []
    moved: list[int] = []
    added_at: list[int] = []
    for at, (entity_id, digest, data) in enumerate(zip(ids, hashes, encoded, strict=True)):
        row = position.get(entity_id)
        if row is None:
            added_at.append(at)
        elif (
            b_hashes[row] != digest
            or m.lengths[row] != len(data)
            or m.pack_versions[m.pack_index[row]] != state_version
        ):
            moved_at.append(at)
            moved.append(row)
    wrapped = not getattr(codec, "msgpack_native", False)
    fresh = [encoded[at] for at in moved_at + added_at]
    new = _pack_states(timestamp, fresh, len(m.packs), wrapped=wrapped, version=state_version)
    live = base.live + [0] * len(new.packs.names)
    for row in moved + removed:
        live[m.pack_index[row]] -= m.lengths[row]
    for pack, length in zip(new.rows.pack, new.rows.length, strict=True):
        live[pack] += length
    raws = m.pack_raw + new.packs.raw
    if sum(raws[p] for p, size in enumerate(live) if size) > MAX_READ_AMPLIFICATION * sum(live):
        return None
    fresh_rows = list(zip(*new.rows.columns(), strict=True))
    delta = Delta(
        False,
        new.packs,
        moved=moved,
        moved_to=Rows([], *_columns(fresh_rows[: len(moved)])),
        removed=removed,
        added=Rows([ids[at] for at in added_at], *_columns(fresh_rows[len(moved) :])),
        base_count=len(m.ids),
    )
    count = len(m.ids) - len(removed) + len(added_at)
    if len(m.tables) > MAX_CHAIN or m.delta_rows + delta.size > count:
        # Resolve in memory, then store the result as a full table of its live packs.
        whole = apply(m, delta, timestamp=timestamp, codec=codec.name, table=("", 0, 0))
        rows = list(range(len(whole.ids)))
        full, _ = _full_delta(
            timestamp, codec, whole.ids, rows, [], base=whole, version=state_version
        )
        record, manifest = _record(timestamp, codec, None, full, new)
        kept_live = None  # the full table numbers its packs anew: counted when needed
    else:
        record, manifest = _record(timestamp, codec, m, delta, new, live=live)
        kept_live = live
    new_hashes = b_hashes[:]
    for row, at in zip(moved, moved_at, strict=True):
        new_hashes[row] = hashes[at]
    if removed:
        gone = set(removed)
        new_hashes = [digest for row, digest in enumerate(new_hashes) if row not in gone]
    new_hashes += [hashes[at] for at in added_at]
    if manifest.ids is m.ids:
        new_position = position
    elif removed:
        new_position = dict(zip(manifest.ids, range(len(manifest.ids)), strict=True))
    else:
        new_position = position.copy()
        new_position.update(zip(manifest.ids[len(m.ids) :], range(len(m.ids), count), strict=True))
    return record, ReuseBase(manifest, new_position, new_hashes, kept_live)
