"""``Entity``: one stateful component of a run, as the job's code holds it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

from ..aio import Workers, twin
from ..errors import InvalidArgumentError, RunNotInitializedError
from ..storage import validate

__all__ = ["Entity", "SaveInto"]

#: How an entity saves its current state into its store's savepoints up to a timestamp:
#: ``(entity, timestamp)``. The store hands it over at creation, so this module needs no
#: import of the store's (no import circle, no call of a private method across modules).
SaveInto = Callable[["Entity", int], None]


@dataclass(slots=True)
class Entity:
    """One entity of a run: its state and where it stands on the savepoint grid.

    Entities come from :meth:`StateStore.init_run_state`,
    :meth:`StateStore.load_run_state`, :meth:`StateStore.start` or
    :meth:`StateStore.add_entity`. Each is driven by one thread at a time; different
    entities of a run may run in different threads, and the store's watermark
    (:meth:`StateStore.ack_processed_time`) touches all of them, so it runs while no
    thread drives an entity. The methods change the entity in place and return it, so both
    ``entity.ack_processed_time(t)`` and ``entity = entity.ack_processed_time(t)`` work.

    * ``timestamp``: the highest event time given to :meth:`update_state` or
      :meth:`ack_processed_time`; it never moves backwards.
    * ``next_savepoint``: the next savepoint this entity must fill (``None`` without a
      schedule).
    * ``last_savepoint``: the last savepoint it filled, or the savepoint it was loaded
      from (``None`` when there is none).
    """

    id: str
    state: Any
    timestamp: int
    schedule: int | None
    next_savepoint: int | None
    last_savepoint: int | None = None
    _save_into: SaveInto | None = field(default=None, repr=False, compare=False)
    _generation: int = field(default=0, repr=False, compare=False)
    #: Whether update_state was called since the last save (what the store's trust mode
    #: saves by).
    _dirty: bool = field(default=True, repr=False, compare=False)
    #: Where :meth:`aack_processed_time` runs: the store's storage's worker threads.
    _workers: Workers | None = field(default=None, repr=False, compare=False)

    def update_state(self, timestamp: int, state: Any) -> Entity:
        """Set the state after processing an input at ``timestamp``; in memory only.

        An input at or after ``next_savepoint`` is refused with
        :class:`~statestore.errors.InvalidArgumentError` until that savepoint is
        acknowledged: applied first, it would be in the savepoint, and a resume, which
        replays it, would count it twice.
        """
        validate.timestamp(timestamp)
        if self.next_savepoint is not None and timestamp >= self.next_savepoint:
            raise InvalidArgumentError(
                f"entity {self.id!r}: the input at {timestamp} is at or after its next "
                f"savepoint {self.next_savepoint}; acknowledge first "
                f"(store.ack_processed_time({timestamp}) or "
                f"entity.ack_processed_time({timestamp})), then apply the input"
            )
        self.state = state
        # Never backwards; a comparison, as max() is a call on every input (see _advance).
        if self.timestamp < timestamp:  # noqa: PLR1730
            self.timestamp = timestamp
        self._dirty = True
        return self

    def ack_processed_time(self, timestamp: int) -> Entity:
        """Declare every input with a timestamp below ``timestamp`` processed.

        When ``timestamp`` reaches ``next_savepoint``, the current state is saved once,
        for every savepoint up to ``timestamp``, and ``next_savepoint`` moves past
        ``timestamp``. The call returns after any savepoint it completed is persisted.
        An acknowledgement older than ``timestamp`` is already implied by a newer one
        and changes nothing. If saving raises, the entity is left as it was.
        """
        validate.timestamp(timestamp)
        if timestamp < self.timestamp:
            return self
        if self.next_savepoint is not None and timestamp >= self.next_savepoint:
            if self._save_into is None:
                raise RunNotInitializedError(
                    f"entity {self.id!r} belongs to no StateStore; entities come from "
                    "init_run_state(), load_run_state() or start()"
                )
            self._save_into(self, timestamp)
            self._dirty = False
            # The grid inline (next_savepoint is set, so the schedule is an int > 0).
            schedule = cast(int, self.schedule)
            self.last_savepoint = timestamp // schedule * schedule
            self.next_savepoint = self.last_savepoint + schedule
        self.timestamp = timestamp
        return self

    #: Awaitable :meth:`ack_processed_time` (statestore.aio): it may persist a savepoint.
    aack_processed_time = twin(ack_processed_time, persists=True)
