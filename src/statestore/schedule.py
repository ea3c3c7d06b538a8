"""The savepoint grid: where savepoints fall in event time.

Savepoints sit on an absolute grid, at the multiples of ``schedule`` (milliseconds), not
at offsets from the start of a run. With a schedule of 60_000, a run starting at 10_000
has savepoints at 60_000, 120_000, ...; one starting at 60_000 has its first at 120_000.
Every process of a run therefore agrees on the grid without talking to the others.

A schedule of ``None`` means no savepoints: :func:`next_savepoint` and
:func:`previous_savepoint` return ``None`` and :func:`unreached_savepoints` is empty.

>>> next_savepoint(60_000, 10_000), next_savepoint(60_000, 60_000)
(60000, 120000)
>>> previous_savepoint(60_000, 119_999)
60000
>>> list(unreached_savepoints(60_000, 10_000, 180_000))
[60000, 120000, 180000]
"""

from __future__ import annotations

from typing import Any, overload

from . import errors

__all__ = ["next_savepoint", "previous_savepoint", "unreached_savepoints"]


def _check_schedule(schedule: Any) -> None:
    # bool is an int subclass: refuse it, as the storage contract does for timestamps.
    if schedule is not None and (type(schedule) is not int or schedule <= 0):
        raise errors.InvalidArgumentError(
            f"schedule must be an int > 0 (milliseconds) or None, not {schedule!r}"
        )


def _check_timestamp(timestamp: Any, name: str = "timestamp") -> None:
    if type(timestamp) is not int:
        raise errors.InvalidArgumentError(f"{name} must be an int (epoch ms), not {timestamp!r}")


@overload
def next_savepoint(schedule: int, timestamp: int) -> int: ...
@overload
def next_savepoint(schedule: None, timestamp: int) -> None: ...
@overload
def next_savepoint(schedule: int | None, timestamp: int) -> int | None: ...
def next_savepoint(schedule: int | None, timestamp: int) -> int | None:
    """The smallest multiple of ``schedule`` strictly greater than ``timestamp``."""
    _check_schedule(schedule)
    _check_timestamp(timestamp)
    if schedule is None:
        return None
    return (timestamp // schedule + 1) * schedule


@overload
def previous_savepoint(schedule: int, timestamp: int) -> int: ...
@overload
def previous_savepoint(schedule: None, timestamp: int) -> None: ...
@overload
def previous_savepoint(schedule: int | None, timestamp: int) -> int | None: ...
def previous_savepoint(schedule: int | None, timestamp: int) -> int | None:
    """The largest multiple of ``schedule`` less than or equal to ``timestamp``."""
    _check_schedule(schedule)
    _check_timestamp(timestamp)
    if schedule is None:
        return None
    return timestamp // schedule * schedule


def unreached_savepoints(schedule: int | None, from_ts: int, to_ts: int) -> range:
    """The multiples of ``schedule`` in ``(from_ts, to_ts]``, ascending.

    A ``range``, so a jump over a million savepoints costs nothing until iterated.
    """
    _check_schedule(schedule)
    _check_timestamp(from_ts, "from_ts")
    _check_timestamp(to_ts, "to_ts")
    if schedule is None:
        return range(0)
    return range((from_ts // schedule + 1) * schedule, to_ts + 1, schedule)
