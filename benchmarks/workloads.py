"""The workloads, each run on every subject side by side (see :mod:`benchmarks.timing`).

* **W1 full savepoints**: 10,000 entities, 20 savepoints in which every state changed,
  then loading the latest.
* **W2 large**: full savepoints of 10,000, 100,000 and 1,000,000 entities, then
  loading them: time against entity count, and the Python-heap peak while loading
  (traced up to 100,000 entities: tracemalloc is too slow beyond).
* **W3 sparse change**: 100,000 entities; full savepoints, then savepoints in which 1%
  of the states changed.
* **W4 many runs**: 200 runs saving concurrently from several processes (wall time).
* **Engine overhead**: ``StateStore`` with 10,000 acknowledging entities against the
  raw ``save_savepoint`` (plus the same retention) of the same states.
* **W5 rich states**: a whole stream job of 150 entities holding sets, tuples, aware
  datetimes and ``Decimal``s, a savepoint every hour of event time (see
  :mod:`benchmarks.rich`).

Every workload starts with an untimed warm-up save, so no subject pays for creating
its tables or files, opening connections or importing modules inside the clock.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import multiprocessing.synchronize
import queue
import secrets
import shutil
import time
import traceback
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import rich
from .data import Entities, encoded_size, full_step, sparse_step
from .rich import RichResult
from .subjects import (
    CHANGE_SET_SUBJECTS,
    Place,
    StatestoreS3,
    StatestoreSubject,
    Subject,
    make_subject,
)
from .timing import MemoryUse, Series, clock, measure, release, traced

__all__ = [
    "QUICK",
    "STANDARD",
    "Bench",
    "EngineResult",
    "ScalingPoint",
    "Sizes",
    "Timed",
    "run_engine",
    "run_w1",
    "run_w2",
    "run_w3",
    "run_w4",
    "run_w5",
]

#: The savepoint grid of every workload: one savepoint a minute of event time.
INTERVAL = 60_000


@dataclass(frozen=True)
class Sizes:
    """How big each workload is: the issue's numbers, or a seconds-long quick run."""

    w1_entities: int = 10_000
    w1_savepoints: int = 20
    w1_loads: int = 9
    w2_counts: tuple[int, ...] = (10_000, 100_000, 1_000_000)
    w2_rounds: int = 3  # saves and loads per count (1 for counts above w2_many)
    w2_many: int = 100_000
    # tracemalloc slows allocation several-fold: memory is traced up to this count only.
    w2_traced: int = 100_000
    w3_entities: int = 100_000
    w3_fraction: float = 0.01
    w3_full: int = 3
    w3_sparse: int = 10
    w3_loads: int = 3
    w4_runs: int = 200
    w4_processes: int = 4
    w4_savepoints: int = 5
    w4_entities: int = 100
    w4_rounds: int = 3
    engine_entities: int = 10_000
    engine_savepoints: int = 20
    engine_keep: int = 3
    w5_entities: int = 150
    w5_savepoints: int = 2_000
    w5_events_per_savepoint: int = 20
    w5_rounds: int = 3


STANDARD = Sizes()
QUICK = Sizes(
    w1_entities=500,
    w1_savepoints=4,
    w1_loads=3,
    w2_counts=(500, 1_000, 4_000),
    w2_rounds=2,
    w2_many=4_000,
    w2_traced=4_000,
    w3_entities=2_000,
    w3_full=2,
    w3_sparse=3,
    w3_loads=2,
    w4_runs=8,
    w4_processes=2,
    w4_savepoints=2,
    w4_entities=20,
    w4_rounds=1,
    engine_entities=500,
    engine_savepoints=4,
    w5_savepoints=40,
    w5_rounds=1,
)


@dataclass
class Bench:
    """What every workload needs: the subjects to run, where, and how big."""

    subjects: list[str]
    root: Path
    sizes: Sizes
    postgres_url: str | None = None
    log: Callable[[str], None] = print
    s3_url: str | None = None
    _schemas: list[str] = field(default_factory=list)

    def places(self, workload: str, names: Sequence[str]) -> dict[str, Place]:
        """A fresh place for each named subject: its own directory and schema."""
        places: dict[str, Place] = {}
        for name in names:
            tag = f"{workload}_{name.replace('-', '_')}_{secrets.token_hex(3)}"
            places[name] = Place(self.root / workload / name, tag, self.postgres_url, self.s3_url)
            self._schemas.append(places[name].schema)
        return places

    @contextlib.contextmanager
    def open(
        self, workload: str, names: Sequence[str], places: Mapping[str, Place] | None = None
    ) -> Iterator[dict[str, Subject]]:
        """Each named subject in its place (fresh by default); closed and deleted afterwards."""
        if places is None:
            places = self.places(workload, names)
        opened: dict[str, Subject] = {}
        try:
            for name in names:
                opened[name] = make_subject(name, places[name])
            yield opened
        finally:
            for subject in opened.values():
                with contextlib.suppress(Exception):
                    subject.close()
            shutil.rmtree(self.root / workload, ignore_errors=True)
            self.drop_schemas()
            release()

    def drop_schemas(self) -> None:
        """Drop the PostgreSQL schemas the subjects made, freeing the server's disk."""
        if self.postgres_url is None or not self._schemas:
            return
        import psycopg
        from psycopg import sql

        with psycopg.connect(self.postgres_url, autocommit=True) as conn:
            for schema in self._schemas:
                conn.execute(
                    sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema))
                )
        self._schemas.clear()


@dataclass
class Timed:
    """One workload's series (``"save"``, ``"load"``, ...) and the parameters it ran with.

    ``written``: the bytes each subject's last timed save wrote (None where unknown).
    """

    params: dict[str, Any]
    series: dict[str, Series]
    written: dict[str, int | None] = field(default_factory=dict)


def _written(subjects: Mapping[str, Subject], run_id: str) -> dict[str, int | None]:
    return {name: subject.last_save_bytes(run_id) for name, subject in subjects.items()}


@dataclass
class ScalingPoint:
    """W2 at one entity count."""

    count: int
    encoded_bytes: int
    save: Series
    load: Series
    memory: dict[str, MemoryUse]


@dataclass
class EngineResult:
    """Engine overhead on one backend: ``"raw"`` and ``"engine"`` seconds per savepoint."""

    params: dict[str, Any]
    by_backend: dict[str, Series]


_SaveItem = tuple[int, Entities, Collection[str] | None]


def _saver(run_id: str) -> Callable[[Subject, _SaveItem], None]:
    def save(subject: Subject, item: _SaveItem) -> None:
        timestamp, entities, changed = item
        subject.save(run_id, timestamp, entities, changed)

    return save


def _loader(run_id: str) -> Callable[[Subject, int], Sequence[Any]]:
    def load(subject: Subject, _round: int) -> Sequence[Any]:
        return subject.load(run_id)

    return load


def _expect(count: int) -> Callable[[str, Any], None]:
    def check(name: str, loaded: Any) -> None:
        if len(loaded) != count:
            raise AssertionError(f"{name} loaded {len(loaded)} entities, expected {count}")

    return check


def _full_rounds(count: int, steps: range) -> Iterator[tuple[int, Entities, None]]:
    for step in steps:
        yield step * INTERVAL, full_step(count, step), None


def run_w5(bench: Bench) -> RichResult:
    """W5: the rich-state job on pickle-in-SQLite and statestore's SQLite modes."""
    sizes = bench.sizes
    return rich.run_w5(
        bench.root,
        airports=sizes.w5_entities,
        hours=sizes.w5_savepoints,
        per_hour=sizes.w5_events_per_savepoint,
        rounds=sizes.w5_rounds,
        log=bench.log,
    )


def run_w1(bench: Bench) -> Timed:
    """W1: full savepoints of small states, then loading the latest."""
    n, rounds = bench.sizes.w1_entities, bench.sizes.w1_savepoints
    bench.log(f"W1: {n:,} entities, {rounds} full savepoints, {bench.sizes.w1_loads} loads")
    with bench.open("w1", bench.subjects) as subjects:
        for subject in subjects.values():
            subject.init_run("w1")
        measure(subjects, _full_rounds(n, range(1)), _saver("w1"))  # warm-up
        save = measure(subjects, _full_rounds(n, range(1, rounds + 1)), _saver("w1"))
        written = _written(subjects, "w1")
        measure(subjects, range(1), _loader("w1"), _expect(n))  # warm-up
        load = measure(subjects, range(bench.sizes.w1_loads), _loader("w1"), _expect(n))
        requests = _requests_per_save(subjects, rounds)
    params: dict[str, Any] = {"entities": n, "savepoints": rounds, "loads": bench.sizes.w1_loads}
    params["bytes"] = encoded_size(full_step(n, 1))
    if requests:
        params["requests_per_save"] = requests
    return Timed(params, {"save": save, "load": load}, written)


def _requests_per_save(subjects: Mapping[str, Subject], last: int) -> dict[str, float]:
    """Requests per save of the subjects that count them (S3): the mean of the last saves."""
    return {
        name: subject.requests_per_save(last)
        for name, subject in subjects.items()
        if isinstance(subject, StatestoreS3)
    }


def run_w2(bench: Bench) -> list[ScalingPoint]:
    """W2: one full savepoint of many entities, loaded back; time and memory per count."""
    points: list[ScalingPoint] = []
    for count in bench.sizes.w2_counts:
        rounds = bench.sizes.w2_rounds if count <= bench.sizes.w2_many else 1
        bench.log(f"W2: {count:,} entities, {rounds} round(s)")
        run_id = f"w2-{count}"
        with bench.open(f"w2-{count}", bench.subjects) as subjects:
            for subject in subjects.values():
                subject.init_run(run_id)
                subject.init_run(f"{run_id}-warm")
            warm = min(count, 1_000)  # a small warm-up: tables, files, connections
            measure(subjects, _full_rounds(warm, range(1)), _saver(f"{run_id}-warm"))
            save = measure(subjects, _full_rounds(count, range(1, rounds + 1)), _saver(run_id))
            load = measure(subjects, range(rounds), _loader(run_id), _expect(count))
            memory: dict[str, MemoryUse] = {}
            if count <= bench.sizes.w2_traced:
                memory = {
                    name: _traced_load(name, subject, run_id, count)
                    for name, subject in subjects.items()
                }
        size = encoded_size(full_step(count, 1))
        points.append(ScalingPoint(count, size, save, load, memory))
    return points


def _traced_load(name: str, subject: Subject, run_id: str, count: int) -> MemoryUse:
    check = _expect(count)
    return traced(lambda: subject.load(run_id), lambda loaded: check(name, loaded))


def run_w3(bench: Bench) -> Timed:
    """W3: many entities of which a small fraction changes between savepoints."""
    sizes = bench.sizes
    n = sizes.w3_entities
    bench.log(
        f"W3: {n:,} entities, {sizes.w3_full} full then {sizes.w3_sparse} savepoints "
        f"with {sizes.w3_fraction:.0%} changed"
    )
    names = bench.subjects + [
        CHANGE_SET_SUBJECTS[name] for name in bench.subjects if name in CHANGE_SET_SUBJECTS
    ]
    changed_bytes = 0
    with bench.open("w3", names) as subjects:
        for subject in subjects.values():
            subject.init_run("w3")
        measure(subjects, _full_rounds(n, range(1)), _saver("w3"))  # warm-up
        full = measure(subjects, _full_rounds(n, range(1, sizes.w3_full + 1)), _saver("w3"))
        previous = full_step(n, sizes.w3_full)

        def sparse_rounds() -> Iterator[tuple[int, Entities, dict[str, Any]]]:
            nonlocal previous, changed_bytes
            first = sizes.w3_full + 1
            for step in range(first, first + sizes.w3_sparse):
                previous, changed = sparse_step(previous, step, sizes.w3_fraction)
                wanted = set(changed)
                # The changed states by id, built before the clock starts: what a caller
                # that tracks its updates holds (its keys are the changed ids for the
                # subjects that only take ids).
                states = {e[0]: e[1] for e in previous if e[0] in wanted}
                changed_bytes = encoded_size(list(states.items()))
                yield step * INTERVAL, previous, states

        sparse = measure(subjects, sparse_rounds(), _saver("w3"))
        written = _written(subjects, "w3")
        requests = _requests_per_save(subjects, sizes.w3_sparse)
        load = measure(subjects, range(sizes.w3_loads), _loader("w3"), _expect(n))
    params: dict[str, Any] = {"entities": n, "fraction": sizes.w3_fraction}
    params |= {
        "full": sizes.w3_full,
        "sparse": sizes.w3_sparse,
        "bytes": encoded_size(full_step(n, 1)),
    }
    params["changed_bytes"] = changed_bytes  # the last sparse save's changed states, encoded
    if requests:
        params["requests_per_save"] = requests
    return Timed(params, {"full": full, "sparse": sparse, "load": load}, written)


# ------------------------------------------------------------------------ W4


@dataclass(frozen=True)
class _Task:
    subject: str
    place: Place
    run_ids: list[str]
    savepoints: int
    entities: int


def _w4_worker(
    tasks: multiprocessing.Queue[_Task | None],
    done: multiprocessing.Queue[str | None],
    start: multiprocessing.synchronize.Barrier,
) -> None:
    """One W4 process: for each task, open the subject, wait for the start, save, report."""
    while (task := tasks.get()) is not None:
        subject: Subject | None = None
        try:
            subject = make_subject(task.subject, task.place)
            steps = [full_step(task.entities, step) for step in range(1, task.savepoints + 1)]
            for run_id in task.run_ids:
                subject.init_run(run_id)
        except Exception:
            start.abort()  # the parent is waiting at the barrier: release it
            done.put(traceback.format_exc())
            if subject is not None:
                subject.close()
            continue
        try:
            start.wait()
            for step, entities in enumerate(steps, start=1):
                for run_id in task.run_ids:  # every run of this process advances together
                    subject.save(run_id, step * INTERVAL, entities, None)
            done.put(None)
        except Exception:
            done.put(traceback.format_exc())
        finally:
            subject.close()


class _Workers:
    """W4's worker processes, started once (spawned: nothing inherited but arguments)."""

    def __init__(self, count: int) -> None:
        context = multiprocessing.get_context("spawn")
        self.start = context.Barrier(count + 1)
        self.done: multiprocessing.Queue[str | None] = context.Queue()
        self.tasks: list[multiprocessing.Queue[_Task | None]] = [
            context.Queue() for _ in range(count)
        ]
        self.processes = [
            context.Process(target=_w4_worker, args=(q, self.done, self.start), daemon=True)
            for q in self.tasks
        ]
        for process in self.processes:
            process.start()

    def run(self, tasks: list[_Task], timeout: float) -> float:
        """Hand one task to each process; the wall seconds from the start to the last done."""
        for task_queue, task in zip(self.tasks, tasks, strict=True):
            task_queue.put(task)
        errors: list[str] = []
        began = time.perf_counter()
        try:
            self.start.wait(timeout=timeout)
            began = time.perf_counter()
        except Exception:  # a worker failed to set up and broke the barrier
            self.start.reset()
        for _ in tasks:
            try:
                message = self.done.get(timeout=timeout)
            except queue.Empty:
                raise TimeoutError(f"W4: no answer from a worker in {timeout} s") from None
            if message is not None:
                errors.append(message)
        elapsed = time.perf_counter() - began
        if errors:
            raise RuntimeError(f"W4 ({tasks[0].subject}): a worker failed:\n{errors[0]}")
        return elapsed

    def close(self) -> None:
        for task_queue in self.tasks:
            task_queue.put(None)
        for process in self.processes:
            process.join(timeout=30)
            if process.is_alive():
                process.kill()


def run_w4(bench: Bench) -> Timed:
    """W4: many runs saving at once from several processes into one store per subject."""
    sizes = bench.sizes
    processes = sizes.w4_processes
    bench.log(
        f"W4: {sizes.w4_runs} runs x {sizes.w4_savepoints} savepoints of {sizes.w4_entities} "
        f"entities from {processes} processes, {sizes.w4_rounds} round(s)"
    )
    # An in-process memory store cannot be shared by processes.
    names = [name for name in bench.subjects if name != "statestore-memory"]
    places = bench.places("w4", names)
    series = Series({name: [] for name in names})
    workers = _Workers(processes)
    try:
        with bench.open("w4", names, places) as subjects:  # the parent's: creates the stores
            for round_number in range(sizes.w4_rounds):
                run_ids = [f"w4-r{round_number}-{i:04d}" for i in range(sizes.w4_runs)]
                shift = round_number % len(names)
                for name in names[shift:] + names[:shift]:
                    tasks = [
                        _Task(name, places[name], run_ids[k::processes], sizes.w4_savepoints,
                              sizes.w4_entities)
                        for k in range(processes)
                    ]  # fmt: skip
                    series.times[name].append(workers.run(tasks, timeout=600))
                    _check_w4(subjects[name], name, run_ids, sizes.w4_entities)
    finally:
        workers.close()
    params = {"runs": sizes.w4_runs, "processes": processes}
    params |= {"savepoints": sizes.w4_savepoints, "entities": sizes.w4_entities}
    return Timed(params, {"save": series})


def _check_w4(subject: Subject, name: str, run_ids: list[str], entities: int) -> None:
    """Every run's latest savepoint is whole, read through a handle of another process."""
    check = _expect(entities)
    for run_id in run_ids:
        check(f"{name} run {run_id}", subject.load(run_id))


# ------------------------------------------------------------------------ engine


def _engine_class() -> Any:
    import statestore

    if hasattr(statestore, "StateStore"):
        return statestore.StateStore
    from statestore import engine

    return engine.StateStore


def run_engine(bench: Bench) -> EngineResult:
    """StateStore with every entity acknowledging each savepoint vs the raw storage save.

    Both sides keep the same savepoints: the raw side saves, then deletes all but the
    ``engine_keep`` newest, as the engine does after each savepoint it persists.
    """
    sizes = bench.sizes
    backends = [name for name in bench.subjects if name.startswith("statestore-")]
    bench.log(
        f"Engine: {sizes.engine_entities:,} entities, {sizes.engine_savepoints} savepoints, "
        f"on {', '.join(backends)}"
    )
    params = {"entities": sizes.engine_entities, "savepoints": sizes.engine_savepoints}
    result = EngineResult(params | {"keep": sizes.engine_keep}, {})
    for backend in backends:
        with bench.open(f"engine-{backend}", [backend]) as subjects:
            subject = subjects[backend]
            assert isinstance(subject, StatestoreSubject)
            result.by_backend[backend] = _engine_against_raw(subject.storage, sizes)
    return result


def _engine_against_raw(storage: Any, sizes: Sizes) -> Series:
    """Seconds per savepoint of each way the engine is driven, and of the raw save.

    * ``raw``: ``save_savepoint`` of every state, then ``delete_old_savepoints``;
    * ``engine``: each entity updates and acknowledges the savepoint itself;
    * ``watermark``: each entity updates (untimed: the job's own work, which the raw save
      has none of), then one ``store.ack_processed_time``, timed;
    * ``trust-all`` / ``trust-1%``: a store with ``trust_update_state=True`` whose
      entities all update / 1% of them update (untimed), then the watermark, timed.
    """
    n, rounds, keep = sizes.engine_entities, sizes.engine_savepoints, sizes.engine_keep
    storage.init_storage("raw")
    engine_class = _engine_class()
    stores: dict[str, Any] = {}
    members: dict[str, list[Any]] = {}
    for name in ("engine", "watermark", "trust-all", "trust-1%"):
        trust = {"trust_update_state": True} if name.startswith("trust") else {}
        stores[name] = engine_class(name, INTERVAL, storage=storage, keep_savepoints=keep, **trust)
        members[name] = stores[name].init_run_state(0, full_step(n, 0))
    stride = 100  # trust-1%: every 100th entity updates

    def raw(timestamp: int, states: Entities) -> None:
        storage.save_savepoint("raw", timestamp, states)
        storage.delete_old_savepoints("raw", keep)

    def acking(timestamp: int, states: Entities) -> None:
        for entity, (_id, state) in zip(members["engine"], states, strict=True):
            entity.update_state(timestamp - 1, state)
            entity.ack_processed_time(timestamp)

    def updating(name: str, every: int) -> Callable[[int, Entities], None]:
        """The job's own work before the watermark (untimed: the raw save has none)."""

        def update(timestamp: int, states: Entities) -> None:
            for entity, (_id, state) in zip(members[name][::every], states[::every], strict=True):
                entity.update_state(timestamp - 1, state)

        return update

    def watermark(name: str) -> Callable[[int, Entities], None]:
        return lambda timestamp, _states: stores[name].ack_processed_time(timestamp)

    actions: dict[str, Callable[[int, Entities], None]] = {
        "raw": raw,
        "engine": acking,
        "watermark": watermark("watermark"),
        "trust-all": watermark("trust-all"),
        "trust-1%": watermark("trust-1%"),
    }
    before: dict[str, Callable[[int, Entities], None]] = {
        "watermark": updating("watermark", 1),
        "trust-all": updating("trust-all", 1),
        "trust-1%": updating("trust-1%", stride),
    }
    names = list(actions)
    times = Series({name: [] for name in names})
    for step in range(rounds + 1):  # step 0: warm-up, not kept
        timestamp, states = (step + 1) * INTERVAL, full_step(n, step + 1)
        shift = step % len(names)
        for which in names[shift:] + names[:shift]:
            if which in before:
                before[which](timestamp, states)
            seconds = clock(lambda: actions[which](timestamp, states))  # noqa: B023
            if step > 0:
                times.times[which].append(seconds)
    for name in ("engine", "watermark", "trust-all", "trust-1%"):
        latest = storage.get_latest_savepoint(name)
        if latest.timestamp != (rounds + 1) * INTERVAL or len(latest.entities) != n:
            raise AssertionError(f"{name}: the latest savepoint is not the last one acknowledged")
    return times
