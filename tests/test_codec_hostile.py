"""The safe codec on nested, hostile and zone-less input: linear time, a depth limit, no
silently changed value."""

from __future__ import annotations

import contextlib
import datetime as dt
import time
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from statestore.codecs import SafeCodec
from statestore.codecs._safe import MAX_DEPTH
from statestore.errors import CorruptSavepointError, EncodeError
from statestore.storage.layout import decode_state

ZONE_FILE = Path("/usr/share/zoneinfo/Europe/Paris")


def nested_tuples(depth: int) -> Any:
    """Tuples each holding the next level before a tuple-keyed dict: the fast decoder
    reads a whole level before it refuses the dict, so a retry per level doubles."""
    value: Any = 1
    for _ in range(depth):
        value = (value, {(1,): "x"})
    return value


def decode_seconds(codec: SafeCodec, data: bytes) -> float:
    started = time.perf_counter()
    codec.decode(data)
    return time.perf_counter() - started


def test_nested_tuples_with_tuple_keys_decode_in_linear_time() -> None:
    codec = SafeCodec()
    value = nested_tuples(24)
    data = codec.encode(value)
    assert codec.decode(data) == value
    # Exponential decoding took 44 s at this depth (doubling per level); linear is ~1 ms.
    assert decode_seconds(codec, data) < 1.0
    deep = codec.encode(nested_tuples(90))
    shallow = codec.encode(nested_tuples(45))
    best_deep = min(decode_seconds(codec, deep) for _ in range(3))
    best_shallow = min(decode_seconds(codec, shallow) for _ in range(3))
    assert best_deep < 10 * best_shallow + 0.05  # twice the depth, about twice the time


def test_values_deeper_than_the_limit_are_refused_at_save() -> None:
    codec = SafeCodec()
    value: Any = 1
    for _ in range(MAX_DEPTH - 1):
        value = (value,)
    assert codec.decode(codec.encode(value)) == value  # at the limit: stored and read back
    with pytest.raises(EncodeError, match="nested deeper"):
        codec.encode((value,))
    with pytest.raises(EncodeError, match="nested deeper"):
        codec.encode(({(value,): 1},))  # the msgpack path counts the same way


def crafted_tuples(depth: int) -> bytes:
    """A tuple extension nested ``depth`` times, written past the encoder."""
    data = msgpack.packb(1)
    for _ in range(depth):
        data = msgpack.packb(msgpack.ExtType(1, msgpack.packb([msgpack.ExtType(1, data)])))
    return bytes(data)


def test_crafted_bytes_deeper_than_the_limit_fail_to_decode_quickly() -> None:
    codec = SafeCodec()
    data = crafted_tuples(MAX_DEPTH)
    started = time.perf_counter()
    with pytest.raises((ValueError, TypeError)):
        codec.decode(data)
    assert time.perf_counter() - started < 1.0


@pytest.mark.skipif(not ZONE_FILE.exists(), reason="needs the system time zone database")
def test_a_zone_without_a_key_keeps_its_offset() -> None:
    with ZONE_FILE.open("rb") as file:
        zone = ZoneInfo.from_file(file)
    assert zone.key is None
    codec = SafeCodec()
    for moment in (
        dt.datetime(2024, 1, 15, 12, 0, tzinfo=zone),
        dt.datetime(2024, 7, 15, 12, 0, tzinfo=zone),
    ):
        decoded = codec.decode(codec.encode(moment))
        assert isinstance(decoded, dt.datetime)
        assert decoded.tzinfo is not None  # never silently naive
        assert decoded.utcoffset() == moment.utcoffset()
        assert decoded == moment
    with pytest.raises(EncodeError, match="no name and no fixed offset"):
        codec.encode(dt.time(12, 0, tzinfo=zone))  # a time has no instant to fix an offset


class _NoOffset(dt.tzinfo):
    def utcoffset(self, _when: dt.datetime | None) -> dt.timedelta | None:
        return None

    def dst(self, _when: dt.datetime | None) -> dt.timedelta | None:
        return None

    def tzname(self, _when: dt.datetime | None) -> str | None:
        return None


def test_a_zone_with_no_offset_is_refused_not_dropped() -> None:
    codec = SafeCodec()
    with pytest.raises(EncodeError):
        codec.encode(dt.datetime(2024, 1, 1, tzinfo=_NoOffset()))


# Hostile bytes: random msgpack trees of extension records, nested inside each other.
_leaf = st.one_of(st.integers(-(2**63), 2**64 - 1), st.text(max_size=4), st.binary(max_size=8))


def _ext(children: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    payload = st.one_of(st.binary(max_size=16), children.map(msgpack.packb))
    return st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(_leaf, children, max_size=3),
        st.builds(msgpack.ExtType, st.integers(0, 15), payload),
    )


_hostile = st.recursive(_leaf, _ext, max_leaves=40).map(lambda v: bytes(msgpack.packb(v)))


@settings(max_examples=300, deadline=2000, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.one_of(_hostile, st.binary(max_size=64)))
def test_hostile_bytes_end_in_a_value_or_corrupt_savepoint_error_quickly(data: bytes) -> None:
    started = time.perf_counter()
    with contextlib.suppress(CorruptSavepointError):
        decode_state("run", 60_000, "e1", SafeCodec(), data)
    assert time.perf_counter() - started < 1.0
