"""``statestore demo``: a stream job that really crashes and resumes exactly.

Thousands of sensors send hundreds of thousands of readings over hours of event time
(generated, deterministic for a seed); each sensor is an entity of the engine keeping a
running aggregate, with a savepoint every minute of event time in a SQLite store. A
worker process runs the job and is killed with SIGKILL part way; a new worker resumes
from the latest savepoint and replays the readings from its timestamp; the result is
compared, digest against digest, with the same job run without interruption.

The command line calls :func:`add_arguments` and :func:`run`; ``python -m
statestore.demo`` does the same on its own. The parts: :mod:`.stream` (the readings),
:mod:`.aggregate` (a sensor's state, the digest), :mod:`.worker` (the job process),
:mod:`.job` (kill, resume, compare), :mod:`.report`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import random
import secrets
import sys
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from .job import DemoOptions

__all__ = ["add_arguments", "run"]

DEFAULT_SENSORS = 2_000
DEFAULT_EVENTS = 300_000
DEFAULT_HOURS = 3.0
DEFAULT_SEED = 42
#: With no --crash-at, the crash point is drawn (from the seed) in this range of the stream.
RANDOM_CRASH = (0.2, 0.8)

#: Exit statuses, as the statestore command's: ok, error, usage, and "data differs".
EXIT_MATCH, EXIT_ERROR, EXIT_USAGE, EXIT_MISMATCH = 0, 1, 2, 3


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the demo's options to ``parser`` (``--url`` and ``--json`` if not there yet)."""
    size = parser.add_argument_group("size of the job")
    size.add_argument(
        "--sensors",
        "--entities",
        dest="sensors",
        type=int,
        default=DEFAULT_SENSORS,
        metavar="N",
        help=f"sensors, one entity each (default {DEFAULT_SENSORS:,})",
    )
    size.add_argument(
        "--events",
        type=int,
        default=DEFAULT_EVENTS,
        metavar="N",
        help=f"readings in the stream (default {DEFAULT_EVENTS:,})",
    )
    size.add_argument(
        "--hours",
        type=float,
        default=DEFAULT_HOURS,
        metavar="H",
        help=f"event time the stream covers, in whole minutes (default {DEFAULT_HOURS:g})",
    )
    size.add_argument(
        "--seed", type=int, default=DEFAULT_SEED, help=f"stream seed (default {DEFAULT_SEED})"
    )
    crash = parser.add_argument_group("the crash")
    crash.add_argument(
        "--crash-at",
        type=float,
        metavar="FRACTION",
        help="kill the worker once this fraction of the readings is done, 0 <= F < 1 "
        f"(default: drawn from the seed between {RANDOM_CRASH[0]} and {RANDOM_CRASH[1]})",
    )
    crash.add_argument(
        "--no-crash", action="store_true", help="run once, uninterrupted, and compare"
    )
    # Replays from T + 1 ms instead of T, to show the check failing; for tests.
    crash.add_argument("--fault", choices=("none", "off-by-one"), help=argparse.SUPPRESS)
    _add_if_absent(
        parser,
        "--url",
        help="store to run in (default: a temporary SQLite file, removed afterwards)",
    )
    parser.add_argument(
        "--run-id", help="id of the demo run (default: demo-<random>); must not exist"
    )
    _add_if_absent(parser, "--json", action="store_true", help="print the report as JSON")


def run(args: argparse.Namespace) -> int:
    """Run the demo; 0 when the resumed result equals the uninterrupted one.

    3 when the digests differ, 1 when the demo could not run and 2 for bad options
    (both with one line on stderr).
    """
    from ..errors import StateStoreError  # noqa: PLC0415 - keep `--help` fast
    from .job import DemoError, run_demo  # noqa: PLC0415
    from .report import report_dict, report_text  # noqa: PLC0415

    try:
        options = _options(args)
    except ValueError as exc:
        print(f"statestore demo: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        with _Progress(options.stream.events) as progress:
            result = run_demo(options, progress.update)
    except (DemoError, StateStoreError, OSError) as exc:
        print(f"statestore demo: {exc}", file=sys.stderr)
        return EXIT_ERROR
    if args.json:
        print(json.dumps(report_dict(result), indent=2))
    else:
        print(report_text(result))
    return EXIT_MATCH if result.match else EXIT_MISMATCH


def _add_if_absent(parser: argparse.ArgumentParser, flag: str, **kwargs: Any) -> None:
    # The statestore command may already give every subcommand --url and --json.
    with contextlib.suppress(argparse.ArgumentError):
        parser.add_argument(flag, **kwargs)


def _options(args: argparse.Namespace) -> DemoOptions:
    from .job import DemoOptions  # noqa: PLC0415
    from .stream import StreamConfig  # noqa: PLC0415

    if args.sensors < 1:
        raise ValueError("--sensors must be at least 1")
    if args.events < 0:
        raise ValueError("--events must not be negative")
    minutes = round(args.hours * 60) if math.isfinite(args.hours) else 0
    if minutes < 1:
        raise ValueError("--hours must cover at least one minute")
    stream = StreamConfig(seed=args.seed, sensors=args.sensors, events=args.events, minutes=minutes)
    crash_at: int | None = None
    if not args.no_crash:
        fraction = args.crash_at
        if fraction is None:
            fraction = random.Random(f"crash/{args.seed}").uniform(*RANDOM_CRASH)  # noqa: S311
        if not 0 <= fraction < 1:
            raise ValueError(f"--crash-at must be at least 0 and below 1, not {fraction}")
        crash_at = int(fraction * args.events)
    elif args.crash_at is not None:
        raise ValueError("--crash-at and --no-crash exclude each other")
    url = getattr(args, "url", None)
    if url is not None and url.lower().startswith("memory:"):
        # The job runs in worker processes; a memory store lives and dies with one.
        raise ValueError("the demo needs a store its worker processes share, not memory://")
    return DemoOptions(
        stream=stream,
        url=url,
        run_id=args.run_id or f"demo-{secrets.token_hex(4)}",
        crash_at=crash_at,
        fault=args.fault or "none",
    )


class _Progress:
    """A rich progress bar per phase, on stderr, only when stderr is a terminal."""

    LABELS: ClassVar[dict[str, str]] = {
        "run": "running the job",
        "resume": "resumed after the crash",
        "reference": "reference run, no storage",
    }

    def __init__(self, total: int) -> None:
        from rich.console import Console  # noqa: PLC0415
        from rich.progress import (  # noqa: PLC0415
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TaskID,
            TextColumn,
            TimeElapsedColumn,
        )

        console = Console(stderr=True)
        self._total = total
        self._tasks: dict[str, TaskID] = {}
        self._progress = Progress(
            TextColumn("{task.description:<26}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
            disable=not console.is_terminal,
        )

    def __enter__(self) -> _Progress:
        self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._progress.stop()

    def update(self, phase: str, position: int) -> None:
        """Show ``position`` readings done in ``phase``."""
        if phase not in self._tasks:
            if phase == "resume" and "run" in self._tasks:
                self._progress.update(self._tasks["run"], description="killed with SIGKILL")
            self._tasks[phase] = self._progress.add_task(
                self.LABELS.get(phase, phase), total=self._total or 1
            )
        self._progress.update(self._tasks[phase], completed=position)
