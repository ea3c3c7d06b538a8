"""Child process of the multi-process tests, and savepoints whose wholeness is checkable.

Every entity state of :func:`payload` carries its savepoint's timestamp and a digest of
it, so a savepoint read back mixes two saves, or lost an entity, exactly when
:func:`wholeness_problem` says so. Run as a child::

    python -m statestore.testing._worker save URL RUN FIRST STEP COUNT KEEP
    python -m statestore.testing._worker acquire URL RUN

``save`` initializes the run and saves ``COUNT`` savepoints at ``FIRST``, ``FIRST+STEP``,
..., pruning to the ``KEEP`` newest after each one when ``KEEP`` > 0, and prints
``ACK <ts>`` (flushed) once each save returned. ``acquire`` prints the writer token it took.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from typing import Any

from ..storage import Savepoint, open_storage

__all__ = ["ENTITY_COUNT", "payload", "wholeness_problem"]

#: Entities in every savepoint of :func:`payload`.
ENTITY_COUNT = 12


def _digest(timestamp: int) -> str:
    return hashlib.sha256(f"savepoint {timestamp}".encode()).hexdigest()


def payload(timestamp: int, entity_count: int = ENTITY_COUNT) -> list[tuple[str, Any]]:
    """The entities of the savepoint at ``timestamp``: each state names its savepoint.

    Sizes vary with the timestamp (up to ~5 KiB a state), so some saves compress
    their states and some do not.
    """
    digest = _digest(timestamp)
    pad = digest.encode() * (40 * (timestamp % 3))
    return [
        (f"entity-{i:03d}", {"ts": timestamp, "digest": digest, "i": i, "pad": pad})
        for i in range(entity_count)
    ]


def wholeness_problem(savepoint: Savepoint, entity_count: int = ENTITY_COUNT) -> str | None:
    """What is wrong with a savepoint written from :func:`payload`, or None if it is whole."""
    timestamp, entities = savepoint
    if entities != payload(timestamp, entity_count):
        ids = [entity_id for entity_id, _ in entities]
        stamps = sorted({str(state.get("ts")) for _, state in entities if isinstance(state, dict)})
        return (
            f"savepoint {timestamp} is not whole: {len(entities)} entities {ids[:3]}..., "
            f"states carry timestamps {stamps}"
        )
    return None


def _save(url: str, run_id: str, first: int, step: int, *, count: int, keep: int) -> None:
    with open_storage(url) as storage:
        storage.init_storage(run_id)
        for k in range(count):
            timestamp = first + k * step
            storage.save_savepoint(run_id, timestamp, payload(timestamp))
            print(f"ACK {timestamp}", flush=True)
            if keep > 0:
                storage.delete_old_savepoints(run_id, keep)


def _acquire(url: str, run_id: str) -> None:
    with open_storage(url) as storage:
        print(storage.acquire_writer(run_id), flush=True)


def main(argv: list[str] | None = None) -> None:
    """Parse the command line of the child process and do what it says."""
    parser = argparse.ArgumentParser(prog="python -m statestore.testing._worker")
    commands = parser.add_subparsers(dest="command", required=True)
    save = commands.add_parser("save")
    save.add_argument("url")
    save.add_argument("run_id")
    for name in ("first", "step", "count", "keep"):
        save.add_argument(name, type=int)
    acquire = commands.add_parser("acquire")
    acquire.add_argument("url")
    acquire.add_argument("run_id")
    args = parser.parse_args(argv)
    if args.command == "save":
        _save(args.url, args.run_id, args.first, args.step, count=args.count, keep=args.keep)
    else:
        _acquire(args.url, args.run_id)


if __name__ == "__main__":
    main(sys.argv[1:])
