"""A stream job whose entities come and go, killed with SIGKILL at random moments (in the
middle of a write as likely as between calls), resumes to exactly the states of a run
that was never interrupted: on SQLite in the default mode, on files trusting updates.

The job runs as this file in a child process that prints a dot every 100 events; the
parent kills it a random few dots (and microseconds) in, twice, then lets a last run
finish and compares its final states (written as a pickle) with the same job run
uninterrupted in this process. ``STATESTORE_KILL_SEED=N`` replays a failing seed.
"""

from __future__ import annotations

import os
import pickle
import random
import signal
import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
RUN = "fleet"
SCHEDULE = 1_000
SEED = int(os.environ.get("STATESTORE_KILL_SEED", "0")) or random.SystemRandom().randrange(1, 10**9)

Event = tuple[int, str, str, int]  # (timestamp, kind, sensor, value)


def _events(seed: int) -> list[Event]:
    """A sensor fleet that grows and shrinks: 1,500 events over about 200 savepoints."""
    rng = random.Random(seed)
    events: list[Event] = []
    ts = 0
    for _ in range(1_500):
        # Steps of 0 to 300, and the first event past a savepoint lands on it: an input
        # at a savepoint's own time is where a replay from it must begin.
        ts = min(ts + rng.randrange(0, 4) * 100, (ts // SCHEDULE + 1) * SCHEDULE)
        sensor = f"sensor-{rng.randrange(40):02d}"
        kind = rng.choices(["input", "add", "remove"], weights=[20, 3, 1])[0]
        events.append((ts, kind, sensor, rng.randrange(-50, 50)))
    return events


def _job(url: str, seed: int, trust: bool, out: Path | None) -> dict[str, Any]:
    """Run (or resume) the job to its end; write the final states to ``out`` if given."""
    from statestore import open_storage
    from statestore.engine import StateStore

    with open_storage(url) as storage:
        store = StateStore(RUN, SCHEDULE, storage, keep_savepoints=2, trust_update_state=trust)
        _resumed, since, _entities = store.start(0, [])
        for done, (ts, kind, sensor, value) in enumerate(_events(seed)):
            if ts < since:
                continue
            if done % 100 == 0 and out is not None:
                print(".", end="", flush=True)  # progress, for the parent's kill
            store.ack_processed_time(ts)  # the watermark, then the input at ts
            if kind == "remove":
                store.remove_entity(sensor, ts)
                continue
            entity = store.add_entity(sensor, ts, {"n": 0, "sum": Decimal(0), "seen": set()})
            if kind == "input":
                state = entity.state
                new = {
                    "n": state["n"] + 1,
                    "sum": state["sum"] + Decimal(value) / 8,
                    "seen": state["seen"] | {value % 5},
                    "last": (ts, value),
                }
                entity.update_state(ts, new)
        states = {entity.id: entity.state for entity in store.entities()}
    if out is not None:
        out.write_bytes(pickle.dumps(states))
    return states


def _env() -> dict[str, str]:
    paths = [str(ROOT / "src"), *filter(None, [os.environ.get("PYTHONPATH")])]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}


@pytest.mark.parametrize(
    ("backend", "trust"), [("sqlite", False), ("file", True)], ids=["sqlite", "file-trust"]
)
def test_a_job_killed_at_random_moments_resumes_exactly(
    tmp_path: Path, backend: str, trust: bool
) -> None:
    url = f"sqlite:///{tmp_path}/fleet.db" if backend == "sqlite" else f"file://{tmp_path}/fleet"
    expected = _job(f"memory://kill-{backend}-{trust}-{SEED}", SEED, trust=False, out=None)
    rng = random.Random(SEED)
    out = tmp_path / "final.pickle"
    command = [sys.executable, __file__, url, str(SEED), str(int(trust)), str(out)]
    killed = 0
    for _ in range(2):
        child = subprocess.Popen(
            command, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        assert child.stdout is not None
        child.stdout.read(rng.randrange(1, 8))  # that many dots into the (resumed) job
        time.sleep(rng.uniform(0, 0.005))  # and then anywhere: mid-write as well
        child.send_signal(signal.SIGKILL)
        _, err = child.communicate(timeout=60)
        if child.returncode == -signal.SIGKILL:
            killed += 1
        else:
            assert child.returncode == 0, f"seed {SEED}: {err.decode()}"
    assert killed, f"seed {SEED}: the job always ended before its kill"
    done = subprocess.run(command, env=_env(), capture_output=True, timeout=120, check=False)
    assert done.returncode == 0, f"seed {SEED}: {done.stderr.decode()}"
    resumed = pickle.loads(out.read_bytes())
    assert resumed == expected, f"seed {SEED} (STATESTORE_KILL_SEED={SEED} replays it)"
    assert {k: repr(v) for k, v in resumed.items()} == {k: repr(v) for k, v in expected.items()}


if __name__ == "__main__":
    _url, _seed, _trust, _out = sys.argv[1:5]
    _job(_url, int(_seed), bool(int(_trust)), Path(_out))
