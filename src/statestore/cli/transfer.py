"""Moving runs: export, import, copy."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import sys

from .. import ops
from ..storage import redact_url
from ._common import EXIT_OK, EXIT_USAGE, CliError, Commands, open_store
from .output import Output, format_size

__all__ = ["register"]


def register(commands: Commands) -> None:
    """Add export, import and copy."""
    parser = commands.add(
        "export",
        "write a run to an archive file that any backend can import",
        "statestore export sensor-fleet sensor-fleet.ssa --url sqlite:///statestore.db",
        export,
        description="Write every savepoint of a run to one archive file: the encoded states "
        "exactly as stored, every frame checksummed (SHA-256). Refuses to overwrite FILE "
        "unless --force, and never replaces anything but a regular file (a device, "
        "directory, FIFO or symlink is refused); the file appears only once complete. "
        "FILE '-' writes the archive to standard output.",
    )
    parser.add_argument("run", metavar="RUN", help="the run id")
    parser.add_argument("file", metavar="FILE", help="the archive to write ('-': standard output)")
    parser.add_argument(
        "--force", action="store_true", help="overwrite FILE if it is an existing regular file"
    )
    parser = commands.add(
        "import",
        "import a run from an archive file (the run keeps its id)",
        "statestore import sensor-fleet.ssa --url postgresql://app@db.example/states",
        import_,
        description="Import a run from an archive made by `statestore export`; the run keeps "
        "its id. The whole archive is checked before anything is written. A run that already "
        "exists is refused unless --replace, which makes it exactly the archive's run.",
    )
    parser.add_argument("file", metavar="FILE", help="the archive to read")
    parser.add_argument(
        "--replace", action="store_true", help="replace the run if the store already has it"
    )
    parser = commands.add(
        "copy",
        "copy runs from one store to another, verifying what it wrote",
        "statestore copy sqlite:///statestore.db postgresql://app@db.example/states\n"
        "statestore copy sqlite:///a.db file:///var/lib/states --run sensor-fleet",
        copy,
        url=False,
        description="Copy runs (every run unless --run) from SRC_URL to DST_URL. Each "
        "savepoint is read back from the destination and compared byte for byte. A run "
        "the destination already has is refused unless --replace.",
    )
    parser.add_argument("source", metavar="SRC_URL", help="the store to copy from")
    parser.add_argument("destination", metavar="DST_URL", help="the store to copy to")
    parser.add_argument(
        "--run", metavar="RUN", action="append", help="only this run (repeat for several)"
    )
    parser.add_argument(
        "--replace", action="store_true", help="replace runs the destination already has"
    )


def export(args: argparse.Namespace, out: Output) -> int:
    """``statestore export RUN FILE`` (``-``: standard output)."""
    if args.file == "-":
        return _export_to_stdout(args, out)
    with open_store(args.url) as storage, out.progress(f"exporting {args.run}") as progress:
        result = ops.export_run(
            storage, args.run, args.file, overwrite=args.force, progress=progress
        )
    size = os.path.getsize(args.file)
    if args.json:
        out.json({**dataclasses.asdict(result), "file": args.file, "file_bytes": size})
    else:
        out.line(
            f"exported run {result.run_id!r}: {result.savepoints} savepoint(s), "
            f"{format_size(result.state_bytes)} of states, to {args.file} ({format_size(size)})"
            f"{_upto(result)}"
        )
        _note_skipped(out, result)
    return EXIT_OK


def _export_to_stdout(args: argparse.Namespace, out: Output) -> int:
    """The archive goes to stdout, so what was exported is said on stderr (never --json)."""
    if args.json:
        raise CliError("--json cannot be used with FILE '-' (the archive is stdout)", EXIT_USAGE)
    if sys.stdout.isatty():
        raise CliError(
            "refusing to write an archive to a terminal; redirect stdout (or name a FILE)",
            EXIT_USAGE,
        )
    with open_store(args.url) as storage:
        result = ops.export_run(storage, args.run, sys.stdout.buffer)
    sys.stdout.flush()
    print(
        f"exported run {result.run_id!r}: {result.savepoints} savepoint(s), "
        f"{format_size(result.state_bytes)} of states, to standard output{_upto(result)}",
        file=sys.stderr,
    )
    return EXIT_OK


def _upto(result: ops.TransferResult) -> str:
    """Which savepoint the moved run ends with: the source's latest when it was read."""
    return "" if result.latest is None else f", latest {result.latest}"


def _note_skipped(out: Output, result: ops.TransferResult) -> None:
    if result.skipped:
        out.line(
            f"note: run {result.run_id!r}: {result.skipped} older savepoint(s) were pruned in "
            "the source while it was read and are not included"
        )


def import_(args: argparse.Namespace, out: Output) -> int:
    """``statestore import FILE``."""
    if not os.path.exists(args.file):
        raise CliError(f"no archive at {args.file}")
    with open_store(args.url, create=True) as storage, out.progress("importing") as progress:
        result = ops.import_run(storage, args.file, replace=args.replace, progress=progress)
    if args.json:  # an import never skips: its result is the whole archive
        out.json({k: getattr(result, k) for k in ("run_id", "savepoints", "state_bytes")})
    else:
        out.line(
            f"imported run {result.run_id!r}: {result.savepoints} savepoint(s), "
            f"{format_size(result.state_bytes)} of states, into {redact_url(args.url)} (verified)"
        )
    return EXIT_OK


def copy(args: argparse.Namespace, out: Output) -> int:
    """``statestore copy SRC_URL DST_URL [--run RUN]``."""
    if args.source == args.destination:
        raise CliError("source and destination are the same store")
    with contextlib.ExitStack() as stack:
        source = stack.enter_context(open_store(args.source))
        destination = stack.enter_context(open_store(args.destination, create=True))
        progress = stack.enter_context(out.progress("copying"))
        results = ops.copy_runs(
            source, destination, args.run, replace=args.replace, progress=progress
        )
    if args.json:
        out.json([dataclasses.asdict(result) for result in results])
        return EXIT_OK
    for result in results:
        out.line(
            f"copied run {result.run_id!r}: {result.savepoints} savepoint(s), "
            f"{format_size(result.state_bytes)} of states{_upto(result)}"
        )
        _note_skipped(out, result)
    total = sum(result.savepoints for result in results)
    out.line(
        f"{len(results)} run(s), {total} savepoint(s) copied from {redact_url(args.source)} "
        f"to {redact_url(args.destination)}, each read back and verified"
    )
    return EXIT_OK
