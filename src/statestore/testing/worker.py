"""Child process of the multi-process tests, and savepoints whose wholeness is checkable.

Every entity state of :func:`payload` carries its savepoint's timestamp and a digest of
it, so a savepoint read back mixes two saves, or lost an entity, exactly when
:func:`wholeness_problem` says so. Run as a child::

    python -m statestore.testing.worker save URL RUN FIRST STEP COUNT KEEP
    python -m statestore.testing.worker acquire URL RUN
    python -m statestore.testing.worker read URL RUN MAX_SAVEPOINT_BYTES TS [TS ...]

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
import importlib
import os
import random
import resource
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import BackendError, CorruptSavepointError, NoSavepointError
from ..storage import Savepoint, Storage

__all__ = [
    "DEFAULT_OPENER",
    "ENTITY_COUNT",
    "READ_HEADROOM",
    "cap_address_space",
    "command",
    "load_opener",
    "payload",
    "read_each",
    "wholeness_problem",
]

#: The opener children use unless told otherwise: the URL registry's.
DEFAULT_OPENER = "statestore.storage:open_storage"

Opener = Callable[..., Storage]

#: Entities in every savepoint of :func:`payload`.
ENTITY_COUNT = 12

#: Address space a capped reader may grow by: ample for a normal read, a quarter of
#: what one inflated 1 GiB state would take.
READ_HEADROOM = 256 << 20


def load_opener(spec: str) -> Opener:
    """The callable ``"package.module:name"`` names, imported (in this process)."""
    module_name, sep, attribute = spec.partition(":")
    if not sep or not module_name or not attribute:
        raise ValueError(f"an opener is named 'package.module:callable', not {spec!r}")
    found: Any = importlib.import_module(module_name)
    for name in attribute.split("."):
        found = getattr(found, name)
    if not callable(found):
        raise TypeError(f"opener {spec!r} is not callable")
    opener: Opener = found
    return opener


def command(*args: str, opener: str = DEFAULT_OPENER) -> list[str]:
    """The command line of a child running this module with ``args`` under ``opener``."""
    return [sys.executable, "-m", __name__, "--opener", opener, *args]


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


def _save(
    open_storage: Opener, url: str, run_id: str, first: int, step: int, *, count: int, keep: int
) -> None:
    with open_storage(url) as storage:
        storage.init_storage(run_id)
        for k in range(count):
            timestamp = first + k * step
            storage.save_savepoint(run_id, timestamp, payload(timestamp))
            print(f"ACK {timestamp}", flush=True)
            if keep > 0:
                storage.delete_old_savepoints(run_id, keep)


def _acquire(open_storage: Opener, url: str, run_id: str) -> None:
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


def _read(
    open_storage: Opener, url: str, run_id: str, max_savepoint_bytes: int, timestamps: list[int]
) -> None:
    with open_storage(url, max_savepoint_bytes=max_savepoint_bytes) as storage:
        storage.list_savepoints(run_id)  # connect before the cap: it bounds the reads only
        cap_address_space()
        print("\n".join(read_each(storage, run_id, timestamps)), flush=True)


def crash_writer(open_storage: Opener, url: str, run_id: str, seed: int, keep_n: int) -> None:
    """Save and prune savepoints until killed: what a crash test kills at random moments.

    Prints ``READY`` once the store is open, resumes the run from its latest savepoint,
    takes the writer token, then loops: save the next savepoint (now and then the same
    timestamp again, as a retried save does), print ``ACK <ts>`` once the save returned,
    prune to the ``keep_n`` newest. The moves follow from ``seed``, so a round replays.
    """
    rng = random.Random(seed)  # noqa: S311 - replayable moves, not secrets
    with open_storage(url) as storage:
        print("READY", flush=True)
        storage.init_storage(run_id)
        token = storage.acquire_writer(run_id)
        try:
            timestamp = storage.get_latest_savepoint_timestamp(run_id)
        except NoSavepointError:
            timestamp = 0
        while True:
            if rng.random() >= 0.1:  # otherwise save the same timestamp again
                timestamp += rng.randint(1, 60_000)
            storage.save_savepoint(run_id, timestamp, payload(timestamp), writer_token=token)
            print(f"ACK {timestamp}", flush=True)
            storage.delete_old_savepoints(run_id, keep_n)


#: Bytes of random data :func:`limited_save` adds to its savepoint (beyond any limit).
BIG_STATE_BYTES = 2 << 20


def limited_save(open_storage: Opener, url: str, run_id: str, limit: int) -> None:
    """Try to save savepoint 3000 with a 2 MiB state while files may not pass ``limit``.

    ``SIGXFSZ`` is ignored, so a write past the limit fails with ``EFBIG`` instead of
    killing the process. Prints ``SAVED`` or ``REFUSED <message>``, then (still under
    the limit) ``LATEST <ts>`` and ``LISTED [ts, ...]``: what the store shows after.
    """
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    with open_storage(url) as storage:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
        try:
            big = [*payload(3000), ("big", os.urandom(BIG_STATE_BYTES))]
            storage.save_savepoint(run_id, 3000, big)
            print("SAVED", flush=True)
        except BackendError as exc:
            print("REFUSED", exc, flush=True)
        print("LATEST", storage.get_latest_savepoint(run_id).timestamp, flush=True)
        print("LISTED", [row.timestamp for row in storage.list_savepoints(run_id)], flush=True)


def main(argv: list[str] | None = None) -> None:
    """Parse the command line of the child process and do what it says."""
    parser = argparse.ArgumentParser(prog="python -m statestore.testing.worker")
    parser.add_argument("--opener", default=DEFAULT_OPENER)
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
    crash = commands.add_parser("crash")
    crash.add_argument("url")
    crash.add_argument("run_id")
    crash.add_argument("seed", type=int)
    crash.add_argument("keep", type=int)
    limited = commands.add_parser("limited-save")
    limited.add_argument("url")
    limited.add_argument("run_id")
    limited.add_argument("limit", type=int)
    args = parser.parse_args(argv)
    opener = load_opener(args.opener)
    if args.command == "save":
        _save(
            opener, args.url, args.run_id, args.first, args.step, count=args.count, keep=args.keep
        )
    elif args.command == "read":
        _read(opener, args.url, args.run_id, args.max_savepoint_bytes, args.timestamps)
    elif args.command == "crash":
        crash_writer(opener, args.url, args.run_id, args.seed, args.keep)
    elif args.command == "limited-save":
        limited_save(opener, args.url, args.run_id, args.limit)
    else:
        _acquire(opener, args.url, args.run_id)


if __name__ == "__main__":
    main(sys.argv[1:])
