"""Soak: several processes, many runs, saving, loading and pruning at once, for a fixed time.

Each backend gets ``PROCESSES`` worker processes (this file run as a script), each
owning ``STORAGE_RUNS + ENGINE_RUNS`` runs: the storage runs it saves with its writer
token, prunes and reads back; the engine runs it drives through a
:class:`statestore.StateStore` and now and then restarts from the latest savepoint.
Every worker also reads and prunes the other workers' runs while they are being
written (pruning keeps at least the newest savepoint, as a maintenance job would). Each
acknowledged savepoint is logged (a line per save, written before the next operation);
every read is checked on the spot. Afterwards every run's latest savepoint must be the
last one acknowledged for it, and every stored savepoint whole.

``STATESTORE_SOAK_SECONDS`` (default 10, what the suite runs; docs/reliability.md quotes
a run of 20) sets the time per backend. The figures (runs,
processes, operations, savepoints per second) are printed and written as JSON to
``soak-<backend>.json`` in the test's temp directory, and also into
``$STATESTORE_SOAK_REPORT_DIR`` when that is set (docs/reliability.md quotes them).
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from fault_helpers import backend_params, store_url

from statestore import (
    NoSavepointError,
    Savepoint,
    StateStore,
    StateStoreError,
    Storage,
    open_storage,
)
from statestore.testing.worker import payload, wholeness_problem

SECONDS = float(os.environ.get("STATESTORE_SOAK_SECONDS", "10"))
PROCESSES = 4
STORAGE_RUNS = 6
ENGINE_RUNS = 2
SCHEDULE = 1_000
ENTITIES = ("meter-1", "meter-2", "meter-3", "meter-4")
REPORT_DIR_ENV = "STATESTORE_SOAK_REPORT_DIR"


def storage_run(worker: int, i: int) -> str:
    return f"w{worker}-storage-{i}"


def engine_run(worker: int, i: int) -> str:
    return f"w{worker}-engine-{i}"


def engine_state(run_id: str, entity_id: str, timestamp: int) -> dict[str, Any]:
    """An engine run's entity state at ``timestamp``: says which run, entity and time."""
    return {"run": run_id, "entity": entity_id, "ts": timestamp, "pad": "x" * (timestamp % 997)}


def expected_engine_savepoint(run_id: str, timestamp: int) -> Savepoint:
    return Savepoint(timestamp, [(e, engine_state(run_id, e, timestamp)) for e in ENTITIES])


def soak_problem(run_id: str, savepoint: Savepoint) -> str | None:
    """What is wrong with a savepoint of a soak run, or None when it is whole."""
    if "-engine-" in run_id:
        # An acknowledgement at S fills every savepoint up to S with the states at S.
        states = [state for _, state in savepoint.entities]
        filled_at = states[0].get("ts", -1) if states and isinstance(states[0], dict) else -1
        if filled_at < savepoint.timestamp or savepoint.entities != [
            (e, engine_state(run_id, e, filled_at)) for e in ENTITIES
        ]:
            return f"run {run_id!r}: engine savepoint {savepoint.timestamp} is not whole"
        return None
    problem = wholeness_problem(savepoint)
    return None if problem is None else f"run {run_id!r}: {problem}"


# -------------------------------------------------------------------- the worker


class Worker:
    """One worker process: its runs, its log, and what it counted."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.worker: int = config["worker"]
        self.rng = random.Random(config["seed"])
        self.all_runs: list[str] = config["all_runs"]
        self.storage = open_storage(config["url"])
        self.log = open(config["log"], "a", buffering=1)  # noqa: SIM115 - closed in run()
        self.counts: Counter[str] = Counter()
        self.tokens: dict[str, int] = {}
        self.last: dict[str, int] = {}
        self.engines: dict[str, tuple[StateStore, list[Any]]] = {}
        self.engine_last: dict[str, int] = {}

    def note(self, line: str) -> None:
        self.log.write(line + "\n")  # line-buffered: on its way before the next operation

    def fail(self, problem: str) -> None:
        self.counts["problems"] += 1
        self.note(f"BAD {problem}")

    def setup(self) -> None:
        for i in range(STORAGE_RUNS):
            run_id = storage_run(self.worker, i)
            self.storage.init_storage(run_id)
            self.tokens[run_id] = self.storage.acquire_writer(run_id)
        for i in range(ENGINE_RUNS):
            run_id = engine_run(self.worker, i)
            store = StateStore(run_id, SCHEDULE, storage=self.storage, keep_savepoints=2)
            defs = [(e, engine_state(run_id, e, 0)) for e in ENTITIES]
            self.engines[run_id] = (store, store.init_run_state(0, defs))
            self.engine_last[run_id] = 0

    def run(self, seconds: float) -> None:
        self.setup()
        deadline = time.monotonic() + seconds
        steps = [
            (0.50, self.save),
            (0.58, self.prune),
            (0.62, self.prune_other),
            (0.72, self.load_own),
            (0.84, self.load_other),
            (0.97, self.engine_step),
            (1.00, self.engine_restart),
        ]
        while time.monotonic() < deadline:
            roll = self.rng.random()
            step = next(action for bound, action in steps if roll < bound)
            try:
                step()
            except StateStoreError as exc:
                self.fail(f"{step.__name__}: {type(exc).__name__}: {exc}")
        self.note("DONE " + json.dumps(dict(self.counts)))
        self.log.close()
        self.storage.close()

    def own_run(self) -> str:
        return storage_run(self.worker, self.rng.randrange(STORAGE_RUNS))

    def save(self) -> None:
        run_id = self.own_run()
        timestamp = self.last.get(run_id, 0) + self.rng.randint(1, 5_000)
        states = payload(timestamp)
        self.storage.save_savepoint(run_id, timestamp, states, writer_token=self.tokens[run_id])
        self.last[run_id] = timestamp
        self.counts["saves"] += 1
        self.note(f"ACK {run_id} {timestamp}")

    def prune(self) -> None:
        self.storage.delete_old_savepoints(self.own_run(), self.rng.randint(1, 3))
        self.counts["prunes"] += 1

    def prune_other(self) -> None:
        """Prune any run, as a maintenance job would: its latest savepoint always stays."""
        self.storage.delete_old_savepoints(self.rng.choice(self.all_runs), self.rng.randint(1, 3))
        self.counts["prunes"] += 1
        self.counts["prunes_of_other_workers_runs"] += 1

    def load_own(self) -> None:
        run_id = self.own_run()
        if run_id not in self.last:
            return
        savepoint = self.storage.get_latest_savepoint(run_id)
        self.counts["loads"] += 1
        if savepoint.timestamp != self.last[run_id]:
            self.fail(f"run {run_id!r}: latest {savepoint.timestamp}, acked {self.last[run_id]}")
        elif (problem := soak_problem(run_id, savepoint)) is not None:
            self.fail(problem)

    def load_other(self) -> None:
        run_id = self.rng.choice(self.all_runs)
        try:
            savepoint = self.storage.get_latest_savepoint(run_id)
        except NoSavepointError:
            return  # not initialized, or no savepoint yet
        self.counts["loads"] += 1
        self.counts["loads_of_other_workers_runs"] += 1
        if (problem := soak_problem(run_id, savepoint)) is not None:
            self.fail(problem)

    def engine_step(self) -> None:
        run_id = engine_run(self.worker, self.rng.randrange(ENGINE_RUNS))
        _store, entities = self.engines[run_id]
        timestamp = self.engine_last[run_id] + SCHEDULE * self.rng.randint(1, 3)
        for entity in entities:
            # The input comes at the last acknowledged time, before the next savepoint
            # (the engine refuses one past it until it is acknowledged).
            last = self.engine_last[run_id]
            entity.update_state(last, engine_state(run_id, entity.id, timestamp))
            entity.ack_processed_time(timestamp)
        # The last ack completed the savepoint at ``timestamp`` and persisted it.
        self.engine_last[run_id] = timestamp
        self.counts["engine_savepoints"] += 1
        self.note(f"ACK {run_id} {timestamp}")

    def engine_restart(self) -> None:
        """Resume an engine run from storage, as a restarted job would."""
        run_id = engine_run(self.worker, self.rng.randrange(ENGINE_RUNS))
        if self.engine_last[run_id] == 0:
            return
        store = StateStore(run_id, SCHEDULE, storage=self.storage, keep_savepoints=2)
        resumed, timestamp, entities = store.start(0, [(e, None) for e in ENTITIES])
        self.engines[run_id] = (store, entities)
        self.counts["engine_resumes"] += 1
        loaded = Savepoint(timestamp, [(e.id, e.state) for e in entities])
        if not resumed or loaded != expected_engine_savepoint(run_id, self.engine_last[run_id]):
            self.fail(f"run {run_id!r}: resumed at {timestamp}, acked {self.engine_last[run_id]}")


# -------------------------------------------------------------------- the test


def read_logs(logs: list[Path]) -> tuple[dict[str, int], Counter[str], list[str]]:
    """The last acknowledged timestamp of every run, the summed counts, the problems."""
    last: dict[str, int] = {}
    counts: Counter[str] = Counter()
    problems: list[str] = []
    for log in logs:
        done = False
        for line in log.read_text().splitlines():
            kind, _, rest = line.partition(" ")
            if kind == "ACK":
                run_id, timestamp = rest.rsplit(" ", 1)
                assert int(timestamp) > last.get(run_id, -1), line  # ascending per run
                last[run_id] = int(timestamp)
            elif kind == "DONE":
                counts.update(json.loads(rest))
                done = True
            else:
                problems.append(line)
        assert done, f"{log.name}: the worker did not finish"
    return last, counts, problems


def check_store(storage: Storage, last: dict[str, int], runs: list[str]) -> int:
    """Every run's latest is its last ACK and every savepoint is whole; returns savepoints."""
    checked = 0
    assert storage.list_runs() == sorted(runs)
    for run_id in runs:
        rows = storage.list_savepoints(run_id)
        if run_id not in last:
            assert rows == [], f"run {run_id!r}: savepoints without any ACK"
            continue
        latest = storage.get_latest_savepoint(run_id)
        assert latest.timestamp == last[run_id], f"run {run_id!r}: acked {last[run_id]}, {latest}"
        for row in rows:
            problem = soak_problem(run_id, storage.get_savepoint(run_id, row.timestamp))
            assert problem is None, problem
            checked += 1
    return checked


@pytest.mark.slow
@pytest.mark.parametrize("backend", backend_params())
def test_soak(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    url = store_url(backend, request, tmp_path)
    seed = int.from_bytes(os.urandom(4), "big")
    runs = [storage_run(w, i) for w in range(PROCESSES) for i in range(STORAGE_RUNS)]
    runs += [engine_run(w, i) for w in range(PROCESSES) for i in range(ENGINE_RUNS)]
    logs = [tmp_path / f"worker-{w}.log" for w in range(PROCESSES)]
    started = time.monotonic()
    workers = []
    for w in range(PROCESSES):
        config = {
            "url": url,
            "worker": w,
            "seed": seed + w,
            "all_runs": runs,
            "log": str(logs[w]),
        }
        config_path = tmp_path / f"worker-{w}.json"
        config_path.write_text(json.dumps(config))
        workers.append(
            subprocess.Popen(
                [sys.executable, __file__, str(config_path), str(SECONDS)],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
            )
        )
    for w, worker in enumerate(workers):
        _out, err = worker.communicate(timeout=SECONDS + 120)
        assert worker.returncode == 0, f"worker {w} (seed {seed + w}) failed:\n{err}"
    elapsed = time.monotonic() - started
    last, counts, problems = read_logs(logs)
    assert problems == [], f"seed {seed}: {problems[:10]}"
    with open_storage(url) as storage:
        checked = check_store(storage, last, runs)
    savepoints = counts["saves"] + counts["engine_savepoints"]
    figures = {
        "backend": backend,
        "seconds_configured": SECONDS,
        "seconds": round(elapsed, 1),  # wall time, worker start-up included
        "processes": PROCESSES,
        "runs": len(runs),
        "savepoints_acknowledged": savepoints,
        "savepoints_per_second": round(savepoints / elapsed, 1),
        "loads": counts["loads"],
        "loads_of_other_workers_runs": counts["loads_of_other_workers_runs"],
        "prunes": counts["prunes"],
        "prunes_of_other_workers_runs": counts["prunes_of_other_workers_runs"],
        "engine_resumes": counts["engine_resumes"],
        "savepoints_checked_whole_afterwards": checked,
        "runs_whose_latest_is_the_last_ack": len(last),  # check_store asserted each
        "acknowledged_savepoints_lost": 0,
        "seed": seed,
    }
    text = json.dumps(figures, indent=2)
    (tmp_path / f"soak-{backend}.json").write_text(text)
    if os.environ.get(REPORT_DIR_ENV):
        report_dir = Path(os.environ[REPORT_DIR_ENV])
        report_dir.mkdir(parents=True, exist_ok=True)
        (report_dir / f"soak-{backend}.json").write_text(text)
    print(f"soak figures: {text}")
    assert savepoints >= PROCESSES, "the workers barely saved anything"


if __name__ == "__main__":  # a worker: python tests/test_soak.py CONFIG.json SECONDS
    Worker(json.loads(Path(sys.argv[1]).read_text())).run(float(sys.argv[2]))
