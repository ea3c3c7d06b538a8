"""Crafted savepoints with valid checksums: what someone who can write a store may plant.

CRC-32 is not a MAC: a store writer can change a manifest's fields or a pack's bytes and
recompute every checksum. The conformance suite plants these through a backend's
``tamper`` back door and checks that every read still ends in a value or a
:class:`~statestore.errors.CorruptSavepointError`, quickly and in bounded memory.

* :func:`savepoint_fields` / :func:`forged_parts` take a stored savepoint's manifest
  and tables apart as one record and put a changed one back together, as a manifest
  naming one full table, every checksum valid (:func:`manifest_fields` / :func:`reseal`
  do the same for the manifest alone);
* :data:`FORGERIES` are the field changes that once leaked raw exceptions (an
  unhashable id, an int pack name, a short column, ...), each by name;
* :func:`crafted_savepoint` lays out states of any bytes as a manifest, a table and one pack,
  and :func:`bomb_frame` is a real zstd frame that inflates to a given size;
* :func:`hostile_manifests` and :func:`hostile_states` are hypothesis strategies of
  changed fields and of crafted state bytes, for fuzzing.

A forgery can also yield a well-formed *other* value (two entities' ids swapped): no
check short of a MAC tells that apart, which is why :class:`~statestore.codecs.PickleCodec`
signs its data. What every check here guarantees is the bound: a value or a
``CorruptSavepointError``, in time and memory bounded by the limits.
"""

from __future__ import annotations

import functools
import zlib
from collections.abc import Callable, Mapping
from typing import Any

import msgpack
import zstandard
from hypothesis import strategies as st

from ..codecs import SafeCodec
from ..storage import layout

__all__ = [
    "FORGERIES",
    "bomb_frame",
    "crafted_savepoint",
    "forged_parts",
    "hostile_manifests",
    "hostile_states",
    "manifest_fields",
    "reseal",
    "savepoint_fields",
]

Fields = dict[str, Any]


def manifest_fields(manifest: bytes) -> Fields:
    """The decoded body of a stored manifest, unchecked (to change and :func:`reseal`)."""
    body = memoryview(manifest)[layout.MANIFEST_HEADER_SIZE :]
    fields: Fields = msgpack.unpackb(body, raw=False)
    return fields


def reseal(fields: object) -> bytes:
    """A manifest holding ``fields`` whatever they are, with a valid header and checksum."""
    return layout.seal_manifest(msgpack.packb(fields, use_bin_type=True))


#: The fields of a savepoint's record that its manifest holds; the others are its table's.
_HEAD_KEYS = ("ts", "codec", "count")


def savepoint_fields(
    manifest: bytes, blobs: Mapping[str, bytes], run_id: str, timestamp: int
) -> Fields:
    """A stored savepoint (its manifest, and its tables among ``blobs``) as one record:
    the manifest's fields and one full table's, to change and put back with
    :func:`forged_parts`."""
    m = layout.decode_manifest(run_id, timestamp, manifest, blobs)
    assert isinstance(m, layout.Manifest), "a savepoint of the current format"
    return {
        "ts": m.timestamp,
        "codec": m.codec,
        "count": len(m.ids),
        "packs": m.packs,
        "pack_sizes": m.pack_sizes,
        "pack_crcs": m.pack_crcs,
        "pack_raw": m.pack_raw,
        "pack_counts": m.pack_counts,
        "pack_flags": m.pack_flags,
        "pack_versions": m.pack_versions,
        "ids": m.ids,
        "pack": layout.to_column(m.pack_index),
        "index": layout.to_column(m.indexes),
        "offset": layout.to_column(m.offsets),
        "length": layout.to_column(m.lengths),
    }


def forged_parts(fields: object, table_name: str) -> tuple[bytes, bytes | None]:
    """The manifest and the one full table, stored as ``table_name``, that hold
    ``fields`` whatever they are, every checksum valid (no table when ``fields`` is not
    a record: the manifest is then ``fields`` itself)."""
    if not isinstance(fields, dict):
        return reseal(fields), None
    body = {name: value for name, value in fields.items() if name not in _HEAD_KEYS}
    table = layout.seal_table(msgpack.packb(body, use_bin_type=True), full=True)
    head = {name: fields[name] for name in _HEAD_KEYS if name in fields}
    head.update(tables=[table_name], table_sizes=[len(table)], table_crcs=[zlib.crc32(table)])
    return reseal(head), table


def _changed(change: Callable[[Fields], object]) -> Callable[[Fields], object]:
    """A forgery: ``change`` edits a copy of the fields (or returns a replacement)."""

    def forge(fields: Fields) -> object:
        copy = {
            name: list(value) if isinstance(value, list) else value
            for name, value in fields.items()
        }
        replaced = change(copy)
        return copy if replaced is None else replaced

    return forge


def _set(name: str, value: object) -> Callable[[Fields], object]:
    return _changed(lambda fields: fields.__setitem__(name, value))


def _set_first(name: str, value: object) -> Callable[[Fields], object]:
    return _changed(lambda fields: fields[name].__setitem__(0, value))


def _u32(values: list[int]) -> bytes:
    return b"".join(value.to_bytes(4, "little") for value in values)


def _from_u32(column: bytes) -> list[int]:
    return [int.from_bytes(column[i : i + 4], "little") for i in range(0, len(column), 4)]


def _set_column(
    name: str, edit: Callable[[Fields, list[int]], object]
) -> Callable[[Fields], object]:
    """A forgery of one per-entity column: ``edit`` changes its values in place."""

    def change(fields: Fields) -> None:
        values = _from_u32(fields[name])
        edit(fields, values)
        fields[name] = _u32(values)

    return _changed(change)


def _nested(depth: int) -> list[object]:
    """``[[[...]]]``, ``depth`` lists deep."""
    value: list[object] = []
    for _ in range(depth):
        value = [value]
    return value


#: Crafted manifests (by what is wrong with them), each applied to a real manifest with
#: at least two entities in one pack; every one must read as CorruptSavepointError.
FORGERIES: dict[str, Callable[[Fields], object]] = {
    "not a record": _changed(lambda fields: [1, 2, 3]),
    "a missing column": _changed(lambda fields: fields.pop("length")),
    "an unknown timestamp type": _set("ts", 60_000.0),
    "an entity count its table does not hold": _changed(
        lambda fields: fields.__setitem__("count", fields["count"] + 1)
    ),
    "a state version of 0": _set_first("pack_versions", 0),
    "another savepoint's timestamp": _changed(
        lambda fields: fields.__setitem__("ts", fields["ts"] + 1)
    ),
    "a codec that is not a str": _set("codec", 1),
    "an unhashable entity id": _set_first("ids", [1, 2]),
    "an int entity id": _set_first("ids", 7),
    "an entity id twice": _changed(lambda fields: fields["ids"].__setitem__(1, fields["ids"][0])),
    "an int pack name": _set_first("packs", 5),
    "a pack name outside the store": _set_first("packs", "../../../../etc/passwd"),
    "a pack named twice": _changed(lambda fields: fields.__setitem__("packs", fields["packs"] * 2)),
    "pack_sizes shorter than packs": _set("pack_sizes", []),
    "a pack crc that is not an int": _set_first("pack_crcs", "x"),
    "a bool for a pack size": _set_first("pack_sizes", True),
    "an unknown pack flag": _set_first("pack_flags", 4),
    "a pack flag its header does not have": _changed(
        lambda fields: fields["pack_flags"].__setitem__(0, fields["pack_flags"][0] ^ 1)
    ),
    "a wrong body length": _changed(
        lambda fields: fields["pack_raw"].__setitem__(0, fields["pack_raw"][0] + 1)
    ),
    "a body length over the savepoint limit": _set_first(
        "pack_raw", layout.MAX_SAVEPOINT_BYTES + 1
    ),
    "a state count the pack does not hold": _changed(
        lambda fields: fields["pack_counts"].__setitem__(0, fields["pack_counts"][0] + 1)
    ),
    "a pack index out of range": _set_column(
        "pack", lambda fields, values: values.__setitem__(0, len(fields["packs"]))
    ),
    "a position past the pack's states": _set_column(
        "index", lambda fields, values: values.__setitem__(0, fields["pack_counts"][0])
    ),
    "two entities naming one stored state": _set_column(
        "index", lambda fields, values: values.__setitem__(1, values[0])
    ),
    "an offset past the pack": _set_column(
        "offset", lambda fields, values: values.__setitem__(0, (1 << 32) - 1)
    ),
    "a length past the pack": _set_column(
        "length", lambda fields, values: values.__setitem__(0, 1 << 31)
    ),
    "columns of different lengths": _changed(
        lambda fields: fields.__setitem__("length", fields["length"][:-4])
    ),
    "a column that is not bytes": _changed(
        lambda fields: fields.__setitem__("offset", _from_u32(fields["offset"]))
    ),
    "a float in a column": _set_first("pack_raw", 1.5),
    "a deeply nested column": _set("offset", _nested(200)),
}


@functools.lru_cache(maxsize=4)
def bomb_frame(size: int) -> bytes:
    """A real zstd frame (declaring its size) that inflates to ``size`` zero bytes.

    1 GiB compresses to about 32 KiB; built in chunks, so making it never holds the
    inflated bytes.
    """
    stream = zstandard.ZstdCompressor(level=3, write_content_size=True).compressobj(size=size)
    chunk = bytes(min(size, 1 << 20))
    parts = [
        stream.compress(chunk[: min(len(chunk), size - done)])
        for done in range(0, size, len(chunk))
    ]
    return b"".join(parts) + stream.flush()


def _array_header(count: int) -> bytes:
    if count < 16:
        return bytes([0x90 | count])
    return b"\xdc" + count.to_bytes(2, "big")


def crafted_savepoint(
    timestamp: int,
    table_name: str,
    pack_name: str,
    states: list[bytes],
    *,
    frame: bytes | None = None,
    declared: int | None = None,
    shared: bool = False,
) -> tuple[bytes, bytes, bytes]:
    """A manifest, its one table and its one pack holding ``states`` as its array's elements.

    With ``frame``, the pack's body is that zstd frame instead (the states still give the
    entities and their lengths); ``declared`` is the body length the table declares
    (default: the real one). With ``shared``, every entity names the first state. Every
    checksum is valid: only the manifest and limit checks stand between a reader and what
    the bytes declare.
    """
    head = _array_header(len(states))
    body = head + b"".join(states)
    offsets, offset = [], len(head)
    for state in states:
        offsets.append(offset)
        offset += len(state)
    stored, flags = (body, 0) if frame is None else (frame, layout.PACK_ZSTD)
    pack = layout.PACK_MAGIC + bytes([layout.FORMAT_VERSION, flags]) + stored
    count = len(states)
    fields = {
        "ts": timestamp,
        "codec": SafeCodec.name,
        "count": count,
        "packs": [pack_name],
        "pack_sizes": [len(pack)],
        "pack_crcs": [zlib.crc32(pack)],
        "pack_raw": [len(body) if declared is None else declared],
        "pack_counts": [count],
        "pack_flags": [flags],
        "pack_versions": [1],
        "ids": [f"crafted-{i}" for i in range(count)],
        "pack": _u32([0] * count),
        "index": _u32([0] * count if shared else list(range(count))),
        "offset": _u32(offsets),
        "length": _u32([len(state) for state in states]),
    }
    manifest, table = forged_parts(fields, table_name)
    assert table is not None
    return manifest, table, pack


_COLUMNS = ("pack", "index", "offset", "length")
_PACK_COLUMNS = (
    "packs", "pack_sizes", "pack_crcs", "pack_raw", "pack_counts", "pack_flags", "pack_versions",
)  # fmt: skip
_LISTS = (*_PACK_COLUMNS, "ids")

_odd_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(1 << 63), (1 << 64) - 1),  # what msgpack can hold
    st.sampled_from([0, 1, 4, 5, 6, (1 << 31) - 1, 1 << 31, 1 << 40, (1 << 63) - 1]),
    st.floats(allow_nan=True),
    st.text(max_size=30),
    st.binary(max_size=30),
)
_odd_values = st.recursive(
    _odd_scalars,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=20,
)


@st.composite
def hostile_manifests(draw: st.DrawFn) -> Callable[[Fields], object]:
    """Changes to a real manifest's fields: a whole field replaced, one element of a
    column replaced, or a column shortened or lengthened."""
    kind = draw(st.sampled_from(["field", "element", "resize"]))
    name = draw(st.sampled_from([*_LISTS, *_COLUMNS, *_HEAD_KEYS]))
    value = draw(_odd_values)
    if kind == "field":
        return _set(name, value)
    column = draw(st.sampled_from([*_LISTS, *_COLUMNS]))
    position = draw(st.integers(0, 20))
    number = draw(st.integers(0, (1 << 32) - 1) | st.sampled_from([0, 1, 2, 5, 6, 7]))
    grow = draw(st.booleans())

    def edit(fields: Fields) -> None:
        items = fields[column]
        if isinstance(items, bytes):  # a per-entity column of 32-bit numbers
            values = _from_u32(items)
            if kind == "element":
                values[position % len(values)] = number
            elif grow:
                values.append(values[0])
            else:
                values.pop()
            fields[column] = _u32(values)
        elif kind == "element":
            items[position % len(items)] = value
        elif grow:
            items.append(items[0])
        else:
            items.pop()

    return _changed(edit)


def _ext(code: int, payload: bytes) -> bytes:
    """An ext 16 record by hand: msgpack's ExtType refuses the reserved negative codes."""
    return bytes([0xC8]) + len(payload).to_bytes(2, "big") + (code & 0xFF).to_bytes() + payload


_msgpack_items: st.SearchStrategy[bytes] = st.recursive(
    st.one_of(
        st.binary(max_size=20),
        st.builds(
            lambda value: bytes(msgpack.packb(value)),
            _odd_scalars.filter(
                lambda value: type(value) is not int or -(1 << 63) <= value < 1 << 64
            ),
        ),
    ),
    lambda inner: st.one_of(
        st.builds(_ext, st.integers(0, 12) | st.integers(-128, 127), inner),
        st.builds(
            lambda items: bytes([0x90 + len(items)]) + b"".join(items), st.lists(inner, max_size=15)
        ),
        st.builds(
            lambda items: bytes([0x80 + len(items) // 2]) + b"".join(items),
            st.lists(inner, max_size=15),
        ),
    ),
    max_leaves=30,
)


def hostile_states() -> st.SearchStrategy[bytes]:
    """Crafted bytes of one stored state: MessagePack built from hostile parts (the safe
    codec's extension codes among them, with any payload) or random bytes."""
    return st.one_of(_msgpack_items, st.binary(max_size=100))
