"""Hypothesis strategies and sample values for the storage contract.

Valid inputs (run ids, timestamps, states the safe codec round-trips, entity lists), the
bad inputs the contract names, and :func:`exact_difference`, the comparison that
"round-trips exactly" means: equal in value *and* type all the way down, ``nan`` equal
to ``nan``, ``-0.0`` distinct from ``0.0``, ``Decimal("1.10")`` distinct from
``Decimal("1.1")``, an aware datetime keeping its offset.
"""

from __future__ import annotations

import datetime as dt
import math
import uuid
from decimal import Decimal
from typing import Any

from hypothesis import strategies as st

__all__ = [
    "AWKWARD_RUN_IDS",
    "BAD_ENTITIES",
    "BAD_KEEP_NS",
    "BAD_RUN_IDS",
    "BAD_TIMESTAMPS",
    "BAD_WRITER_TOKENS",
    "MAX_TIMESTAMP",
    "SAFE_VALUES",
    "Unencodable",
    "entity_lists",
    "exact_difference",
    "run_ids",
    "states",
    "timestamps",
]

MAX_TIMESTAMP = 2**63 - 1


class Unencodable:
    """A type no codec knows: saving it must fail with an error naming the entity."""

    def __repr__(self) -> str:
        return "Unencodable()"


# ------------------------------------------------------------------ valid inputs

#: Run ids a naive backend gets wrong: path syntax, reserved file names, case, size.
AWKWARD_RUN_IDS: list[str] = [
    ".",
    "..",
    "../escape",
    "a/b",
    "a\\b",
    "/absolute",
    "CON",
    "nul.txt",
    "Run",
    "run",
    " ",
    "tab\tand\nnewline",
    "%2F",
    "quote'\"; DROP TABLE runs; --",
    "emoji \U0001f600",
    "é",  # composed
    "e\u0301",  # decomposed: a different str, so a different run
    "x" * 512,
]


def run_ids() -> st.SearchStrategy[str]:
    """Valid run ids: non-empty str, at most 512 characters, no NUL, no lone surrogate."""
    text = st.text(
        alphabet=st.characters(codec="utf-8", exclude_characters="\x00"),  # no lone surrogate
        min_size=1,
        max_size=40,
    )
    return text | st.sampled_from(AWKWARD_RUN_IDS)


def timestamps() -> st.SearchStrategy[int]:
    """Valid timestamps (epoch ms), the ends of the range included."""
    return st.integers(0, MAX_TIMESTAMP) | st.sampled_from([0, 1, 9, 10, 2**31, MAX_TIMESTAMP])


def _timezones() -> st.SearchStrategy[dt.tzinfo]:
    fixed = st.integers(-23 * 60 - 59, 23 * 60 + 59).map(
        lambda minutes: dt.timezone(dt.timedelta(minutes=minutes))
    )
    return fixed | st.timezones()


def _hashable_values() -> st.SearchStrategy[Any]:
    leaves = (
        st.none()
        | st.booleans()
        | st.integers()
        | st.integers(min_value=2**64, max_value=2**200)
        | st.floats(allow_nan=True, allow_infinity=True)
        | st.text(max_size=20)
        | st.binary(max_size=20)
        | st.decimals(allow_nan=False, allow_infinity=True)  # a signalling NaN cannot be hashed
        | st.uuids()
        | st.datetimes(timezones=st.none() | _timezones())
        | st.dates()
        | st.times(timezones=st.none() | _timezones())
        | st.timedeltas()
    )
    return st.recursive(
        leaves,
        lambda inner: st.tuples(inner, inner) | st.frozensets(inner, max_size=3),
        max_leaves=6,
    )


def states() -> st.SearchStrategy[Any]:
    """Every type the safe codec round-trips exactly, nested freely."""
    hashable = _hashable_values()
    return st.recursive(
        hashable,
        lambda inner: (
            st.lists(inner, max_size=4)
            | st.lists(inner, max_size=4).map(tuple)
            | st.dictionaries(st.text(max_size=8) | st.integers(), inner, max_size=4)
            | st.sets(hashable, max_size=4)
            | st.frozensets(hashable, max_size=4)
        ),
        max_leaves=12,
    )


def entity_lists(
    state: st.SearchStrategy[Any] | None = None, max_size: int = 6
) -> st.SearchStrategy[list[tuple[str, Any]]]:
    """``[(entity_id, state), ...]`` with unique ids, in a random order."""
    return st.lists(
        st.tuples(st.text(max_size=12), state if state is not None else states()),
        max_size=max_size,
        unique_by=lambda pair: pair[0],
    )


#: One sample of every type the safe codec must round-trip exactly (DESIGN §2).
SAFE_VALUES: dict[str, Any] = {
    "none": None,
    "true": True,
    "false": False,
    "int": -42,
    "int64-max": 2**63 - 1,
    "uint64-max": 2**64 - 1,
    "bigint": 10**100,
    "negative-bigint": -(10**40) - 7,
    "float": 0.1,
    "negative-zero": -0.0,
    "nan": math.nan,
    "inf": math.inf,
    "-inf": -math.inf,
    "str": "héllo \U0001f600 \x00 nul inside",
    "empty-str": "",
    "bytes": b"\x00\xff" * 3,
    "list": [1, "two", [3.0]],
    "tuple": (1, (2, 3), [4]),
    "empty-tuple": (),
    "dict": {"a": 1, "nested": {"b": [2]}},
    "int-keys": {1: "one", 2: "two"},
    "tuple-keys": {(1, 2): "pair"},
    "set": {1, "a", (2, 3)},
    "empty-set": set(),
    "frozenset": frozenset({1, frozenset({2})}),
    "naive-datetime": dt.datetime(2024, 3, 10, 12, 30, 15, 123456),
    "utc-datetime": dt.datetime(2024, 3, 10, 12, 30, tzinfo=dt.UTC),
    "offset-datetime": dt.datetime(
        2024, 3, 10, 12, 30, tzinfo=dt.timezone(dt.timedelta(hours=5, minutes=30))
    ),
    "date": dt.date(1999, 12, 31),
    "time": dt.time(23, 59, 59, 999999),
    "aware-time": dt.time(1, 2, tzinfo=dt.timezone(dt.timedelta(hours=-3))),
    "timedelta": dt.timedelta(days=-3, seconds=5, microseconds=7),
    "decimal-digits": Decimal("1.10"),
    "decimal-negative-zero": Decimal("-0.000"),
    "decimal-nan": Decimal("NaN"),
    "decimal-huge": Decimal("1E+400"),
    "uuid": uuid.UUID("12345678-1234-5678-1234-567812345678"),
    "nested": {"k": [({"a": {1, 2}}, frozenset({(1, dt.date(2020, 1, 1))}))]},
}


# ------------------------------------------------------------------ bad inputs

#: Values that are not a valid run id, with a name for test ids.
BAD_RUN_IDS: dict[str, Any] = {
    "int": 7,
    "none": None,
    "bytes": b"run",
    "empty": "",
    "513-chars": "x" * 513,
    "nul": "run\x00id",
    "lone-surrogate": "run\ud800",
}

#: Values that are not a valid timestamp (an int in 0 .. 2**63-1, bool excluded).
BAD_TIMESTAMPS: dict[str, Any] = {
    "bool": True,
    "float": 60_000.0,
    "str": "60000",
    "none": None,
    "negative": -1,
    "2**63": 2**63,
}

#: Values that are not a valid keep_n (an int >= 0, bool excluded).
BAD_KEEP_NS: dict[str, Any] = {"negative": -1, "bool": True, "float": 2.0, "none": None}

#: Values that are not a valid writer token.
BAD_WRITER_TOKENS: dict[str, Any] = {"negative": -1, "bool": True, "str": "1"}

#: Entity lists that are malformed (not what the codec refuses: see Unencodable).
BAD_ENTITIES: dict[str, Any] = {
    "not-a-list": None,
    "a-str": "ab",
    "a-dict": {"a": 1},
    "bare-value": [1],
    "bare-str": ["a"],
    "one-tuple": [("a",)],
    "three-tuple": [("a", 1, 2)],
    "int-id": [(1, "state")],
    "none-id": [(None, "state")],
    "bytes-id": [(b"a", "state")],
    "lone-surrogate-id": [("a\ud800", "state")],
    "duplicate-ids": [("a", 1), ("b", 2), ("a", 3)],
    "bad-after-good": [("a", 1), ("b", 2), "c"],
}


# ------------------------------------------------------------------ exact comparison


def exact_difference(expected: Any, actual: Any, path: str = "value") -> str | None:
    """Where ``actual`` differs from ``expected`` in value or type, or None when exact."""
    if type(expected) is not type(actual):
        return f"{path}: expected {type(expected).__name__}, got {type(actual).__name__}"
    if isinstance(expected, float):
        same = (math.isnan(expected) and math.isnan(actual)) or (
            expected == actual and math.copysign(1, expected) == math.copysign(1, actual)
        )
        return None if same else f"{path}: expected {expected!r}, got {actual!r}"
    if isinstance(expected, Decimal):
        same = expected.as_tuple() == actual.as_tuple()
        return None if same else f"{path}: expected {expected!r}, got {actual!r}"
    if isinstance(expected, dt.datetime | dt.time):
        same = (
            repr(expected) == repr(actual)
            and expected.utcoffset() == actual.utcoffset()
            and expected.fold == actual.fold
        )
        return None if same else f"{path}: expected {expected!r}, got {actual!r}"
    if isinstance(expected, list | tuple):
        if len(expected) != len(actual):
            return f"{path}: expected {len(expected)} items, got {len(actual)}"
        for i, (want, got) in enumerate(zip(expected, actual, strict=True)):
            found = exact_difference(want, got, f"{path}[{i}]")
            if found:
                return found
        return None
    if isinstance(expected, dict):
        if list(expected) != list(actual):
            return f"{path}: expected keys {list(expected)!r}, got {list(actual)!r}"
        for (key, want), (got_key, got) in zip(expected.items(), actual.items(), strict=True):
            found = exact_difference(key, got_key, f"{path} key {key!r}") or exact_difference(
                want, got, f"{path}[{key!r}]"
            )
            if found:
                return found
        return None
    if isinstance(expected, set | frozenset):
        # Elements are hashable leaves or tuples/frozensets of them: compare by canonical
        # repr, so {1} and {True} (equal in Python) still differ here.
        want_set = sorted(_canonical(item) for item in expected)
        got_set = sorted(_canonical(item) for item in actual)
        return None if want_set == got_set else f"{path}: expected {expected!r}, got {actual!r}"
    return None if expected == actual else f"{path}: expected {expected!r}, got {actual!r}"


def _canonical(value: Any) -> str:
    if isinstance(value, float) and math.isnan(value):
        return "float:nan"
    if isinstance(value, tuple):
        return "tuple:(" + ",".join(_canonical(item) for item in value) + ")"
    if isinstance(value, frozenset):
        return "frozenset:{" + ",".join(sorted(_canonical(item) for item in value)) + "}"
    if isinstance(value, Decimal):
        return f"Decimal:{value.as_tuple()!r}"
    if isinstance(value, dt.datetime | dt.time):
        return f"{type(value).__name__}:{value!r}:{value.utcoffset()}:{value.fold}"
    return f"{type(value).__name__}:{value!r}"
