"""Maintenance commands: verify, prune, delete, compact."""

from __future__ import annotations

import argparse
import dataclasses
import sys

from .. import ops
from ..storage import redact_url
from ._common import EXIT_DAMAGE, EXIT_ERROR, EXIT_OK, EXIT_USAGE, CliError, Commands, open_store
from .output import Output, format_size

__all__ = ["register"]


def register(commands: Commands) -> None:
    """Add verify, prune, delete and compact."""
    parser = commands.add(
        "verify",
        "check every checksum and decode every state; exit 3 when anything is damaged",
        "statestore verify                # every run\nstatestore verify sensor-fleet",
        verify,
    )
    parser.add_argument("run", metavar="RUN", nargs="?", help="the run id (all runs if omitted)")
    parser = commands.add(
        "prune",
        "delete all but the newest N savepoints of a run (or of every run)",
        "statestore prune sensor-fleet --keep 3 --dry-run\nstatestore prune --all --keep 1",
        prune,
        description="Delete all but the newest N savepoints of a run (or of every run with "
        "--all). --keep 0 deletes every savepoint, so like `delete` it asks first on a "
        "terminal and otherwise refuses unless --yes; --dry-run never asks.",
    )
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("run", metavar="RUN", nargs="?", help="the run id")
    which.add_argument("--all", action="store_true", help="prune every run")
    parser.add_argument(
        "--keep", metavar="N", type=int, required=True, help="how many newest savepoints stay"
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="only show what would go and the space it frees"
    )
    parser.add_argument(
        "--yes", "-y", action="store_true", help="do not ask before --keep 0 deletes everything"
    )
    parser = commands.add(
        "delete",
        "delete a run and all its savepoints (asks first unless --yes)",
        "statestore delete sensor-fleet --yes",
        delete,
        description="Delete a run and all its savepoints. On a terminal it asks for "
        "confirmation; otherwise (a script, a pipe) it refuses unless --yes is given.",
    )
    parser.add_argument("run", metavar="RUN", help="the run id")
    parser.add_argument("--yes", "-y", action="store_true", help="do not ask for confirmation")
    commands.add(
        "compact",
        "give space freed by deleted savepoints back to the operating system",
        "statestore compact --url sqlite:///statestore.db",
        compact,
        description="Give space freed by deleted savepoints back to the operating system "
        "(SQLite: VACUUM and a WAL checkpoint; file store: remove leftovers of crashed "
        "writes; PostgreSQL: VACUUM).",
    )


def verify(args: argparse.Namespace, out: Output) -> int:
    """``statestore verify [RUN]``."""
    with open_store(args.url) as storage, out.progress("verifying") as progress:
        report = ops.verify(storage, args.run, progress=progress)
    if args.json:
        out.json(
            {
                "ok": report.ok,
                "runs": report.runs,
                "savepoints": report.savepoints,
                "undecoded": report.undecoded,
                "damage": [dataclasses.asdict(d) for d in report.damage],
            }
        )
        return EXIT_OK if report.ok else EXIT_DAMAGE
    if report.damage:
        out.table(
            ["run", "savepoint", "damage"],
            [
                [d.run_id, "(listing)" if d.timestamp is None else str(d.timestamp), d.error]
                for d in report.damage
            ],
        )
    if report.undecoded:
        out.line(
            f"{report.undecoded} savepoint(s) written with another codec (e.g. pickle): "
            "checksums verified, states not decoded"
        )
    checked = f"{report.savepoints} savepoint(s) in {report.runs} run(s)"
    if report.ok:
        out.line(f"ok: {checked} verified in {redact_url(args.url)}")
    else:
        out.line(
            f"DAMAGED: {len(report.damage)} damaged; {checked} checked in {redact_url(args.url)}"
        )
    return EXIT_OK if report.ok else EXIT_DAMAGE


def prune(args: argparse.Namespace, out: Output) -> int:
    """``statestore prune RUN --keep N`` / ``prune --all --keep N`` [--dry-run]."""
    if args.keep < 0:
        raise CliError("--keep must be >= 0", EXIT_USAGE)
    with open_store(args.url) as storage:
        if args.all:
            plans = ops.plan_prune_all(storage, args.keep)
        else:
            plans = [ops.plan_prune(storage, args.run, args.keep)]
        if args.keep == 0 and not args.dry_run and not args.yes:
            _confirm_prune_everything(args, out, plans)
        if not args.dry_run:
            for plan in plans:
                if plan.delete:
                    ops.apply_prune(storage, plan)
    freed = sum(plan.bytes_freed or 0 for plan in plans)
    deleted = sum(len(plan.delete) for plan in plans)
    if args.json:
        out.json(
            {
                "dry_run": args.dry_run,
                "savepoints": deleted,
                "bytes_freed": freed,
                "runs": [dataclasses.asdict(plan) for plan in plans],
            }
        )
        return EXIT_OK
    out.table(
        ["run", "delete", "keep", "frees", "deleted savepoints"],
        [
            [
                plan.run_id,
                str(len(plan.delete)),
                str(len(plan.keep)),
                format_size(plan.bytes_freed),
                _span(plan.delete),
            ]
            for plan in plans
        ],
        right=["delete", "keep", "frees"],
    )
    if args.dry_run:
        out.line(f"dry run: would delete {deleted} savepoint(s), freeing {format_size(freed)}")
    else:
        out.line(
            f"deleted {deleted} savepoint(s), freed {format_size(freed)} "
            "(run `statestore compact` to give the space back to the operating system)"
        )
    return EXIT_OK


def _confirm_prune_everything(
    args: argparse.Namespace, out: Output, plans: list[ops.PrunePlan]
) -> None:
    """``--keep 0`` empties runs: ask as ``delete`` does (refuse when nobody can answer)."""
    doomed = [plan for plan in plans if plan.delete]
    if not doomed:
        return
    runs = f"run {doomed[0].run_id!r}" if len(doomed) == 1 else f"{len(doomed)} runs"
    count = sum(len(plan.delete) for plan in doomed)
    if not sys.stdin.isatty():
        raise CliError(
            f"refusing to delete every savepoint of {runs} (--keep 0) without --yes "
            "(stdin is not a terminal, so nobody can confirm)",
            EXIT_USAGE,
        )
    question = f"delete every savepoint of {runs} ({count} savepoint(s)) in {redact_url(args.url)}?"
    if not out.confirm(question):
        raise CliError(f"nothing pruned from {runs}", EXIT_ERROR)


def _span(timestamps: list[int]) -> str:
    if not timestamps:
        return "-"
    if len(timestamps) <= 3:
        return ", ".join(str(ts) for ts in timestamps)
    return f"{timestamps[0]} ... {timestamps[-1]}"


def delete(args: argparse.Namespace, out: Output) -> int:
    """``statestore delete RUN [--yes]``."""
    with open_store(args.url) as storage:
        summary = ops.run_summary(storage, args.run)
        if not args.yes:
            if not sys.stdin.isatty():
                raise CliError(
                    f"refusing to delete run {summary.run_id!r} without --yes "
                    "(stdin is not a terminal, so nobody can confirm)",
                    EXIT_USAGE,
                )
            question = (
                f"delete run {summary.run_id!r} ({summary.savepoints} savepoint(s), "
                f"{format_size(summary.size)}) from {redact_url(args.url)}?"
            )
            if not out.confirm(question):
                raise CliError(f"run {summary.run_id!r} not deleted", EXIT_ERROR)
        storage.delete_run(summary.run_id)
    if args.json:
        out.json(
            {"deleted": summary.run_id, "savepoints": summary.savepoints, "size": summary.size}
        )
    else:
        out.line(
            f"deleted run {summary.run_id!r}: {summary.savepoints} savepoint(s), "
            f"{format_size(summary.size)}"
        )
    return EXIT_OK


def compact(args: argparse.Namespace, out: Output) -> int:
    """``statestore compact``."""
    with open_store(args.url) as storage:
        before = storage.disk_usage()
        storage.compact()
        after = storage.disk_usage()
    if args.json:
        out.json({"compacted": redact_url(args.url), "bytes_before": before, "bytes_after": after})
        return EXIT_OK
    sizes = ""
    if before is not None and after is not None:
        sizes = f": {format_size(before)} -> {format_size(after)} on disk"
    out.line(f"compacted {redact_url(args.url)}{sizes}")
    return EXIT_OK
