"""``statestore demo``: delegates to :mod:`statestore.demo`, imported only when asked for."""

from __future__ import annotations

import argparse
import contextlib
import importlib
from types import ModuleType
from typing import cast

from ._common import EXIT_ERROR, CliError, Commands, add_url_option
from .output import Output

__all__ = ["register"]


def register(commands: Commands, *, load: bool) -> None:
    """Add ``demo``; its own arguments are added only when ``load`` (demo is the command),
    so every other command works without (and without paying for) the demo module.
    """
    parser = commands.add(
        "demo",
        "run a stream job that is killed part way, resumes, and checks the result",
        "statestore demo\nstatestore demo --sensors 200 --events 20000 --crash-at 0.5",
        demo,
        url=False,
        json=False,
    )
    if not load:
        return
    module = _demo_module()
    if module is not None:
        module.add_arguments(parser)
    # --url like every command, unless the demo defines its own.
    with contextlib.suppress(argparse.ArgumentError):
        add_url_option(parser)


def _demo_module() -> ModuleType | None:
    try:
        return importlib.import_module("statestore.demo")
    except ModuleNotFoundError as exc:
        if exc.name != "statestore.demo":
            raise  # the demo exists but something it needs is missing: say so
        return None


def demo(args: argparse.Namespace, out: Output) -> int:
    """``statestore demo``."""
    module = _demo_module()
    if module is None:
        raise CliError("the demo is not available in this installation", EXIT_ERROR)
    return cast(int, module.run(args))
