"""W5, rich states: a stream job whose entities hold sets, tuples, aware datetimes and
``Decimal``s, checkpointing every hour of event time, run whole on each subject.

The job is the same for every subject: 150 entities (one per airport), a generated
event stream in timestamp order (each event updates one airport), and at every hour
boundary a savepoint of every airport's state, keeping the 3 newest. What differs is
how a savepoint is written:

* ``pickle-sqlite``: the peer a user writes by hand: one pickled list into a SQLite row
  and the rows past the 3 newest deleted, in one transaction (WAL, ``synchronous=FULL``);
* ``statestore-sqlite``: ``save_savepoint`` with every state (the default: each state
  is encoded to find which changed), then ``delete_old_savepoints``;
* ``statestore-sqlite-changes``: ``save_changes`` with the states the job updated since
  the last savepoint (the job knows: it trusts its own updates), then
  ``delete_old_savepoints``;
* ``statestore-engine``: the job on a ``StateStore`` (SQLite): each event calls the
  watermark ``store.ack_processed_time(ts)`` then ``update_state`` on its entity; every
  state is encoded at each savepoint (the default);
* ``statestore-engine-trust``: the same with ``trust_update_state=True``: only the
  entities updated since their last save are encoded and written.

Each round runs the whole job once per subject, in a rotating order; the report gives
the median job time, the share of it spent in savepoints, and the ratio to pickle's job
in the same round.
"""

from __future__ import annotations

import datetime as dt
import pickle
import random
import sqlite3
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

from .timing import Series, settle

__all__ = ["W5_SUBJECTS", "RichResult", "run_w5"]

HOUR = 3_600_000
KEEP = 3

#: Event = (timestamp, airport index, carrier, destination, delay in minutes).
Event = tuple[int, int, str, str, Decimal]
#: One checkpoint: (savepoint timestamp, every entity, the ids updated since the last one).
Checkpoint = Callable[[int, list[tuple[str, Any]], set[str]], None]


def _airport(index: int) -> str:
    return f"airport-{index:03d}"


def events(airports: int, hours: int, per_hour: int, seed: int = 5) -> list[Event]:
    """A generated stream, in timestamp order: ``per_hour`` events each hour."""
    rng = random.Random(seed)
    carriers = [f"C{i:02d}" for i in range(24)]
    stream: list[Event] = []
    for hour in range(hours):
        for k in range(per_hour):
            ts = hour * HOUR + (k * HOUR) // per_hour + 1
            delay = Decimal(rng.randrange(-300, 24000)) / 100
            stream.append((ts, rng.randrange(airports), rng.choice(carriers),
                           _airport(rng.randrange(airports)), delay))  # fmt: skip
    return stream


def _initial(index: int) -> dict[str, Any]:
    return {
        "code": _airport(index),
        "flights": 0,
        "delay_total": Decimal("0.00"),
        "carriers": set(),
        "last": (0, ""),
        "seen_at": dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
        "routes": {},
    }


def _apply(state: dict[str, Any], event: Event) -> None:
    """The job's work for one event: what every subject runs alike."""
    ts, _where, carrier, destination, delay = event
    state["flights"] += 1
    state["delay_total"] += delay
    state["carriers"].add(carrier)
    state["last"] = (ts, carrier)
    state["seen_at"] = dt.datetime(2026, 1, 1, tzinfo=dt.UTC) + dt.timedelta(milliseconds=ts)
    state["routes"][destination] = state["routes"].get(destination, 0) + 1


def run_job(stream: list[Event], airports: int, checkpoint: Checkpoint) -> float:
    """Process the stream, checkpointing at each hour; the seconds spent in checkpoints."""
    states = [_initial(i) for i in range(airports)]
    ids = [_airport(i) for i in range(airports)]
    updated: set[str] = set()
    next_savepoint = HOUR
    in_checkpoints = 0.0
    for event in stream:
        while event[0] >= next_savepoint:  # every input before the boundary is processed
            started = time.perf_counter()
            checkpoint(next_savepoint, list(zip(ids, states, strict=True)), updated)
            in_checkpoints += time.perf_counter() - started
            updated = set()
            next_savepoint += HOUR
        _apply(states[event[1]], event)
        updated.add(ids[event[1]])
    return in_checkpoints


def run_engine_job(stream: list[Event], airports: int, store: Any) -> float:
    """The same job on a ``StateStore``: each event acknowledges its time (the watermark,
    which persists each savepoint it completes), then updates its entity; the seconds
    spent in the watermark calls."""
    defs = [(_airport(i), _initial(i)) for i in range(airports)]
    entities = store.start(0, defs).entities
    states = [entity.state for entity in entities]
    in_checkpoints = 0.0
    for event in stream:
        started = time.perf_counter()
        store.ack_processed_time(event[0])
        in_checkpoints += time.perf_counter() - started
        _apply(states[event[1]], event)
        entities[event[1]].update_state(event[0], states[event[1]])
    return in_checkpoints


# ------------------------------------------------------------------ the subjects


class _PickleSQLite:
    def run(self, stream: list[Event], airports: int) -> float:
        return run_job(stream, airports, self.checkpoint)

    def __init__(self, directory: Path) -> None:
        self.conn = sqlite3.connect(directory / "pickle.db", isolation_level=None)
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=FULL")
        self.conn.execute("CREATE TABLE savepoints (ts INTEGER PRIMARY KEY, data BLOB)")

    def checkpoint(self, ts: int, entities: list[tuple[str, Any]], updated: set[str]) -> None:
        data = pickle.dumps(entities, protocol=pickle.HIGHEST_PROTOCOL)
        with self.conn:  # one durable transaction, as ``with conn:`` gives its users
            self.conn.execute("BEGIN")
            self.conn.execute("INSERT OR REPLACE INTO savepoints VALUES (?, ?)", (ts, data))
            self.conn.execute("DELETE FROM savepoints WHERE ts <= ?", (ts - KEEP * HOUR,))

    def close(self) -> None:
        self.conn.close()


class _Statestore:
    def run(self, stream: list[Event], airports: int) -> float:
        return run_job(stream, airports, self.checkpoint)

    def __init__(self, directory: Path, *, changes: bool) -> None:
        import statestore

        self.storage = statestore.open_storage(f"sqlite:///{directory / 'statestore.db'}")
        self.storage.init_storage("w5")
        self.changes = changes
        self.saved = False

    def checkpoint(self, ts: int, entities: list[tuple[str, Any]], updated: set[str]) -> None:
        if self.changes and self.saved:
            changed = [(entity_id, s) for entity_id, s in entities if entity_id in updated]
            self.storage.save_changes("w5", ts, changed)
        else:
            self.storage.save_savepoint("w5", ts, entities)
            self.saved = True
        self.storage.delete_old_savepoints("w5", KEEP)

    def close(self) -> None:
        self.storage.close()


class _Engine:
    def __init__(self, directory: Path, *, trust: bool) -> None:
        import statestore

        self.storage = statestore.open_storage(f"sqlite:///{directory / 'engine.db'}")
        self.store = statestore.StateStore(
            "w5", HOUR, storage=self.storage, keep_savepoints=KEEP, trust_update_state=trust
        )

    def run(self, stream: list[Event], airports: int) -> float:
        return run_engine_job(stream, airports, self.store)

    def close(self) -> None:
        self.storage.close()


_Subject = _PickleSQLite | _Statestore | _Engine

#: W5's subjects by name, each made in a fresh directory.
W5_SUBJECTS: dict[str, Callable[[Path], _Subject]] = {
    "pickle-sqlite": _PickleSQLite,
    "statestore-sqlite": lambda directory: _Statestore(directory, changes=False),
    "statestore-sqlite-changes": lambda directory: _Statestore(directory, changes=True),
    "statestore-engine": lambda directory: _Engine(directory, trust=False),
    "statestore-engine-trust": lambda directory: _Engine(directory, trust=True),
}


@dataclass
class RichResult:
    """W5: per subject, the job's seconds per round and the seconds in its savepoints."""

    params: dict[str, Any]
    job: Series
    savepoints: Series

    def share(self, name: str) -> float:
        return statistics.median(
            inside / total
            for inside, total in zip(self.savepoints.times[name], self.job.times[name], strict=True)
        )


def run_w5(
    root: Path, *, airports: int, hours: int, per_hour: int, rounds: int, log: Callable[[str], None]
) -> RichResult:
    stream = events(airports, hours, per_hour)
    log(f"W5: {airports} entities, {len(stream):,} events, {hours:,} savepoints, {rounds} rounds")
    names = list(W5_SUBJECTS)
    job, inside = Series({n: [] for n in names}), Series({n: [] for n in names})
    for round_number in range(rounds):
        shift = round_number % len(names)
        for name in names[shift:] + names[:shift]:
            directory = root / "w5" / f"{name}-{round_number}"
            directory.mkdir(parents=True)
            subject = W5_SUBJECTS[name](directory)
            try:
                settle()
                started = time.perf_counter()
                in_checkpoints = subject.run(stream, airports)
                job.times[name].append(time.perf_counter() - started)
                inside.times[name].append(in_checkpoints)
            finally:
                subject.close()
    params = {"entities": airports, "events": len(stream), "savepoints": hours, "rounds": rounds}
    return RichResult(params, job, inside)


def rounds_of(result: RichResult) -> Iterator[str]:
    """The subjects measured, in the report's order."""
    yield from (name for name in W5_SUBJECTS if result.job.times.get(name))
