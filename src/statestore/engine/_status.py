"""How far a run's savepoints stand: :class:`StoreStatus`, and the warning when one stalls."""

from __future__ import annotations

import logging
import weakref
from typing import NamedTuple

from .. import observe
from ._fills import Fills

__all__ = ["STALL_WARNING_SAVEPOINTS", "StallWatch", "StoreStatus"]

_log = logging.getLogger("statestore")

#: Savepoints that may wait for the slowest entity before the store warns. Ten grid
#: points is well past the jitter of entities acknowledged one by one (they are never
#: more than one or two apart) and still early enough to matter: the savepoints waiting
#: are memory held and work a crash would redo.
STALL_WARNING_SAVEPOINTS = 10

#: How many of the slowest entities a warning or a status names.
_NAMED = 10


class StoreStatus(NamedTuple):
    """What :meth:`StateStore.status` reports.

    * ``pending_savepoints``: savepoints some entity has filled that are not persisted
      yet (waiting for the slowest entities, or for a write that failed to be retried).
    * ``slowest``: while savepoints are pending, the entities holding the next one back
      (at most ten, in savepoint order); empty otherwise.
    * ``slowest_filled``: the highest savepoint every entity has filled, or ``None``
      before the store is started.
    * ``last_persisted``: the timestamp of the last savepoint this store persisted or
      resumed from, or ``None``.
    """

    pending_savepoints: int
    slowest: tuple[str, ...]
    slowest_filled: int | None
    last_persisted: int | None


class StallWatch:
    """Warns (logger ``"statestore"``) when savepoints pile up behind the slowest entities.

    A warning at :data:`STALL_WARNING_SAVEPOINTS` waiting savepoints, then each time the
    count doubles (a long stall is told about a few times, not once per savepoint), and
    the count starts over once the stall clears.
    """

    def __init__(self, run_id: str, owner: object) -> None:
        self._run_id = run_id
        self._owner = weakref.ref(owner)
        self._warn_at = STALL_WARNING_SAVEPOINTS
        self._reported = (0, 0)

    def check(self, fills: Fills, schedule: int) -> None:
        """Warn if the savepoints waiting for the frontier reached the next threshold, and
        report the figures to :mod:`statestore.observe` when they changed."""
        waiting = (fills.reached - fills.frontier()) // schedule  # O(1): at every ack
        figures = (waiting, fills.at_frontier() if waiting else 0)
        if figures != self._reported:
            self._reported = figures
            owner = self._owner()
            if owner is not None:
                observe.report_engine_status(owner, *figures)
        if waiting < self._warn_at:
            if waiting < STALL_WARNING_SAVEPOINTS:
                self._warn_at = STALL_WARNING_SAVEPOINTS
            return
        self._warn_at = waiting * 2
        slowest = fills.slowest()
        named = ", ".join(map(repr, slowest[:_NAMED]))
        more = f" and {len(slowest) - _NAMED} more" if len(slowest) > _NAMED else ""
        _log.warning(
            "run %r: %d savepoints (up to %d) wait for entity %s%s, which filled none after "
            "%d; acknowledge it (entity.ack_processed_time or the store's watermark, "
            "store.ack_processed_time) or remove_entity() it",
            self._run_id,
            waiting,
            fills.reached,
            named,
            more,
            fills.frontier(),
        )


def status(fills: Fills | None, schedule: int | None, last_persisted: int | None) -> StoreStatus:
    """The status of a store with these fills (``None`` before it is started)."""
    if fills is None:
        return StoreStatus(0, (), None, last_persisted)
    pending = 0 if schedule is None else max(fills.reached - fills.done, 0) // schedule
    slowest = tuple(fills.slowest()[:_NAMED]) if pending else ()
    return StoreStatus(pending, slowest, fills.frontier(), last_persisted)
