"""What each entity has saved for savepoints not yet persisted: pure bookkeeping, no I/O.

An entity's save fills every grid point from the one after its last fill up to the
save's timestamp with the same encoded bytes. Rather than one entry per savepoint (a
jump over a million grid points would cost a million entries), each entity keeps
*segments*: ``(upto, data)`` means "the grid points after the previous segment's
``upto`` and up to this ``upto`` hold ``data``". The savepoints every entity has
filled are the grid points up to the smallest ``filled_to``: the *frontier*.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence

__all__ = ["Fills"]


class Fills:
    """Fills of the savepoints after ``done`` by the entities ``order`` (in that order)."""

    def __init__(self, order: Sequence[str], done: int) -> None:
        #: Entity ids in registration order: the order of every persisted savepoint.
        self.order = list(order)
        #: Every savepoint at or before ``done`` is finished: persisted, skipped or
        #: before this run's start.
        self.done = done
        self._filled_to = dict.fromkeys(self.order, done)
        self._segments: dict[str, deque[tuple[int, bytes]]] = {
            entity_id: deque() for entity_id in self.order
        }
        # The frontier and how many entities sit on it, kept up to date so a save costs
        # O(1) rather than a min() over every entity (O(n^2) per savepoint otherwise).
        self._frontier = done
        self._at_frontier = len(self.order)

    def __contains__(self, entity_id: object) -> bool:
        return isinstance(entity_id, str) and entity_id in self._filled_to

    def filled_to(self, entity_id: str) -> int:
        """The highest savepoint the entity has filled (``done`` or below when none)."""
        return self._filled_to[entity_id]

    def fill(self, entity_id: str, upto: int, data: bytes) -> bool:
        """Fill the entity's unfilled savepoints up to ``upto``; False if none was unfilled.

        A savepoint the entity filled already keeps what it holds: the first save at or
        after a savepoint is the state at its boundary.
        """
        if upto <= self._filled_to[entity_id]:
            return False
        previous = self._filled_to[entity_id]
        self._segments[entity_id].append((upto, data))
        self._filled_to[entity_id] = upto
        if previous == self._frontier:
            self._at_frontier -= 1
            if not self._at_frontier:  # the last one behind moved: the frontier moves
                self._frontier = min(self._filled_to.values())
                self._at_frontier = sum(
                    1 for filled in self._filled_to.values() if filled == self._frontier
                )
        return True

    def frontier(self) -> int:
        """The highest timestamp up to which every entity has filled every savepoint.

        A run without entities never completes a savepoint: its frontier stays ``done``.
        """
        return self._frontier

    def states_at(self, timestamp: int) -> list[tuple[str, bytes]]:
        """Every entity's encoded state for the savepoint at ``timestamp``.

        ``timestamp`` must be above ``done`` and at or below the frontier.
        """
        entities = []
        for entity_id in self.order:
            segments = self._segments[entity_id]
            while segments[0][0] < timestamp:  # wholly before it: finished already
                segments.popleft()
            entities.append((entity_id, segments[0][1]))
        return entities

    def finish(self, timestamp: int) -> None:
        """Mark every savepoint up to ``timestamp`` finished and forget what only they held."""
        self.done = max(self.done, timestamp)
        for segments in self._segments.values():
            while segments and segments[0][0] <= self.done:
                segments.popleft()
