"""The argument parser: one subcommand per operation, each with an example in its help."""

from __future__ import annotations

import argparse

from .. import __version__
from . import demo, inspect, maintain, serve, transfer
from ._common import DEFAULT_URL, URL_ENV, Commands

__all__ = ["build_parser"]

_DESCRIPTION = """\
See, check, prune, move and repair the savepoints stored by statestore.

Every command works on any store URL: sqlite:///relative.db, sqlite:////absolute.db,
file:///absolute/dir, postgresql://user:pass@host:port/db. --url and --json go after
the command."""

_EPILOG = f"""\
The store is --url, else ${URL_ENV}, else {DEFAULT_URL}.
Exit status: 0 ok, 1 error, 2 usage, 3 damaged data, 4 no such run/savepoint/entity.

example:
  statestore runs --url sqlite:///statestore.db
  statestore verify --json
  statestore prune --all --keep 3 --dry-run"""


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The whole parser; ``command`` is the subcommand about to run (it loads the demo lazily)."""
    parser = argparse.ArgumentParser(
        prog="statestore",
        description=_DESCRIPTION,
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"statestore {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands = Commands(subparsers)
    demo.register(commands, load=command == "demo")
    inspect.register(commands)
    maintain.register(commands)
    transfer.register(commands)
    serve.register(commands)
    return parser
