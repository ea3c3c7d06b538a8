"""What every command module shares: exit codes, the command registry, opening a store."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable

from ..storage import Storage, missing_store, open_storage, redact_url
from .output import Output

__all__ = [
    "DEFAULT_URL",
    "EXIT_DAMAGE",
    "EXIT_ERROR",
    "EXIT_INTERRUPTED",
    "EXIT_NOT_FOUND",
    "EXIT_OK",
    "EXIT_USAGE",
    "URL_ENV",
    "CliError",
    "Commands",
    "Handler",
    "add_url_option",
    "open_store",
]

# Exit codes (documented in docs/cli.md); scripts may rely on them.
EXIT_OK = 0
EXIT_ERROR = 1  # the store failed, a bad URL, an operation refused
EXIT_USAGE = 2  # bad arguments (argparse's own code), a deletion without --yes off a terminal
EXIT_DAMAGE = 3  # damaged data: verify found damage, or a command read a damaged savepoint
EXIT_NOT_FOUND = 4  # no such run, savepoint or entity
EXIT_INTERRUPTED = 130  # Ctrl-C, as shells report SIGINT

DEFAULT_URL = "sqlite:///statestore.db"
URL_ENV = "STATESTORE_URL"

Handler = Callable[[argparse.Namespace, Output], int]


class CliError(Exception):
    """A one-line failure with its exit code, raised by a command."""

    def __init__(self, message: str, code: int = EXIT_ERROR) -> None:
        super().__init__(message)
        self.code = code


class Commands:
    """Adds subcommands that share the formatter, the common options and an example epilog."""

    def __init__(self, subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
        self._subparsers = subparsers

    def add(
        self,
        name: str,
        summary: str,
        example: str,
        handler: Handler,
        *,
        url: bool = True,
        json: bool = True,
        description: str | None = None,
    ) -> argparse.ArgumentParser:
        """One subcommand; ``example`` (shell lines) is shown by ``--help``.

        ``url`` adds ``--url`` and ``json`` adds ``--json`` (a command that defines its
        own, like ``demo``, turns them off). Add the command's own arguments to the
        parser returned.
        """
        parser = self._subparsers.add_parser(
            name,
            help=summary,
            description=description or summary,
            epilog="example:\n" + "\n".join(f"  {line}" for line in example.splitlines()),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        parser.set_defaults(handler=handler)
        if url:
            add_url_option(parser)
        if json:
            parser.add_argument(
                "--json", action="store_true", help="print JSON (timestamps as integers)"
            )
        return parser


def add_url_option(parser: argparse.ArgumentParser) -> None:
    """``--url``, defaulting to $STATESTORE_URL, else sqlite:///statestore.db."""
    parser.add_argument(
        "--url",
        default=os.environ.get(URL_ENV) or DEFAULT_URL,
        help=f"the store (default: ${URL_ENV}, else {DEFAULT_URL})",
    )


def open_store(url: str, *, create: bool = False) -> Storage:
    """Open the store a URL names; unless ``create``, a missing SQLite file or file store
    directory is an error instead of a new, empty store (a typo must not look like "no runs").
    """
    if not create:
        missing = missing_store(url)
        if missing is not None:
            raise CliError(f"no store at {redact_url(url)}: {missing} does not exist")
    return open_storage(url)
