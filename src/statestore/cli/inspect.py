"""Read commands: runs, savepoints, show, stats."""

from __future__ import annotations

import argparse
import dataclasses

from .. import ops
from ..storage import SQLiteStorage, epoch_ms, redact_url
from ._common import EXIT_NOT_FOUND, EXIT_OK, EXIT_USAGE, CliError, Commands, open_store
from .output import (
    ENTITY_SIZE_COLUMNS,
    Output,
    describe_writer,
    entity_size_rows,
    format_date,
    format_size,
    is_abbreviated,
    to_json,
)

__all__ = ["register"]


def register(commands: Commands) -> None:
    """Add runs, savepoints, show and stats."""
    commands.add(
        "runs",
        "list every run: savepoints, latest timestamp, size",
        "statestore runs --url sqlite:///statestore.db\nstatestore runs --json",
        runs,
    )
    parser = commands.add(
        "savepoints",
        "list the savepoints of a run: timestamp, date, entities, stored size",
        "statestore savepoints sensor-fleet --url sqlite:///statestore.db",
        savepoints,
    )
    parser.add_argument("run", metavar="RUN", help="the run id")
    parser = commands.add(
        "show",
        "print the states of a savepoint (the latest unless --at)",
        "statestore show sensor-fleet\n"
        "statestore show sensor-fleet --at 1714564800000 --entity sensor-7 --full",
        show,
        description="Print the states of a savepoint, readably. Large states are abbreviated "
        "(20 items per container, 200 characters per string, 6 levels) unless --full; "
        "--json always prints them whole.",
    )
    parser.add_argument("run", metavar="RUN", help="the run id")
    parser.add_argument("--at", metavar="TS", type=int, help="the savepoint's timestamp (ms)")
    parser.add_argument(
        "--entity",
        metavar="ID",
        action="append",
        help="only this entity (repeat for several)",
    )
    parser.add_argument("--full", action="store_true", help="never abbreviate states")
    parser = commands.add(
        "stats",
        "sizes: every run, or one run's growth over its savepoints and biggest entities",
        "statestore stats\nstatestore stats sensor-fleet --top 5",
        stats,
    )
    parser.add_argument("run", metavar="RUN", nargs="?", help="the run id (all runs if omitted)")
    parser.add_argument(
        "--top", metavar="N", type=int, default=10, help="how many entities to list (10)"
    )


def runs(args: argparse.Namespace, out: Output) -> int:
    """``statestore runs``."""
    with open_store(args.url) as storage:
        summaries = ops.run_summaries(storage)
    if args.json:
        out.json([dataclasses.asdict(summary) for summary in summaries])
        return EXIT_OK
    if not summaries:
        out.line(f"no runs in {redact_url(args.url)}")
        return EXIT_OK
    rows = [
        [
            s.run_id,
            "?" if s.savepoints is None else str(s.savepoints),
            "-" if s.latest_timestamp is None else str(s.latest_timestamp),
            format_date(s.latest_timestamp),
            format_size(s.size),
        ]
        for s in summaries
    ]
    out.table(
        ["run", "savepoints", "latest", "date (UTC)", "size"],
        rows,
        right=["savepoints", "latest", "size"],
    )
    total = sum(s.size or 0 for s in summaries)
    out.line(f"{len(summaries)} run(s), {format_size(total)} in {redact_url(args.url)}")
    for s in summaries:
        if s.damaged:
            out.line(f"damaged: {s.damaged} (run `statestore verify {s.run_id}`)")
    return EXIT_OK


def savepoints(args: argparse.Namespace, out: Output) -> int:
    """``statestore savepoints RUN``."""
    with open_store(args.url) as storage:
        run_id = ops.require_run(storage, args.run)
        rows = storage.list_savepoints(run_id)
    if args.json:
        out.json([row._asdict() for row in rows])
        return EXIT_OK
    if not rows:
        out.line(f"run {run_id!r} has no savepoint")
        return EXIT_OK
    out.table(
        ["timestamp", "date (UTC)", "entities", "stored"],
        [
            [str(r.timestamp), format_date(r.timestamp), str(r.entity_count), format_size(r.size)]
            for r in rows
        ],
        right=["timestamp", "entities", "stored"],
    )
    out.line(
        f"{len(rows)} savepoint(s); 'stored' is what each added to the store "
        "(an incremental savepoint stores only the states that changed)"
    )
    return EXIT_OK


def show(args: argparse.Namespace, out: Output) -> int:
    """``statestore show RUN [--at TS] [--entity ID]``."""
    with open_store(args.url) as storage:
        savepoint = ops.load_savepoint(storage, args.run, args.at)
    entities = savepoint.entities
    version_of = dict(zip([e for e, _ in entities], savepoint.versions, strict=True))
    if args.entity:
        known = dict(entities)
        missing = [entity_id for entity_id in args.entity if entity_id not in known]
        if missing:
            raise CliError(
                f"run {args.run!r}: savepoint {savepoint.timestamp} has no entity {missing[0]!r}",
                EXIT_NOT_FOUND,
            )
        entities = [(entity_id, known[entity_id]) for entity_id in dict.fromkeys(args.entity)]
    if args.json:
        out.json(
            {
                "run_id": args.run,
                "timestamp": savepoint.timestamp,
                "entities": [
                    {"id": e, "state_version": version_of[e], "state": to_json(state)}
                    for e, state in entities
                ],
            }
        )
        return EXIT_OK
    versions = sorted({version_of[e] for e, _ in entities})
    out.line(
        f"run {args.run!r}, savepoint {savepoint.timestamp} "
        f"({format_date(savepoint.timestamp)} UTC), {len(entities)} "
        f"entit{'y' if len(entities) == 1 else 'ies'}, state version "
        f"{', '.join(map(str, versions)) or '-'}"
    )
    shortened = False
    for entity_id, state in entities:
        out.line()
        label = (
            f"{entity_id}:"
            if len(versions) <= 1
            else f"{entity_id} (version {version_of[entity_id]}):"
        )
        out.line(label)
        out.state(state, full=args.full)
        shortened = shortened or (not args.full and is_abbreviated(state))
    if shortened:
        out.line()
        out.line("(large states abbreviated; --full shows them whole)")
    return EXIT_OK


def stats(args: argparse.Namespace, out: Output) -> int:
    """``statestore stats [RUN]``."""
    if args.top < 0:
        raise CliError("--top must be >= 0", EXIT_USAGE)
    with open_store(args.url) as storage:
        if args.run is None:
            summaries = ops.run_summaries(storage)
            # Which SQLite a store runs on decides whether it has the WAL-reset bug.
            library = storage.sqlite_version if isinstance(storage, SQLiteStorage) else None
            return _store_stats(args, out, summaries, library)
        run_stats = ops.run_stats(storage, args.run, top=args.top)
    if args.json:
        writer = run_stats.writer
        out.json({**dataclasses.asdict(run_stats), "writer": writer and writer._asdict()})
        return EXIT_OK
    latest = run_stats.savepoints[-1] if run_stats.savepoints else None
    out.line(
        f"run {run_stats.run_id!r}: {len(run_stats.savepoints)} savepoint(s), "
        f"{format_size(run_stats.size)} stored, latest savepoint "
        f"{run_stats.entity_count} entities, "
        f"{format_size(latest.state_bytes if latest else 0)} of states"
    )
    holder = describe_writer(run_stats.writer, epoch_ms(), run_stats.writer_problem)
    out.line(f"writer: {holder}")
    if not run_stats.savepoints:
        return EXIT_OK
    out.line()
    out.line("growth over the savepoints:")
    out.table(
        ["timestamp", "date (UTC)", "entities", "states", "growth", "stored"],
        [
            [
                str(s.timestamp),
                format_date(s.timestamp),
                str(s.entity_count),
                format_size(s.state_bytes),
                "-" if s.growth is None else ("+" if s.growth >= 0 else "") + format_size(s.growth),
                format_size(s.size),
            ]
            for s in run_stats.savepoints
        ],
        right=["timestamp", "entities", "states", "growth", "stored"],
    )
    if run_stats.biggest:
        out.line()
        out.line(f"biggest entities (latest savepoint, top {len(run_stats.biggest)}):")
        out.table(
            ENTITY_SIZE_COLUMNS,
            entity_size_rows(run_stats.biggest),
            right=["encoded", "stored"],
        )
    return EXIT_OK


def _store_stats(
    args: argparse.Namespace,
    out: Output,
    summaries: list[ops.RunSummary],
    sqlite_library: str | None,
) -> int:
    total = sum(s.size or 0 for s in summaries)
    count = sum(s.savepoints or 0 for s in summaries)
    if args.json:
        out.json(
            {
                "runs": [dataclasses.asdict(s) for s in summaries],
                "savepoints": count,
                "size": total,
            }
        )
        return EXIT_OK
    out.line(
        f"{len(summaries)} run(s), {count} savepoint(s), {format_size(total)} of savepoint "
        f"data in {redact_url(args.url)}"
    )
    ranked = sorted(summaries, key=lambda s: (-(s.size or 0), s.run_id))
    if ranked:
        out.table(
            ["run", "savepoints", "size", "share"],
            [
                [
                    s.run_id,
                    "?" if s.savepoints is None else str(s.savepoints),
                    format_size(s.size),
                    f"{100 * (s.size or 0) / total:.0f}%" if total else "-",
                ]
                for s in ranked[: args.top]
            ],
            right=["savepoints", "size", "share"],
        )
    if sqlite_library is not None:
        out.line(f"SQLite library: {sqlite_library}")
    return EXIT_OK
