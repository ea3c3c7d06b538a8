"""The savepoint grid: the examples of DESIGN §6, properties against brute force, bad input."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from statestore.errors import InvalidArgumentError
from statestore.schedule import next_savepoint, previous_savepoint, unreached_savepoints

schedules = st.integers(min_value=1, max_value=10**6)
timestamps = st.integers(min_value=0, max_value=2**63 - 1)


def test_design_examples() -> None:
    # A run starting at 10_000 has savepoints 60_000, 120_000, ...; one at 60_000 first 120_000.
    assert next_savepoint(60_000, 10_000) == 60_000
    assert next_savepoint(60_000, 60_000) == 120_000
    assert list(unreached_savepoints(60_000, 10_000, 130_000)) == [60_000, 120_000]
    assert list(unreached_savepoints(60_000, 60_000, 180_000)) == [120_000, 180_000]


def test_boundaries() -> None:
    assert next_savepoint(60_000, 0) == 60_000
    assert next_savepoint(60_000, 59_999) == 60_000
    assert previous_savepoint(60_000, 59_999) == 0
    assert previous_savepoint(60_000, 60_000) == 60_000
    assert previous_savepoint(60_000, 119_999) == 60_000
    # (from, to]: from excluded, to included.
    assert list(unreached_savepoints(60_000, 60_000, 60_000)) == []
    assert list(unreached_savepoints(60_000, 59_999, 60_000)) == [60_000]
    assert list(unreached_savepoints(60_000, 120_000, 60_000)) == []


def test_a_long_jump_is_lazy() -> None:
    jump = unreached_savepoints(1, 0, 10**15)
    assert len(jump) == 10**15
    assert jump[0] == 1
    assert jump[-1] == 10**15
    assert list(jump[-3:]) == [10**15 - 2, 10**15 - 1, 10**15]


def test_no_schedule_means_no_savepoints() -> None:
    assert next_savepoint(None, 10_000) is None
    assert previous_savepoint(None, 10_000) is None
    assert list(unreached_savepoints(None, 0, 10**12)) == []


@given(schedules, timestamps)
def test_next_is_the_smallest_multiple_strictly_after(schedule: int, ts: int) -> None:
    found = next_savepoint(schedule, ts)
    assert found % schedule == 0
    assert found > ts
    assert found - schedule <= ts


@given(schedules, timestamps)
def test_previous_is_the_largest_multiple_at_or_before(schedule: int, ts: int) -> None:
    found = previous_savepoint(schedule, ts)
    assert found % schedule == 0
    assert found <= ts < found + schedule
    assert next_savepoint(schedule, ts) == found + schedule


@given(
    st.integers(min_value=1, max_value=50),
    st.integers(min_value=0, max_value=500),
    st.integers(min_value=0, max_value=500),
)
def test_unreached_matches_brute_force(schedule: int, start: int, end: int) -> None:
    expected = [t for t in range(start + 1, end + 1) if t % schedule == 0]
    assert list(unreached_savepoints(schedule, start, end)) == expected


@pytest.mark.parametrize("schedule", [0, -60_000, 1.5, "60000", True])
def test_bad_schedule_is_refused(schedule: Any) -> None:
    with pytest.raises(InvalidArgumentError, match="schedule"):
        next_savepoint(schedule, 0)
    with pytest.raises(InvalidArgumentError, match="schedule"):
        previous_savepoint(schedule, 0)
    with pytest.raises(InvalidArgumentError, match="schedule"):
        unreached_savepoints(schedule, 0, 1)


@pytest.mark.parametrize("ts", [1.0, "0", None, False])
def test_bad_timestamp_is_refused(ts: Any) -> None:
    with pytest.raises(InvalidArgumentError, match="timestamp"):
        next_savepoint(60_000, ts)
    with pytest.raises(InvalidArgumentError, match="timestamp"):
        previous_savepoint(60_000, ts)
    with pytest.raises(InvalidArgumentError, match="from_ts"):
        unreached_savepoints(60_000, ts, 0)
    with pytest.raises(InvalidArgumentError, match="to_ts"):
        unreached_savepoints(60_000, 0, ts)
