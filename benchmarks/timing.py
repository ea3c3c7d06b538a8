"""Side-by-side measurement: interleaved rounds, medians, per-round ratios, peak memory.

Absolute times on a shared two-core machine drift by tens of percent within a minute,
so no subject is measured in a block of its own. Each round runs the same operation on
the same data for every subject, one after the other, in an order that rotates from
round to round; a ratio between two subjects is the median of their per-round ratios,
so drift that spans a round cancels out.
"""

from __future__ import annotations

import gc
import statistics
import time
import tracemalloc
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from .subjects import Subject

__all__ = ["MemoryUse", "Series", "clock", "measure", "release", "settle", "traced"]

T = TypeVar("T")


@dataclass
class Series:
    """Seconds per round for each subject, rounds aligned across subjects."""

    times: dict[str, list[float]] = field(default_factory=dict)

    def median(self, name: str) -> float:
        return statistics.median(self.times[name])

    def ratio(self, name: str, reference: str) -> float:
        """Median over rounds of ``name``'s time divided by ``reference``'s in that round."""
        pairs = zip(self.times[name], self.times[reference], strict=True)
        return statistics.median(mine / theirs for mine, theirs in pairs)

    def fastest(self, names: Iterable[str]) -> str | None:
        """The name among ``names`` with the smallest median, if any was measured."""
        measured = [name for name in names if self.times.get(name)]
        return min(measured, key=self.median, default=None)

    def as_json(self) -> dict[str, list[float]]:
        return {name: [round(t, 6) for t in times] for name, times in self.times.items()}


def settle() -> None:
    """Collect garbage, then exempt every live object from later collections.

    Each timed call starts from a clean heap, so no subject pays for another's garbage,
    and freezing keeps the harness's own data (millions of entity states, built once for
    every subject) out of the collections a timed call triggers. The collector stays on
    during the call, as users run: what a subject allocates is collected as usual, and
    a subject that pauses the collector (statestore, the floor) pays for that choice
    itself. :func:`release` undoes the freeze.
    """
    gc.collect()
    gc.freeze()


def release() -> None:
    """Make frozen objects collectable again (at the end of a workload)."""
    gc.unfreeze()
    gc.collect()


def clock(action: Callable[[], Any]) -> float:
    """Seconds ``action()`` takes, from a settled heap (see :func:`settle`)."""
    settle()
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


def measure(
    subjects: Mapping[str, Subject],
    inputs: Iterable[T],
    action: Callable[[Subject, T], Any],
    check: Callable[[str, Any], None] | None = None,
) -> Series:
    """Time ``action(subject, item)`` for every item of ``inputs`` on every subject.

    The heap is settled before each timed call (see :func:`settle`); ``check`` looks at
    each result after the clock has stopped.
    """
    names = list(subjects)
    series = Series({name: [] for name in names})
    for round_number, item in enumerate(inputs):
        shift = round_number % len(names) if names else 0
        for name in names[shift:] + names[:shift]:
            settle()
            start = time.perf_counter()
            result = action(subjects[name], item)
            series.times[name].append(time.perf_counter() - start)
            if check is not None:
                check(name, result)
            del result
    return series


@dataclass(frozen=True)
class MemoryUse:
    """Python-heap bytes at the peak of an operation, the size of its result, and what it
    left allocated when it returned (its result and whatever the subject keeps).

    All are counted from the moment the operation started; the result's size is what
    deleting it gave back.
    """

    peak: int
    result: int
    held: int = 0

    @property
    def ratio(self) -> float:
        return self.peak / self.result if self.result > 0 else float("inf")

    @property
    def held_ratio(self) -> float:
        return self.held / self.result if self.result > 0 else float("inf")


def traced(action: Callable[[], Any], check: Callable[[Any], None] | None = None) -> MemoryUse:
    """Run ``action`` under tracemalloc: its peak allocation and the size of its result.

    tracemalloc sees every allocation through Python's allocators (the returned objects,
    bytes buffers, lists) but not a C library's own ``malloc`` (SQLite's page cache,
    libpq's buffers). It slows allocation down, so times are never taken here.
    """
    settle()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        result = action()
        after, peak = tracemalloc.get_traced_memory()
        if check is not None:
            check(result)
        del result
        settle()
        freed = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    return MemoryUse(peak=peak - before, result=after - freed, held=after - before)
