"""``main``: parse, run one command, turn every failure into one line and an exit code."""

from __future__ import annotations

import os
import re
import sys

from ..errors import CorruptSavepointError, NoSavepointError, StateStoreError
from ..storage import redact_url
from ._common import (
    EXIT_DAMAGE,
    EXIT_ERROR,
    EXIT_INTERRUPTED,
    EXIT_NOT_FOUND,
    EXIT_OK,
    EXIT_USAGE,
    CliError,
)
from ._parser import build_parser
from .output import Output

__all__ = ["main"]

#: Set to any value to let an unexpected exception show its traceback.
DEBUG_ENV = "STATESTORE_DEBUG"

_URL = re.compile(r"[a-zA-Z][a-zA-Z0-9+.-]*://[^\s'\"]+")


def main(argv: list[str] | None = None) -> int:
    """Run ``statestore`` with ``argv`` (default ``sys.argv[1:]``); returns the exit status."""
    argv = sys.argv[1:] if argv is None else list(argv)
    command = argv[0] if argv else None
    parser = build_parser(command)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, or a usage error argparse has printed
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    out = Output()
    try:
        code: int = args.handler(args, out)
    except CliError as exc:
        return _fail(str(exc), exc.code)
    except CorruptSavepointError as exc:
        return _fail(str(exc), EXIT_DAMAGE)
    except NoSavepointError as exc:
        url = getattr(args, "url", None)
        where = f" ({redact_url(url)})" if isinstance(url, str) else ""
        return _fail(f"{exc}{where}", EXIT_NOT_FOUND)
    except StateStoreError as exc:
        return _fail(str(exc), EXIT_ERROR)
    except BrokenPipeError:
        # The reader went away (`statestore runs | head`): not an error worth a word.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_OK
    except OSError as exc:
        where = f" ({exc.filename})" if exc.filename else ""
        return _fail(f"{exc.strerror or exc}{where}", EXIT_ERROR)
    except KeyboardInterrupt:
        return _fail("interrupted", EXIT_INTERRUPTED)
    except Exception as exc:  # a bug: still one line, unless asked for the traceback
        if os.environ.get(DEBUG_ENV):
            raise
        return _fail(
            f"unexpected {type(exc).__name__}: {exc} (a bug: please report it; "
            f"{DEBUG_ENV}=1 shows the traceback)",
            EXIT_ERROR,
        )
    return code


def _fail(message: str, code: int) -> int:
    """Print one line on stderr: passwords redacted, newlines folded."""
    message = _URL.sub(lambda match: redact_url(match.group(0)), message)
    message = " ".join(message.split())
    sys.stderr.write(f"statestore: error: {message}\n")
    sys.stderr.flush()
    return code
