"""Crafted savepoints with valid checksums: what someone who can write a store may plant.

CRC-32 is not a MAC: a store writer can change a manifest's fields or a pack's bytes and
recompute every checksum. The conformance suite plants these through a backend's
``tamper`` back door and checks that every read still ends in a value or a
:class:`~statestore.errors.CorruptSavepointError`, quickly and in bounded memory.

* :func:`manifest_fields` / :func:`reseal` take a stored manifest apart and put a
  changed one back together with a valid checksum;
* :data:`FORGERIES` are the field changes that once leaked raw exceptions (an
  unhashable id, an int pack name, a short column, ...), each by name;
* :func:`crafted_savepoint` lays out states of any bytes as a manifest and one pack,
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
from collections.abc import Callable
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
    "hostile_manifests",
    "hostile_states",
    "manifest_fields",
    "reseal",
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


def _nested(depth: int) -> list[object]:
    """``[[[...]]]``, ``depth`` lists deep."""
    value: list[object] = []
    for _ in range(depth):
        value = [value]
    return value


#: Crafted manifests (by what is wrong with them), each applied to a real manifest with
#: at least two entities; every one must read as CorruptSavepointError.
FORGERIES: dict[str, Callable[[Fields], object]] = {
    "not a record": _changed(lambda fields: [1, 2, 3]),
    "a missing column": _changed(lambda fields: fields.pop("flags")),
    "an unknown timestamp type": _set("ts", 60_000.0),
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
    "a pack index out of range": _changed(
        lambda fields: fields.__setitem__("pack", [len(fields["packs"])] * len(fields["ids"]))
    ),
    "a negative offset": _set_first("offset", -3),
    "a bool for an offset": _set_first("offset", True),
    "a length past the pack": _set_first("length", 1 << 40),
    "an unknown flag": _set_first("flags", 2),
    "a raw length over the state limit": _set_first("raw", layout.MAX_STATE_BYTES + 1),
    "a wrong raw length": _changed(
        lambda fields: fields["raw"].__setitem__(0, fields["raw"][0] + 1)
    ),
    "columns of different lengths": _changed(lambda fields: fields["raw"].pop()),
    "a float in a column": _set_first("length", 1.5),
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


def crafted_savepoint(
    timestamp: int,
    pack_name: str,
    stored: list[bytes],
    raw_sizes: list[int],
    flags: list[int],
    *,
    shared: bool = False,
) -> tuple[bytes, bytes]:
    """A manifest and its one pack holding ``stored`` as the entities' states.

    ``raw_sizes`` and ``flags`` (1: zstd) are declared as given. With ``shared``, the
    pack holds only the first state and every entity points at it. Every checksum is valid: only the
    manifest and limit checks stand between a reader and what the bytes declare.
    """
    held = stored[:1] if shared else stored
    pack = layout.PACK_HEADER + b"".join(held)
    offsets, offset = [], len(layout.PACK_HEADER)
    for state in held:
        offsets.append(offset)
        offset += len(state)
    lengths = [len(state) for state in held]
    if shared:
        offsets, lengths = offsets * len(stored), lengths * len(stored)
    fields = {
        "ts": timestamp,
        "codec": SafeCodec.name,
        "packs": [pack_name],
        "pack_sizes": [len(pack)],
        "pack_crcs": [zlib.crc32(pack)],
        "ids": [f"crafted-{i}" for i in range(len(stored))],
        "pack": [0] * len(stored),
        "offset": offsets,
        "length": lengths,
        "raw": raw_sizes,
        "flags": flags,
    }
    return reseal(fields), pack


_COLUMNS = ("pack", "offset", "length", "raw", "flags", "pack_sizes", "pack_crcs", "ids")

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
    name = draw(st.sampled_from([*_COLUMNS, "ts", "codec", "packs"]))
    value = draw(_odd_values)
    if kind == "field":
        return _set(name, value)
    column = draw(st.sampled_from(_COLUMNS))
    if kind == "element":
        position = draw(st.integers(0, 20))

        def replace_one(fields: Fields) -> None:
            items = fields[column]
            items[position % len(items)] = value

        return _changed(replace_one)
    grow = draw(st.booleans())

    def resize(fields: Fields) -> None:
        items = fields[column]
        if grow:
            items.append(items[0])
        else:
            items.pop()

    return _changed(resize)


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


@st.composite
def hostile_states(draw: st.DrawFn) -> tuple[bytes, int, int]:
    """Crafted bytes of one stored state, as ``(stored, declared raw length, flag)``:
    msgpack built from hostile parts (the safe codec's extension codes among them, with
    any payload), random bytes, or either compressed; the declared length is mostly right.
    """
    raw = draw(st.one_of(_msgpack_items, st.binary(max_size=100)))
    flag = draw(st.sampled_from([0, 0, 1]))
    stored = raw
    if flag:
        stored = zstandard.ZstdCompressor(write_content_size=draw(st.booleans())).compress(raw)
    declared = draw(st.sampled_from([len(raw), len(raw), len(raw) + 1, max(len(raw) - 1, 0)]))
    return stored, declared, flag
