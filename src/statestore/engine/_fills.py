"""What each entity has saved for savepoints not yet persisted: pure bookkeeping, no I/O.

Each entity of a run is a *member* for a span of savepoints: from the one after it joined
(the start, a resume, or :meth:`StateStore.add_entity`) through the one at or before it
left (:meth:`StateStore.remove_entity`), so every savepoint holds exactly its members.

An entity's save fills every grid point from the one after its last fill up to the
save's timestamp with the same encoded bytes. Rather than one entry per savepoint (a
jump over a million grid points would cost a million entries), each member keeps
*segments*: ``(upto, data)`` means "the grid points after the previous segment's
``upto`` and up to this ``upto`` hold ``data``". The savepoints every member has
filled are the grid points up to the smallest fill: the *frontier*.

The watermark (:meth:`StateStore.ack_processed_time`) usually finds every member
standing at ``done`` and moves all of them to one grid point at once: that fill is kept
as one column of bytes (:meth:`Fills.fill_all`), with no Python work per entity.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence

__all__ = ["Fills"]


class _Member:
    """One entity's span in the run's savepoints and what it filled of them."""

    __slots__ = ("entity_id", "filled", "joined", "left", "segments")

    def __init__(self, entity_id: str, joined: int) -> None:
        self.entity_id = entity_id
        #: It takes part in the savepoints after this one.
        self.joined = joined
        #: The highest savepoint this member has filled, or the one it joined after: it
        #: takes part in no savepoint at or before that. Below ``done`` means ``done``.
        self.filled = joined
        #: The last savepoint it takes part in, once it is removed (``None`` while it stays).
        self.left: int | None = None
        self.segments: deque[tuple[int, bytes]] = deque()


class Fills:
    """Fills of the savepoints after ``done`` by the members, in savepoint order."""

    def __init__(self, order: Sequence[str], done: int) -> None:
        #: Every savepoint at or before ``done`` is finished: persisted, skipped or
        #: before this run's start.
        self.done = done
        self._order = [_Member(entity_id, done) for entity_id in order]
        self._live = {member.entity_id: member for member in self._order}
        self._ids: list[str] | None = None  # the ids in order, while membership holds
        # The frontier and how many live members stand on it, kept up to date so a save
        # costs O(1) rather than a min() over every member (O(n^2) per savepoint otherwise).
        self._frontier = done
        self._at_frontier = len(self._order)
        #: The highest savepoint any member has filled or joined after.
        self.reached = done
        # A fill of every member up to one grid point, as one column (see fill_all).
        self._column: tuple[int, Sequence[bytes]] | None = None
        # Removed members' last savepoints, by id, while those are not all finished.
        self._pending_left: dict[str, int] = {}

    def __contains__(self, entity_id: object) -> bool:
        return isinstance(entity_id, str) and entity_id in self._live

    def filled_to(self, entity_id: str) -> int:
        """The highest savepoint the entity has filled (``done`` or below when none)."""
        self._spread_column()
        return max(self._live[entity_id].filled, self.done)

    def ids(self) -> list[str]:
        """The members' ids in savepoint order (the ones removed while still pending too)."""
        if self._ids is None:
            self._ids = [member.entity_id for member in self._order]
        return self._ids

    # ---------------------------------------------------------------- filling

    def fill(self, entity_id: str, upto: int, data: bytes) -> bool:
        """Fill the entity's unfilled savepoints up to ``upto``; False if none was unfilled.

        A savepoint the entity filled already keeps what it holds: the first save at or
        after a savepoint is the state at its boundary.
        """
        self._spread_column()
        member = self._live[entity_id]
        previous = max(member.filled, self.done)
        if upto <= previous:
            return False
        member.segments.append((upto, data))
        member.filled = upto
        self.reached = max(self.reached, upto)
        if previous == self._frontier:
            self._at_frontier -= 1
            if not self._at_frontier:  # the last one behind moved: the frontier moves
                self._recount()
        return True

    def aligned(self) -> bool:
        """Whether every member stands at ``done``: no pending fill, join or removal."""
        return self.reached <= self.done and not self._pending_left

    def fill_all(self, upto: int, data: Sequence[bytes]) -> None:
        """Fill every member up to ``upto``, ``data`` in savepoint order; needs :meth:`aligned`.

        Kept as one column until it is persisted: no Python work per entity.
        """
        assert self.aligned()
        assert upto > self.done
        if len(self._order) != len(self._live):  # members removed at ``done``: gone now
            self._order = [m for m in self._order if m.left is None]
            self._ids = None
        assert len(data) == len(self._order)
        if not self._order:
            return
        self._column = (upto, data)
        self.reached = self._frontier = upto
        self._at_frontier = len(self._order)

    def _spread_column(self) -> None:
        """Turn a pending column into per-member segments, before any per-member change."""
        if self._column is None:
            return
        upto, data = self._column
        self._column = None
        for member, encoded in zip(self._order, data, strict=True):
            member.segments.append((upto, encoded))
            member.filled = upto

    # ---------------------------------------------------------------- membership

    # Both are O(1) (no pass over the members): a job may add or remove entities by
    # the hundred thousand, one call each.

    def add(self, entity_id: str, joined: int) -> None:
        """A new member, taking part in every savepoint after ``joined`` (>= ``done``)."""
        self._spread_column()
        member = _Member(entity_id, joined)
        self._order.append(member)
        had_live = bool(self._live)
        self._live[entity_id] = member
        self._ids = None
        self.reached = max(self.reached, joined)
        if not had_live:
            self._recount()
        elif joined < self._frontier:
            self._frontier, self._at_frontier = joined, 1
        elif joined == self._frontier:
            self._at_frontier += 1

    def remove(self, entity_id: str, left: int) -> None:
        """The member takes part in no savepoint after ``left``; it must have filled up to it.

        It stays among the members until every savepoint up to ``left`` is finished.
        """
        self._spread_column()
        member = self._live.pop(entity_id)
        member.left = left
        if left > self.done:
            self._pending_left[entity_id] = left
        self._ids = None
        if not self._live:
            self._recount()
        elif max(member.filled, self.done) == self._frontier:
            self._at_frontier -= 1
            if not self._at_frontier:
                self._recount()

    def left_at(self, entity_id: str) -> int | None:
        """The last savepoint of a removed member of that id still pending, if any."""
        return self._pending_left.get(entity_id)

    def _recount(self) -> None:
        """The frontier from scratch: O(members), after a change only it can follow."""
        if self._live:
            self._frontier = max(min(m.filled for m in self._live.values()), self.done)
            self._at_frontier = sum(
                1 for m in self._live.values() if max(m.filled, self.done) == self._frontier
            )
        else:
            # Only removed members pend: every savepoint up to the last removal is whole.
            self._frontier = max([self.done, *(m.filled for m in self._order)])
            self._at_frontier = 0

    # ---------------------------------------------------------------- reading

    def frontier(self) -> int:
        """The highest timestamp up to which every member has filled every savepoint.

        A run that never had members never completes a savepoint: its frontier stays
        ``done``.
        """
        return self._frontier

    def at_frontier(self) -> int:
        """How many members sit at the frontier (O(1)): the ones holding it back."""
        return self._at_frontier

    def slowest(self) -> list[str]:
        """The live members at the frontier: the ones holding the next savepoint back."""
        self._spread_column()
        return [
            m.entity_id for m in self._live.values() if max(m.filled, self.done) == self._frontier
        ]

    def states_at(self, timestamp: int) -> list[tuple[str, bytes]]:
        """Every member's encoded state for the savepoint at ``timestamp``.

        ``timestamp`` must be above ``done`` and at or below the frontier.
        """
        if self._column is not None:
            return list(zip(self.ids(), self._column[1], strict=True))
        entities = []
        for member in self._order:
            segments = member.segments
            while segments and segments[0][0] < timestamp:  # wholly before it: finished
                segments.popleft()
            if timestamp <= member.joined or (member.left is not None and timestamp > member.left):
                continue  # it joined at or after ``timestamp``, or left before it
            entities.append((member.entity_id, segments[0][1]))
        return entities

    def finish(self, timestamp: int) -> None:
        """Mark every savepoint up to ``timestamp`` finished and forget what only they held."""
        segments_pending = self.reached > self.done  # else no member holds a segment
        self.done = max(self.done, timestamp)
        if self._column is not None:
            if self._column[0] <= self.done:
                self._column = None
            return
        if len(self._order) != len(self._live):  # removed members: drop the finished ones
            self._order = [m for m in self._order if m.left is None or m.left > self.done]
            self._ids = None
            self._pending_left = {
                entity_id: left
                for entity_id, left in self._pending_left.items()
                if left > self.done
            }
        if not segments_pending:
            return
        for member in self._order:
            segments = member.segments
            while segments and segments[0][0] <= self.done:
                segments.popleft()
