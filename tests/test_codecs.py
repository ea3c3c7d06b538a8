"""Codecs: exact round trips of the safe codec, registration, signed pickle."""

from __future__ import annotations

import collections
import datetime as dt
import math
import pickle
import uuid
from collections import defaultdict
from decimal import Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from statestore import ConfigError, CorruptSavepointError, EncodeError, open_storage
from statestore.codecs import Codec, PickleCodec, SafeCodec
from statestore.codecs._safe import _Writer


def canonical(value: Any) -> Any:
    """A comparable form that keeps every type and treats nan as equal to nan."""
    kind = type(value).__name__
    if isinstance(value, float):
        return (kind, "nan" if math.isnan(value) else (value, math.copysign(1, value)))
    if isinstance(value, list | tuple):
        return (kind, [canonical(item) for item in value])
    if isinstance(value, collections.deque):
        return (kind, value.maxlen, [canonical(item) for item in value])
    if isinstance(value, set | frozenset):
        return (kind, sorted((canonical(item) for item in value), key=repr))
    if isinstance(value, dict):
        pairs = [(canonical(k), canonical(v)) for k, v in value.items()]
        factory = getattr(value, "default_factory", None)
        return (kind, factory, sorted(pairs, key=repr))
    if isinstance(value, dt.datetime | dt.time):
        return (kind, repr(value), value.isoformat(), value.fold)
    if isinstance(value, Decimal):
        return (kind, str(value))
    return (kind, repr(value))


def same(a: Any, b: Any) -> bool:
    """Equal in value AND type, all the way down (nan equals nan)."""
    return bool(canonical(a) == canonical(b))


EXAMPLES: list[Any] = [
    None,
    True,
    False,
    0,
    -1,
    2**63 - 1,
    -(2**63),
    2**64 - 1,
    2**64,
    -(2**63) - 1,
    10**100,
    -(10**100),
    0.5,
    -0.0,
    float("nan"),
    float("inf"),
    float("-inf"),
    "",
    "héllo \U0001f600",
    b"",
    b"\x00\xff",
    [],
    [1, [2, [3]]],
    (),
    (1,),
    (1, (2, [3, (4,)])),
    {},
    {"a": 1},
    {1: "int key", None: "none key", (1, 2): "tuple key", frozenset({3}): "frozenset key"},
    {True: 1, 2.5: 2, b"k": 3},
    set(),
    {1, "a", (2, 3)},
    frozenset(),
    frozenset({1, frozenset({2})}),
    dt.datetime(2024, 3, 10, 12, 30, 15, 123456),
    dt.datetime(2024, 3, 10, 12, 30, tzinfo=dt.UTC),
    dt.datetime(2024, 3, 10, 12, 30, tzinfo=dt.timezone(dt.timedelta(hours=5, minutes=30))),
    dt.datetime(2024, 3, 10, 12, 30, tzinfo=dt.timezone(-dt.timedelta(hours=8))),
    dt.datetime(2024, 11, 3, 1, 30, tzinfo=ZoneInfo("America/New_York"), fold=1),
    dt.date(1, 1, 1),
    dt.date(9999, 12, 31),
    dt.time(23, 59, 59, 999999),
    dt.time(1, 2, tzinfo=dt.timezone(dt.timedelta(hours=-3))),
    dt.timedelta(days=-3, seconds=5, microseconds=7),
    dt.timedelta(days=999999999),
    Decimal("1.10"),
    Decimal("-0.000"),
    Decimal("NaN"),
    Decimal("-Infinity"),
    Decimal("1E+400"),
    uuid.UUID("12345678-1234-5678-1234-567812345678"),
    {"nested": [({"a": {1, 2}}, frozenset({(1, dt.date(2020, 1, 1))}))]},
]


# Ids by position: the repr of a set depends on the hash seed, which differs between
# pytest-xdist workers.
@pytest.mark.parametrize(
    "value", EXAMPLES, ids=[f"{i}-{type(v).__name__}" for i, v in enumerate(EXAMPLES)]
)
def test_safe_codec_round_trips_exactly(value: Any) -> None:
    codec = SafeCodec()
    assert same(codec.decode(codec.encode(value)), value)


def _values() -> st.SearchStrategy[Any]:
    hashable = st.recursive(
        st.none()
        | st.booleans()
        | st.integers()
        | st.floats(allow_nan=True)
        | st.text()
        | st.binary()
        | st.decimals(allow_nan=False)
        | st.uuids()
        | st.datetimes(timezones=st.none() | st.timezones())
        | st.dates()
        | st.timedeltas()
        | st.fractions(),
        lambda inner: st.tuples(inner, inner) | st.frozensets(inner, max_size=3),
        max_leaves=6,
    )
    return st.recursive(
        hashable,
        lambda inner: (
            st.lists(inner, max_size=4)
            | st.tuples(inner)
            | st.dictionaries(hashable, inner, max_size=4)
            | st.sets(hashable, max_size=4)
            | st.builds(
                collections.deque, st.lists(inner, max_size=3), st.none() | st.integers(0, 4)
            )
            | st.dictionaries(hashable, inner, max_size=3).map(collections.OrderedDict)
            | st.dictionaries(hashable, inner, max_size=3).map(lambda d: defaultdict(list, d))
            | st.dictionaries(hashable, st.integers(), max_size=3).map(collections.Counter)
        ),
        max_leaves=20,
    )


@settings(max_examples=300, deadline=None)
@given(_values())
def test_safe_codec_round_trips_any_nesting(value: Any) -> None:
    codec = SafeCodec()
    assert same(codec.decode(codec.encode(value)), value)


@settings(max_examples=300, deadline=None)
@given(_values())
def test_the_fast_paths_write_the_bytes_of_the_general_one(value: Any) -> None:
    """Leaves and plain tuples and sets are encoded in one call at the top level, and
    many states in one map; the general path (every extension through the nesting
    count) must give the same bytes, so stores written either way read the same."""
    codec = SafeCodec()
    try:
        general = _Writer(codec, fast=True).pack(value)
    except TypeError:  # a key ormsgpack refuses: the reference binding writes the value
        general = _Writer(codec, fast=False).pack(value)
    assert codec.encode(value) == general
    assert codec.encode_many([value, value]) == [general, general]


class Point:
    def __init__(self, x: int, y: int) -> None:
        self.x, self.y = x, y

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Point) and (self.x, self.y) == (other.x, other.y)

    __hash__ = None  # type: ignore[assignment]


class Boom:
    """Unpickling this runs code: it must never happen with a bad signature."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path(self.marker).write_text, ("unpickled!",))


@pytest.mark.parametrize(
    "value",
    [object(), 1 + 2j, Point(1, 2), {"k": [Point(1, 2)]}, type("S", (str,), {})("sub")],
    ids=["object", "complex", "custom", "nested-custom", "str-subclass"],
)
def test_unregistered_types_are_refused_by_name(value: Any) -> None:
    with pytest.raises(EncodeError, match="cannot encode"):
        SafeCodec().encode(value)


def test_registered_type_round_trips_and_needs_registration_to_decode() -> None:
    codec = SafeCodec()
    codec.register(Point, "test.Point", lambda p: (p.x, p.y), lambda v: Point(*v))
    data = codec.encode({"where": [Point(1, 2)]})
    assert codec.decode(data) == {"where": [Point(1, 2)]}
    with pytest.raises(ValueError, match=r"unregistered type 'test\.Point'"):
        SafeCodec().decode(data)


def test_a_name_cannot_be_registered_twice_for_different_types() -> None:
    codec = SafeCodec()
    codec.register(Point, "test.Point", lambda p: (p.x, p.y), lambda v: Point(*v))
    with pytest.raises(ValueError, match="already registered"):
        codec.register(Boom, "test.Point", lambda b: b.marker, Boom)


@pytest.mark.parametrize("garbage", [b"", b"\xc1", b"\xc7\x03\x63abc", b"\x92\x01"])
def test_safe_codec_rejects_garbage(garbage: bytes) -> None:
    with pytest.raises(Exception):  # noqa: B017, PT011 - layout maps any of them to Corrupt
        SafeCodec().decode(garbage)


def test_pickle_codec_round_trips_any_picklable_value() -> None:
    value = {"point": Point(3, 4), "complex": 1 + 2j}
    for codec in (PickleCodec(), PickleCodec(key=b"secret")):
        assert codec.decode(codec.encode(value)) == value


def test_signed_pickle_refuses_a_forged_blob_without_unpickling_it(tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    codec = PickleCodec(key=b"the right key")
    forged = PickleCodec(key=b"an attacker's key").encode(Boom(str(marker)))
    unsigned = pickle.dumps(Boom(str(marker)))
    for blob in (forged, unsigned, b"\x00" * 32 + unsigned, b"short"):
        with pytest.raises(ValueError, match="signature"):
            codec.decode(blob)
    assert not marker.exists()


def test_pickle_key_is_never_shown() -> None:
    assert "secret" not in repr(PickleCodec(key=b"secret"))


def test_pickle_codec_refuses_a_bad_key() -> None:
    with pytest.raises(TypeError):
        PickleCodec(key="not bytes")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "codec", [SafeCodec(), PickleCodec(), PickleCodec(key=b"k")], ids=["safe", "pickle", "signed"]
)
def test_codecs_satisfy_the_protocol(codec: Codec) -> None:
    assert isinstance(codec, Codec)
    assert codec.name


def test_store_written_with_pickle_names_the_codec_needed_to_read_it() -> None:
    url = f"memory://codec-{uuid.uuid4().hex}"
    with open_storage(url, codec=PickleCodec(key=b"k")) as writer:
        writer.init_storage("run")
        writer.save_savepoint("run", 1, [("e", Point(1, 2))])
    with open_storage(url) as reader, pytest.raises(ConfigError, match="pickle-hmac-sha256"):
        reader.get_latest_savepoint("run")
    wrong_key = PickleCodec(key=b"wrong")
    with open_storage(url, codec=wrong_key) as reader, pytest.raises(CorruptSavepointError):
        reader.get_latest_savepoint("run")


def test_safe_savepoints_stay_readable_when_pickle_is_configured() -> None:
    url = f"memory://codec-{uuid.uuid4().hex}"
    with open_storage(url) as writer:
        writer.init_storage("run")
        writer.save_savepoint("run", 1, [("e", (1, {2}))])
    with open_storage(url, codec=PickleCodec(key=b"k")) as reader:
        assert reader.get_latest_savepoint("run") == (1, [("e", (1, {2}))])


def test_large_states_are_compressed_and_round_trip() -> None:
    with open_storage("memory://") as storage:
        storage.init_storage("run")
        big = {"text": "abc" * 100_000, "values": list(range(10_000))}
        storage.save_savepoint("run", 1, [("big", big)])
        (info,) = storage.list_savepoints("run")
        assert info.size < 50_000  # 300 kB of repetitive text, zstd-compressed
        assert storage.get_latest_savepoint("run").entities == [("big", big)]
