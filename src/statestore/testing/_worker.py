"""Child process of the multi-process tests, and savepoints whose wholeness is checkable.

Every entity state of :func:`payload` carries its savepoint's timestamp and a digest of
it, so a savepoint read back mixes two saves, or lost an entity, exactly when
:func:`wholeness_problem` says so. Run as a child::

    python -m statestore.testing._worker save URL RUN FIRST STEP COUNT KEEP
    python -m statestore.testing._worker acquire URL RUN
    python -m statestore.testing._worker read URL RUN MAX_SAVEPOINT_BYTES TS [TS ...]

``save`` initializes the run and saves ``COUNT`` savepoints at ``FIRST``, ``FIRST+STEP``,
..., pruning to the ``KEEP`` newest after each one when ``KEEP`` > 0, and prints
``ACK <ts>`` (flushed) once each save returned. ``acquire`` prints the writer token it took.
``read`` caps its own address space at :data:`READ_HEADROOM` bytes over what it uses
once the store is open, then reads each savepoint and prints one line of
:func:`read_each` per timestamp: a reader that allocated what a crafted savepoint
declares fails there, not on the machine.
"""

from __future__ import annotations

import argparse
import hashlib
import resource
import sys
from pathlib import Path
from typing import Any

from ..errors import CorruptSavepointError
from ..storage import Savepoint, Storage, open_storage

__all__ = [
    "ENTITY_COUNT",
    "READ_HEADROOM",
    "cap_address_space",
    "payload",
    "read_each",
    "wholeness_problem",
]

#: Entities in every savepoint of :func:`payload`.
ENTITY_COUNT = 12

#: Address space a capped reader may grow by: ample for a normal read, a quarter of
#: what one inflated 1 GiB state would take.
READ_HEADROOM = 256 << 20


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


def cap_address_space(headroom: int = READ_HEADROOM) -> None:
    """Let this process grow its address space by ``headroom`` bytes at most (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmSize:"):
            used = int(line.split()[1]) * 1024
            resource.setrlimit(resource.RLIMIT_AS, (used + headroom, used + headroom))
            return
    raise RuntimeError("no VmSize in /proc/self/status: cannot cap the address space")


def read_each(storage: Storage, run_id: str, timestamps: list[int]) -> list[str]:
    """Read each savepoint; a line each: ``OK TS COUNT``, ``CORRUPT TS MESSAGE`` or
    ``RAISED TS TYPE: MESSAGE`` (the last is always a defect)."""
    lines = []
    for timestamp in timestamps:
        try:
            entities = storage.get_savepoint(run_id, timestamp).entities
            lines.append(f"OK {timestamp} {len(entities)}")
        except CorruptSavepointError as exc:
            lines.append(f"CORRUPT {timestamp} {exc}")
        except Exception as exc:  # MemoryError, above all: what the cap is there to catch
            lines.append(f"RAISED {timestamp} {type(exc).__name__}: {exc}")
    return lines


def _read(url: str, run_id: str, max_savepoint_bytes: int, timestamps: list[int]) -> None:
    with open_storage(url, max_savepoint_bytes=max_savepoint_bytes) as storage:
        storage.list_savepoints(run_id)  # connect before the cap: it bounds the reads only
        cap_address_space()
        print("\n".join(read_each(storage, run_id, timestamps)), flush=True)


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
    read = commands.add_parser("read")
    read.add_argument("url")
    read.add_argument("run_id")
    read.add_argument("max_savepoint_bytes", type=int)
    read.add_argument("timestamps", type=int, nargs="+")
    args = parser.parse_args(argv)
    if args.command == "save":
        _save(args.url, args.run_id, args.first, args.step, count=args.count, keep=args.keep)
    elif args.command == "read":
        _read(args.url, args.run_id, args.max_savepoint_bytes, args.timestamps)
    else:
        _acquire(args.url, args.run_id)


if __name__ == "__main__":
    main(sys.argv[1:])
