"""Pausing Python's cyclic garbage collector around bulk decodes.

Decoding a savepoint allocates one container per state and more inside it; each
allocation counts towards the collector's thresholds, so a large load triggers many
collections that walk the growing, entirely live result again and again (measured at
a quarter of a 10,000-state load and two thirds of a 100,000-state one). What a
decode builds is the live result, not garbage, so pausing the collector for the
duration loses nothing; any cycle left over is collected once the collector is back on.

``gc.disable()`` is process-wide, so :func:`paused` nests and counts: only the
outermost pause switches the collector off, and only if it was on; its end switches it
back on, so a caller who disabled the collector themselves finds it disabled still.
"""

from __future__ import annotations

import contextlib
import gc
import threading
from collections.abc import Iterator

__all__ = ["paused"]


class _Pauses:
    """How many pauses are open in the process, and whether the first found it on."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.depth = 0
        self.was_enabled = False

    def enter(self) -> None:
        with self.lock:
            if self.depth == 0:
                self.was_enabled = gc.isenabled()
                gc.disable()
            self.depth += 1

    def leave(self) -> None:
        with self.lock:
            self.depth -= 1
            if self.depth == 0 and self.was_enabled:
                gc.enable()


_PAUSES = _Pauses()


@contextlib.contextmanager
def paused() -> Iterator[None]:
    """Run the block with the cyclic collector off, then leave it as it was."""
    _PAUSES.enter()
    try:
        yield
    finally:
        _PAUSES.leave()
