"""The common state types of stream jobs and simulations round-trip exactly through the
safe codec, or fail at save with an EncodeError that names the entity and how to
register the type; crafted records of them end in a value or CorruptSavepointError."""

from __future__ import annotations

import collections
import dataclasses
import enum
import fractions
import uuid
from typing import Any

import ormsgpack
import pytest

from statestore import open_storage
from statestore.codecs import SafeCodec
from statestore.errors import EncodeError, InvalidArgumentError


class Color(enum.Enum):
    RED = 1
    GREEN = "green"


class Mood(enum.Enum):  # never registered
    HAPPY = 1


@dataclasses.dataclass(frozen=True)
class Reading:
    sensor: str
    value: fractions.Fraction
    tags: tuple[str, ...] = ()
    seen: int = dataclasses.field(default=0, init=False)


def _codec() -> SafeCodec:
    codec = SafeCodec()
    codec.register_enum(Color)
    codec.register_dataclass(Reading)
    codec.register_factory(lambda: collections.deque(maxlen=3), "recent3")
    return codec


def _same(a: Any, b: Any) -> bool:
    """Equal and of the same types, all the way down (dict order too)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return list(a) == list(b) and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple | collections.deque):
        return len(a) == len(b) and all(map(_same, a, b))
    return bool(a == b)


def _reading() -> Reading:
    reading = Reading("s1", fractions.Fraction(1, 3), ("a", "b"))
    object.__setattr__(reading, "seen", 7)
    return reading


VALUES: dict[str, Any] = {
    "deque": collections.deque([1, (2, 3)], maxlen=5),
    "unbounded deque": collections.deque(["x", "y"]),
    "counter": collections.Counter({"a": 3, (1, 2): 1}),
    "ordered dict": collections.OrderedDict([("b", 1), ("a", {2})]),
    "defaultdict(list)": collections.defaultdict(list, {"k": [1], 3: []}),
    "fraction": fractions.Fraction(-(2**70), 3),
    "enum": [Color.RED, Color.GREEN],
    "dataclass": _reading(),
    "nested": {"window": collections.deque([fractions.Fraction(1, 2)], maxlen=2)},
}


@pytest.mark.parametrize("name", VALUES)
def test_common_types_round_trip_exactly(name: str) -> None:
    codec = _codec()
    value = VALUES[name]
    back: Any = codec.decode(codec.encode(value))
    assert _same(back, value), (back, value)
    if isinstance(value, collections.deque):
        assert back.maxlen == value.maxlen


def test_a_defaultdict_keeps_its_registered_factory() -> None:
    codec = _codec()
    value: collections.defaultdict[str, Any] = collections.defaultdict(codec._factories["recent3"])
    value["a"].append(1)
    back: Any = codec.decode(codec.encode(value))
    assert back.default_factory is value.default_factory
    assert back["new"].maxlen == 3


@pytest.mark.parametrize(
    ("value", "how"),
    [
        (collections.defaultdict(lambda: 0), "register_factory"),
        (Mood.HAPPY, "register_enum"),
        (Reading("x", fractions.Fraction(1)), "register_dataclass"),
    ],
    ids=["factory", "enum", "dataclass"],
)
def test_an_unregistered_type_names_the_entity_and_how_to_register(value: Any, how: str) -> None:
    with open_storage(f"memory://types-{uuid.uuid4().hex}") as storage:
        storage.init_storage("run")
        with pytest.raises(EncodeError, match=rf"entity 'e'.*{how}"):
            storage.save_savepoint("run", 1, [("e", value)])
        assert storage.list_savepoints("run") == []


def test_the_types_survive_a_store_and_an_incremental_save() -> None:
    codec = _codec()
    with open_storage(f"memory://types-{uuid.uuid4().hex}", codec=codec) as storage:
        storage.init_storage("run")
        states = list(VALUES.items())
        storage.save_savepoint("run", 1, states)
        storage.save_savepoint("run", 2, states)  # every state reused
        _ts, back = storage.get_latest_savepoint("run")
        assert all(_same(b, v) for (_, b), (_, v) in zip(back, states, strict=True))


@pytest.mark.parametrize(
    "record",
    [
        (12, [-1, [1]]),  # a deque with a negative maxlen
        (12, [1]),  # a deque without its items
        (13, [[1]]),  # a counter pair of one
        (13, [[[1], 2]]),  # an unhashable key
        (15, ["no-such-factory", []]),
        (16, [1, 0]),  # a zero denominator
        (16, ["1", 2]),
    ],
)
def test_crafted_records_of_the_types_are_refused(record: tuple[int, Any]) -> None:
    """A crafted record never decodes to a value of the wrong shape: the codec raises
    (a read reports CorruptSavepointError), and a save of it is refused unwritten."""
    code, payload = record
    crafted = ormsgpack.packb(ormsgpack.Ext(code, ormsgpack.packb(payload)))
    codec = _codec()
    with pytest.raises((ValueError, TypeError, ZeroDivisionError)):
        codec.decode(crafted)
    with open_storage(f"memory://types-{uuid.uuid4().hex}", codec=codec) as storage:
        storage.init_storage("run")
        with pytest.raises(InvalidArgumentError, match="entity 'e'"):
            storage.save_encoded_savepoint("run", 1, [("e", crafted)])
        assert storage.list_savepoints("run") == []


def test_numpy_arrays_and_scalars_round_trip_when_registered() -> None:
    import numpy as np

    from statestore.codecs.numpy import register_numpy

    codec = SafeCodec()
    register_numpy(codec)
    arrays = [
        np.arange(6, dtype=">i4").reshape(2, 3),
        np.array([1.5, np.nan, -0.0]),
        np.array(["ab", "c"]),
        np.zeros((0, 3), dtype=np.float32),
        np.asfortranarray(np.arange(6).reshape(2, 3)),
    ]
    for array in arrays:
        decoded: Any = codec.decode(codec.encode({"a": array}))
        back = decoded["a"]
        assert back.dtype == array.dtype
        assert back.shape == array.shape
        assert back.tobytes() == np.ascontiguousarray(array).tobytes()
        assert back.flags.writeable
    for scalar in (np.float32(1.25), np.int64(-7), np.bool_(True), np.datetime64("2026-01-01")):
        back = codec.decode(codec.encode(scalar))
        assert type(back) is type(scalar)
        assert back == scalar
    with pytest.raises(EncodeError, match="object dtype"):
        codec.encode(np.array([object()]))
    with pytest.raises(EncodeError, match="register"):
        SafeCodec().encode(np.float64(1.0))  # not registered: refused, naming the way


@pytest.mark.parametrize(
    "stored",
    [["<f8", [3], b"\x00" * 8], ["|O", [1], b"\x00" * 8], ["<f8", [-1], b""], ["<f8", "x", b""]],
    ids=["bytes short", "object dtype", "negative shape", "no shape"],
)
def test_crafted_numpy_records_are_refused(stored: list[Any]) -> None:
    import numpy as np  # noqa: F401 - register_numpy imports it

    from statestore.codecs.numpy import ARRAY, register_numpy

    codec = SafeCodec()
    register_numpy(codec)
    crafted = ormsgpack.packb(ormsgpack.Ext(11, ormsgpack.packb([ARRAY, stored])))
    with pytest.raises((ValueError, TypeError)):
        codec.decode(crafted)
