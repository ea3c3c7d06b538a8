"""The demo's worker process: runs the stream job on the engine until done or killed.

``python -m statestore.demo.worker --run-id RUN --seed N --sensors N --events N
--minutes N [--crash-at N] [--fault off-by-one]``, with the store's URL in the
environment variable ``STATESTORE_DEMO_URL`` (not on the command line, where other
users of the machine could read a password in it).

It starts the run through the engine (resuming from the latest savepoint when the run
exists, else initializing it with no sensor: each joins with its first reading),
replays the stream from the timestamp it continues from, calls the store's watermark
once per minute of event time so savepoints complete, and acknowledges the stream's end
so the last savepoint holds the final state of every sensor. It talks to the parent
(:mod:`statestore.demo.job`) in JSON lines on stdout, flushed as written:

* ``ready``: resumed or not, the timestamp it continues from, the stream position, how
  long the start took;
* ``progress``: the stream position (readings done);
* ``savepoint``: savepoints the last watermark call persisted, their sizes, and how
  long it took;
* ``crash-point``: the position given by ``--crash-at`` is reached; the parent kills
  this process with SIGKILL now, while it carries on working (in the middle of
  whatever it does next), so the kill lands at an unplanned moment;
* ``done``: the digest of every sensor's state; ``error``: a one-line message.

After ``crash-point`` the worker never exits by itself: should it finish before the
signal arrives, it waits for it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any, TextIO

from .. import open_storage
from ..engine import Entity, StateStore
from ..errors import StateStoreError
from ..schedule import next_savepoint
from .aggregate import apply, initial_state, states_digest
from .stream import MINUTE_MS, StreamConfig

__all__ = ["main"]

#: How many savepoints the run keeps: enough to fall back on should the latest be damaged.
KEEP_SAVEPOINTS = 3
#: The environment variable that carries the store's URL to the worker.
URL_VARIABLE = "STATESTORE_DEMO_URL"
#: Faults the worker can inject on resume, to show that the digest check catches them.
FAULTS = ("none", "off-by-one")


class _Channel:
    """JSON lines to the parent, each flushed at once (the parent acts on them)."""

    def __init__(self, out: TextIO) -> None:
        self._out = out

    def send(self, kind: str, **fields: Any) -> None:
        self._out.write(json.dumps({"type": kind, **fields}) + "\n")
        self._out.flush()


class _Job:
    """One worker's share of the run: the entities, the stream position, the store."""

    def __init__(self, args: argparse.Namespace, url: str, channel: _Channel) -> None:
        self.args = args
        self.channel = channel
        self.config = StreamConfig(
            seed=args.seed, sensors=args.sensors, events=args.events, minutes=args.minutes
        )
        self.crash_at: int | None = args.crash_at if args.crash_at >= 0 else None
        self.crash_sent = False
        self.storage = open_storage(url)
        self.store = StateStore(
            args.run_id, MINUTE_MS, storage=self.storage, keep_savepoints=KEEP_SAVEPOINTS
        )
        self.entities: dict[str, Entity] = {}
        self.last_persisted = -1
        self.position = 0

    def start(self) -> int:
        """Resume or initialize the run; returns the timestamp to replay from.

        A new run starts with no entity: each sensor joins when its first reading
        comes (``add_entity``), as a fleet whose keys are not known up front.
        """
        began = time.perf_counter()
        resumed, timestamp, entities = self.store.start(self.config.start, [])
        start_ms = (time.perf_counter() - began) * 1000
        self.entities = {entity.id: entity for entity in entities}
        if resumed:
            self.last_persisted = timestamp
        since = timestamp
        if resumed and self.args.fault == "off-by-one":
            since += 1  # the classic bug: replaying inputs > T instead of >= T
        self.position = self.config.events_before(since)
        self.channel.send(
            "ready",
            resumed=resumed,
            timestamp=timestamp,
            position=self.position,
            start_ms=start_ms,
        )
        return since

    def run(self, since: int) -> None:
        """Replay the stream from ``since`` to its end, then acknowledge the end.

        For each reading: the watermark first (every reading before it is processed,
        which persists each savepoint it completes), then the sensor joins if it is new
        (a replayed addition returns the restored entity), then the reading is applied.
        """
        due = next_savepoint(MINUTE_MS, since)
        report_every = max(1, self.config.events // 200)
        entities, store = self.entities, self.store
        for reading in self.config.readings(since):
            self._crash_point()
            if reading.timestamp >= due:
                self._acknowledge(reading.timestamp)
                due = next_savepoint(MINUTE_MS, reading.timestamp)
            entity_id = self.config.sensor_id(reading.sensor)
            entity = entities.get(entity_id)
            if entity is None:
                initial = initial_state(reading.sensor)
                entity = entities[entity_id] = store.add_entity(
                    entity_id, reading.timestamp, initial
                )
            apply(entity.state, reading)
            entity.update_state(reading.timestamp, entity.state)
            self.position += 1
            if self.position % report_every == 0:
                self.channel.send("progress", position=self.position)
        self._crash_point()
        self._acknowledge(self.config.end)
        digest = states_digest((entity.id, entity.state) for entity in entities.values())
        self.channel.send("done", position=self.position, digest=digest)

    def _crash_point(self) -> None:
        if self.crash_at is not None and not self.crash_sent and self.position >= self.crash_at:
            self.crash_sent = True
            self.channel.send("crash-point", position=self.position)

    def _acknowledge(self, watermark: int) -> None:
        """The watermark: every reading before ``watermark`` is processed, for every
        sensor. It persists the savepoint(s) it completes before it returns: its
        duration is the save latency reported."""
        began = time.perf_counter()
        self.store.ack_processed_time(watermark)
        done = time.perf_counter()
        new = [
            row
            for row in self.storage.list_savepoints(self.args.run_id)
            if row.timestamp > self.last_persisted
        ]
        if new:
            self.last_persisted = new[-1].timestamp
        self.channel.send(
            "savepoint",
            timestamps=[row.timestamp for row in new],
            sizes=[row.size for row in new],
            persist_ms=(done - began) * 1000,
            round_ms=(done - began) * 1000,
        )

    def close(self) -> None:
        self.storage.close()


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m statestore.demo.worker")
    parser.add_argument("--run-id", required=True)
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--sensors", type=int, required=True)
    parser.add_argument("--events", type=int, required=True)
    parser.add_argument("--minutes", type=int, required=True)
    parser.add_argument("--crash-at", type=int, default=-1)
    parser.add_argument("--fault", choices=FAULTS, default="none")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the worker; 0 when the stream is done, 1 on an error (reported to the parent)."""
    args = _parser().parse_args(argv)
    channel = _Channel(sys.stdout)
    try:
        url = os.environ.get(URL_VARIABLE)
        if not url:
            raise ValueError(f"{URL_VARIABLE} is not set: the worker is started by the demo")
        job = _Job(args, url, channel)
        try:
            job.run(job.start())
        finally:
            job.close()
    except (StateStoreError, OSError, ValueError) as exc:
        channel.send("error", message=f"{type(exc).__name__}: {exc}")
        return 1
    if job.crash_sent:
        # Finished before the parent's SIGKILL arrived: wait for it (EOF if the parent died).
        sys.stdin.read()
    return 0


if __name__ == "__main__":
    sys.exit(main())
