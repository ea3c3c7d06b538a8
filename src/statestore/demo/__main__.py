"""``python -m statestore.demo``: the demo without the ``statestore`` command."""

from __future__ import annotations

import argparse
import sys

from . import add_arguments, run


def main(argv: list[str] | None = None) -> int:
    """Parse the demo's options and run it."""
    parser = argparse.ArgumentParser(
        prog="python -m statestore.demo",
        description="A stream job that is killed with SIGKILL, resumes from its latest "
        "savepoint, and proves its result equals an uninterrupted run.",
    )
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
