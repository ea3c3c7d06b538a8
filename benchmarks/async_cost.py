"""What the coroutine twins cost: ``python -m benchmarks.async_cost [--quick] [--url URL]``.

0. **Fixed cost of a twin**: ``is_initialized`` on a memory store (no I/O), blocking
   and awaited, many times: what the thread hop adds to any call.
1. **Save cost**: the same savepoints saved with ``save_savepoint`` (blocking, on the
   calling thread) and with ``asave_savepoint`` awaited on an event loop (in the
   storage's worker threads), interleaved round by round as :mod:`benchmarks.timing`
   does; the ratio is the median of the per-round ratios. Target: async <= 1.1x sync.
2. **Loop stall**: a ticker task on the loop wakes every millisecond and records the
   longest gap between two wakes, first with nothing else running, then while a large
   ``asave_savepoint`` runs, then while the same save runs blocking on the loop (what
   calling the blocking API from a coroutine does).

The store is a fresh SQLite file in a temporary directory unless ``--url`` names one
(its runs ``async-cost-*`` are deleted after). Figures are printed as a Markdown table;
docs/async.md quotes a run.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from statestore import Storage, open_storage

from .data import Entities, full_step
from .timing import Series, release, settle

__all__ = ["main"]

#: (entities per savepoint, rounds) for the save cost, and the entities of the large save.
STANDARD = ([(100, 100), (10_000, 30), (100_000, 10)], 500_000)
QUICK = ([(100, 5), (2_000, 3)], 20_000)
#: Calls of ``is_initialized`` on a memory store timed for the fixed cost of a twin.
CALLS = 2_000
TICK = 0.001  # the ticker's sleep, seconds
TARGET = 1.1


@dataclass(frozen=True)
class Stall:
    """The longest gap between two ticks, beyond the tick itself, and the save's time."""

    label: str
    worst: float
    save: float


def _save_cost(storage: Storage, runner: asyncio.Runner, count: int, rounds: int) -> Series:
    """Seconds per round of the blocking and the awaited save of one savepoint."""
    run_id = f"async-cost-{count}"
    storage.init_storage(run_id)
    steps = [full_step(count, step) for step in range(rounds)]

    async def awaited(timestamp: int, entities: Entities) -> float:
        start = time.perf_counter()
        await storage.asave_savepoint(run_id, timestamp, entities)
        return time.perf_counter() - start

    series = Series({"sync": [], "async": []})
    for step, entities in enumerate(steps):
        for name in ["sync", "async"] if step % 2 == 0 else ["async", "sync"]:
            timestamp = step * 2 + (name == "async")  # every save a new savepoint
            settle()
            # Retention goes the way of the save: an SQLite connection (one per thread)
            # that did not write last rereads what changed, and each side pays that once
            # a round, after the other side's writes.
            if name == "sync":
                start = time.perf_counter()
                storage.save_savepoint(run_id, timestamp, entities)
                series.times[name].append(time.perf_counter() - start)
                storage.delete_old_savepoints(run_id, 2)
            else:
                series.times[name].append(runner.run(awaited(timestamp, entities)))
                runner.run(storage.adelete_old_savepoints(run_id, 2))
    storage.delete_run(run_id)
    release()
    return series


def _fixed_cost(runner: asyncio.Runner) -> tuple[float, float]:
    """Seconds per call of ``is_initialized`` on a memory store: blocking, awaited."""
    with open_storage("memory://") as storage:
        storage.init_storage("run")

        async def awaited() -> float:
            start = time.perf_counter()
            for _ in range(CALLS):
                await storage.ais_initialized("run")
            return (time.perf_counter() - start) / CALLS

        runner.run(awaited())  # the worker threads started
        start = time.perf_counter()
        for _ in range(CALLS):
            storage.is_initialized("run")
        blocking = (time.perf_counter() - start) / CALLS
        return blocking, runner.run(awaited())


async def _worst_stall(label: str, work: Callable[[], Awaitable[None]]) -> Stall:
    """Run ``work`` beside a ticker task; the ticker's longest gap beyond its tick."""
    gaps: list[float] = []
    done = asyncio.Event()

    async def ticker() -> None:
        last = time.perf_counter()
        while not done.is_set():
            await asyncio.sleep(TICK)
            now = time.perf_counter()
            gaps.append(now - last - TICK)
            last = now

    ticking = asyncio.create_task(ticker())
    await asyncio.sleep(0.05)  # the ticker is running
    start = time.perf_counter()
    await work()
    elapsed = time.perf_counter() - start
    done.set()
    await ticking
    return Stall(label, max(gaps), elapsed)


async def _stalls(storage: Storage, count: int) -> list[Stall]:
    run_id = "async-cost-stall"
    await storage.ainit_storage(run_id)
    entities = full_step(count, 0)
    settle()

    async def idle() -> None:
        await asyncio.sleep(0.5)

    async def awaited() -> None:
        await storage.asave_savepoint(run_id, 1, entities)

    async def blocking() -> None:
        storage.save_savepoint(run_id, 2, entities)

    stalls = [
        await _worst_stall("nothing else running", idle),
        await _worst_stall(f"asave_savepoint, {count:,} entities", awaited),
        await _worst_stall(f"save_savepoint on the loop, {count:,} entities", blocking),
    ]
    await storage.adelete_run(run_id)
    release()
    return stalls


def _report(
    fixed: tuple[float, float], costs: list[tuple[int, Series]], stalls: list[Stall], url: str
) -> str:
    blocking, awaited = fixed
    lines = [
        f"Store: {url.split('://', 1)[0]}; Python {sys.version.split()[0]}; "
        f"sys.getswitchinterval() = {sys.getswitchinterval() * 1000:g} ms",
        "",
        f"A call's fixed cost (is_initialized on memory://, {CALLS:,} calls): blocking "
        f"{blocking * 1e6:.1f} us, awaited twin {awaited * 1e6:.1f} us",
        "",
        "| entities | rounds | sync save (median ms) | async save (median ms) "
        f"| async / sync (median of rounds) | target <= {TARGET} |",
        "|---:|---:|---:|---:|---:|---|",
    ]
    for count, series in costs:
        ratio = series.ratio("async", "sync")
        lines.append(
            f"| {count:,} | {len(series.times['sync'])} | {series.median('sync') * 1000:.2f} "
            f"| {series.median('async') * 1000:.2f} | {ratio:.3f} "
            f"| {'PASS' if ratio <= TARGET else 'MISS'} |"
        )
    lines += ["", "| event loop | worst stall (ms) | save took (ms) |", "|---|---:|---:|"]
    lines += [
        f"| {stall.label} | {stall.worst * 1000:.1f} | "
        f"{'' if stall.label.startswith('nothing') else f'{stall.save * 1000:.0f}'} |"
        for stall in stalls
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.async_cost", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke run")
    parser.add_argument("--url", help="the store to use (default: a fresh SQLite file)")
    args = parser.parse_args(argv)
    sizes, large = QUICK if args.quick else STANDARD
    with tempfile.TemporaryDirectory() as directory:
        url = args.url or f"sqlite:///{Path(directory) / 'async-cost.db'}"
        with open_storage(url) as storage, asyncio.Runner() as runner:
            fixed = _fixed_cost(runner)
            costs = []
            for count, rounds in sizes:
                print(f"save cost: {count:,} entities, {rounds} rounds", file=sys.stderr)
                costs.append((count, _save_cost(storage, runner, count, rounds)))
            print(f"loop stall: {large:,} entities", file=sys.stderr)
            stalls = runner.run(_stalls(storage, large))
    print(_report(fixed, costs, stalls, url))
    # The worst per-round ratio too, so a reader sees the spread behind the median.
    for count, series in costs:
        ratios = [a / s for a, s in zip(series.times["async"], series.times["sync"], strict=True)]
        print(f"{count:,} entities: per-round async/sync from {min(ratios):.3f} "
              f"to {max(ratios):.3f}, mean {statistics.mean(ratios):.3f}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
