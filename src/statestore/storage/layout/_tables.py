"""Manifests as a chain of tables: a head naming one full table and the deltas after it.

A savepoint's stored manifest is its **head**: the timestamp, the codec, the entity
count and the chain of **table** blobs that describe it (names, sizes, CRC-32s). The
first table of a chain is **full**: every pack it uses and every entity's columns. Each
later one is a **delta** on the table before it: the packs it adds, the rows whose
state moved to another place, the rows removed and the entities added at the end.
Tables are blobs like packs: immutable, uniquely named, listed in the savepoint's refs.
So a delta never follows a replaced savepoint (a savepoint replaced at its timestamp
gets a new head; the tables it pointed at live while any head names them), a prune
keeps every table a kept savepoint needs, and a load reads the chain in the same
consistent read as the packs. A chain holds at most :data:`MAX_CHAIN` deltas, and a
save writes a full table again once its deltas would hold more rows than the savepoint
has entities, so a load applies a bounded chain.

The writer builds every new table by applying it to its base with :func:`apply`, the
function the reader uses: what a save keeps in memory is what a load computes.
"""

from __future__ import annotations

import itertools
import operator
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgpack
import ormsgpack

from ._format import (
    ENTITY_COLUMNS,
    FORMAT_VERSION,
    MAX_CHAIN,
    MAX_INT64,
    MAX_STATE_BYTES,
    MAX_STATE_VERSION,
    MAX_U32,
    PACK_FIELDS,
    PACK_FLAGS,
    PACK_HEADER_SIZE,
    TABLE_DELTA,
    TABLE_FULL,
    TABLE_HEADER,
    TABLE_MAGIC,
    Manifest,
    from_column,
    is_blob_name,
    record_problem,
    to_column,
)

_HEAD_FIELDS = ("ts", "codec", "count", "tables", "table_sizes", "table_crcs")
_DELTA_FIELDS = ("base_count", "moved", "moved_pack", "moved_index", "moved_offset",
                 "moved_length", "removed")  # fmt: skip


@dataclass
class Packs:
    """Per-pack lists, parallel: what a table says of each pack it adds."""

    names: list[str] = field(default_factory=list)
    sizes: list[int] = field(default_factory=list)
    crcs: list[int] = field(default_factory=list)
    raw: list[int] = field(default_factory=list)
    counts: list[int] = field(default_factory=list)
    flags: list[int] = field(default_factory=list)
    versions: list[int] = field(default_factory=list)

    def lists(self) -> tuple[list[Any], ...]:
        return (self.names, self.sizes, self.crcs, self.raw, self.counts, self.flags, self.versions)

    def take(self, keep: Sequence[int]) -> Packs:
        """Copies of the lists holding only the packs ``keep`` names, in that order."""
        return Packs(*([column[k] for k in keep] for column in self.lists()))

    @classmethod
    def of(cls, m: Manifest) -> Packs:
        """The manifest's per-pack lists (the same list objects: copy before changing)."""
        return cls(
            m.packs, m.pack_sizes, m.pack_crcs, m.pack_raw, m.pack_counts, m.pack_flags,
            m.pack_versions,
        )  # fmt: skip


@dataclass
class Rows:
    """Entity rows: ids and their four columns, parallel."""

    ids: list[str] = field(default_factory=list)
    pack: list[int] = field(default_factory=list)
    index: list[int] = field(default_factory=list)
    offset: list[int] = field(default_factory=list)
    length: list[int] = field(default_factory=list)

    def columns(self) -> tuple[list[int], list[int], list[int], list[int]]:
        return (self.pack, self.index, self.offset, self.length)


@dataclass
class Delta:
    """A table's change to the one before it (a full table is a delta on nothing)."""

    full: bool
    packs: Packs
    moved: list[int] = field(default_factory=list)  # rows of the base that point elsewhere now
    moved_to: Rows = field(default_factory=Rows)  # their new columns (ids unused)
    removed: list[int] = field(default_factory=list)  # rows of the base, ascending
    added: Rows = field(default_factory=Rows)  # appended rows
    base_count: int = 0

    @property
    def size(self) -> int:
        """Rows this table holds: what applying it costs."""
        return len(self.moved) + len(self.removed) + len(self.added.ids)


# ---------------------------------------------------------------------- encoding


def encode_table(delta: Delta) -> bytes:
    """A table blob: header (magic, version, kind) and a MessagePack body."""
    fields: dict[str, Any] = dict(zip(PACK_FIELDS, delta.packs.lists(), strict=True))
    fields["ids"] = delta.added.ids
    for name, column in zip(ENTITY_COLUMNS, delta.added.columns(), strict=True):
        fields[name] = to_column(column)
    if not delta.full:
        fields["base_count"] = delta.base_count
        fields["moved"] = to_column(delta.moved)
        for name, column in zip(_DELTA_FIELDS[2:6], delta.moved_to.columns(), strict=True):
            fields[name] = to_column(column)
        fields["removed"] = to_column(delta.removed)
    return seal_table(ormsgpack.packb(fields), full=delta.full)


def seal_table(body: bytes, *, full: bool) -> bytes:
    """A table body with its header: magic, version and kind (full or delta)."""
    kind = TABLE_FULL if full else TABLE_DELTA
    return TABLE_HEADER.pack(TABLE_MAGIC, FORMAT_VERSION, kind) + body


def encode_head(manifest: Manifest) -> bytes:
    """The body of a savepoint's head (sealed by the caller)."""
    return ormsgpack.packb(
        {
            "ts": manifest.timestamp,
            "codec": manifest.codec,
            "count": len(manifest.ids),
            "tables": manifest.tables,
            "table_sizes": manifest.table_sizes,
            "table_crcs": manifest.table_crcs,
        }
    )


# ---------------------------------------------------------------------- applying


def apply(
    base: Manifest | None,
    delta: Delta,
    *,
    timestamp: int,
    codec: str,
    table: tuple[str, int, int],
) -> Manifest:
    """The manifest ``delta`` (stored as ``table``: name, size, crc) makes of ``base``.

    Row numbers must be in range (the reader checks them first); nothing else is checked.
    """
    if delta.full or base is None:
        rows, packs = Rows(), Packs()
        tables: list[str] = []
        sizes: list[int] = []
        crcs: list[int] = []
        delta_rows = 0
    else:
        rows = Rows(base.ids, base.pack_index[:], base.indexes[:], base.offsets[:], base.lengths[:])
        packs = Packs(*(column[:] for column in Packs.of(base).lists()))
        tables, sizes, crcs = base.tables[:], base.table_sizes[:], base.table_crcs[:]
        delta_rows = base.delta_rows + delta.size
    for mine, added in zip(packs.lists(), delta.packs.lists(), strict=True):
        mine.extend(added)
    for column, moved_to in zip(rows.columns(), delta.moved_to.columns(), strict=True):
        for row, value in zip(delta.moved, moved_to, strict=True):
            column[row] = value
    if delta.removed:
        gone = set(delta.removed)
        keep = [row for row in range(len(rows.ids)) if row not in gone]
        ids = [rows.ids[row] for row in keep]
        rows = Rows(ids, *([column[row] for row in keep] for column in rows.columns()))
    if delta.added.ids:
        rows.ids = rows.ids + delta.added.ids  # a new list: the base's ids stay as they are
        for column, added in zip(rows.columns(), delta.added.columns(), strict=True):
            column.extend(added)
    name, size, crc = table
    tables.append(name)
    sizes.append(size)
    crcs.append(crc)
    return Manifest(
        timestamp, codec, packs.names, packs.sizes, packs.crcs, packs.raw, packs.counts,
        packs.flags, packs.versions, rows.ids, rows.pack, rows.index, rows.offset, rows.length,
        tables, sizes, crcs, delta_rows,
    )  # fmt: skip


# ---------------------------------------------------------------------- reading


def parse_head(
    fields: object, timestamp: int
) -> tuple[str, int, list[str], list[int], list[int]] | str:
    """``(codec, count, tables, sizes, crcs)`` of a decoded head, or what is wrong with it."""
    problem = record_problem(fields, _HEAD_FIELDS, timestamp)
    if problem is not None:
        return problem
    assert isinstance(fields, dict)
    codec, count, tables = fields["codec"], fields["count"], fields["tables"]
    if type(count) is not int or not 0 <= count <= MAX_U32:
        return "has a bad entity count"
    if not isinstance(tables, list) or not 0 < len(tables) <= MAX_CHAIN + 1:
        return "names no table chain or too long a one"
    if not all(map(is_blob_name, tables)) or len(set(tables)) != len(tables):
        return "names a table that is not one"
    for name, high in (("table_sizes", MAX_INT64), ("table_crcs", MAX_U32)):
        if not ints_in(fields[name], TABLE_HEADER.size if name == "table_sizes" else 0, high,
                       len(tables)):  # fmt: skip
            return f"has a bad {name} column"
    return codec, count, tables, fields["table_sizes"], fields["table_crcs"]


def ints_in(column: object, low: int, high: int, count: int) -> bool:
    """Whether ``column`` is a list of ``count`` ints (no bool) in ``[low, high]``.

    ``set(map(type, ...))`` runs in C: manifests are checked often.
    """
    return (
        isinstance(column, list)
        and len(column) == count
        and set(map(type, column)) <= {int}
        and (not column or (low <= min(column) and max(column) <= high))
    )


def parse_table(data: bytes, first: bool, current: int) -> Delta | str:
    """A table blob as a :class:`Delta`, or what is wrong with it.

    ``first``: the chain's first table, which must be full. ``current``: the entity
    count of the table before it, which a delta's row numbers must fall below.
    """
    if len(data) < TABLE_HEADER.size:
        return "is truncated"
    magic, version, kind = TABLE_HEADER.unpack_from(data)
    if (
        magic != TABLE_MAGIC
        or version != FORMAT_VERSION
        or kind != (TABLE_FULL if first else TABLE_DELTA)
    ):
        return "has a bad header"
    try:
        fields = msgpack.unpackb(memoryview(data)[TABLE_HEADER.size :], raw=False)
    except Exception as exc:  # msgpack raises several types on malformed bytes
        return f"does not decode ({exc})"
    if not isinstance(fields, dict):
        return "is not a record"
    needed = {*PACK_FIELDS, "ids", *ENTITY_COLUMNS, *(() if first else _DELTA_FIELDS)}
    missing = needed - fields.keys()
    if missing:
        return f"lacks {sorted(missing)[0]!r}"
    lists = [fields[name] for name in PACK_FIELDS]
    if not all(isinstance(column, list) for column in lists):
        return "has a pack list that is not a list"
    ids = fields["ids"]
    if not isinstance(ids, list):
        return "has ids that are not a list"
    added = [from_column(fields[name], len(ids)) for name in ENTITY_COLUMNS]
    if any(column is None for column in added):
        return "has a bad entity column"
    delta = Delta(first, Packs(*lists), added=Rows(ids, *added))  # type: ignore[arg-type]
    if first:
        return delta
    base_count, moved = fields["base_count"], from_column(fields["moved"])
    removed = from_column(fields["removed"])
    if type(base_count) is not int or base_count != current:
        return f"follows a table of {base_count!r} entities, not {current}"
    if moved is None or removed is None:
        return "has a bad row column"
    moved_to = [from_column(fields[name], len(moved)) for name in _DELTA_FIELDS[2:6]]
    if any(column is None for column in moved_to):
        return "has a bad moved column"
    if (moved and max(moved) >= current) or len(set(moved)) != len(moved):
        return "moves a row it does not have"
    if removed and (removed[-1] >= current or not all(map(operator.lt, removed, removed[1:]))):
        return "removes a row it does not have"
    delta.moved, delta.moved_to = moved, Rows([], *moved_to)  # type: ignore[arg-type]
    delta.removed, delta.base_count = removed, base_count
    return delta


def resolve(
    timestamp: int,
    head: tuple[str, int, list[str], list[int], list[int]],
    tables: Mapping[str, bytes],
) -> Manifest | str:
    """Apply the head's chain of (already verified) table blobs; what is wrong, if anything."""
    codec, count, names, sizes, crcs = head
    manifest: Manifest | None = None
    for position, (name, size, crc) in enumerate(zip(names, sizes, crcs, strict=True)):
        current = 0 if manifest is None else len(manifest.ids)
        delta = parse_table(tables[name], position == 0, current)
        if isinstance(delta, str):
            return f"table {name} {delta}"
        manifest = apply(manifest, delta, timestamp=timestamp, codec=codec, table=(name, size, crc))
    assert manifest is not None  # the head names at least one table
    if len(manifest.ids) != count:
        return f"declares {count} entities, its tables {len(manifest.ids)}"
    problem = check(manifest)
    return problem if problem else manifest


def check(m: Manifest) -> str | None:
    """What is wrong with a resolved manifest's fields, if anything.

    Every field is checked for type and range: a store writer can recompute a CRC, so a
    field that is not what the writer makes is corruption, never a raw exception later.
    """
    packs = m.packs
    if not all(map(is_blob_name, packs)):
        return "names a pack that is not one"
    if len(set(packs)) != len(packs):
        return "names a pack twice"
    for name, values, low, high in (
        ("pack_sizes", m.pack_sizes, PACK_HEADER_SIZE, MAX_INT64),
        ("pack_crcs", m.pack_crcs, 0, MAX_U32),
        ("pack_raw", m.pack_raw, 0, MAX_INT64),
        ("pack_counts", m.pack_counts, 0, MAX_U32),
        ("pack_flags", m.pack_flags, 0, PACK_FLAGS),
        ("pack_versions", m.pack_versions, 1, MAX_STATE_VERSION),
    ):
        if not ints_in(values, low, high, len(packs)):
            return f"has a bad {name} column"
    ids = m.ids
    if not set(map(type, ids)) <= {str}:
        return "has an entity id that is not a str"
    if len(set(ids)) != len(ids):
        return "has an entity id twice"
    if not ids:
        return None
    if max(m.pack_index) >= len(packs):
        return "has a bad pack column"
    if max(m.lengths) > MAX_STATE_BYTES:
        return "has a bad length column"
    ends = list(map(operator.add, m.offsets, m.lengths))
    if len(packs) == 1 and m.in_order:
        # The commonest case, a first or full save: pack 0 holds the states in order.
        if len(ids) > m.pack_counts[0]:
            return "has a bad index column"
        if max(ends) > m.pack_raw[0]:
            return "points past the end of a pack"
        return None
    if len(packs) == 1:  # every entity is in pack 0, in C
        counts: Iterable[int] = itertools.repeat(m.pack_counts[0])
        raws: Iterable[int] = itertools.repeat(m.pack_raw[0])
        slots: Iterable[int] = m.indexes
    else:
        counts = map(m.pack_counts.__getitem__, m.pack_index)
        raws = map(m.pack_raw.__getitem__, m.pack_index)
        tagged = map(operator.mul, m.pack_index, itertools.repeat(1 << 32))
        slots = map(operator.add, tagged, m.indexes)
    if not all(map(operator.lt, m.indexes, counts)):
        return "has a bad index column"
    if not all(map(operator.le, ends, raws)):
        return "points past the end of a pack"
    # Two entities never share one stored state: their decoded values would be one
    # object, and one entity's change would show in the other.
    if len(set(slots)) != len(ids):
        return "names one stored state for two entities"
    return None
