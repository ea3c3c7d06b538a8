"""``StateStore``: collects entity states into savepoints and persists the complete ones."""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, NamedTuple, cast

from .. import collector
from ..aio import Workers, twin
from ..errors import (
    InvalidArgumentError,
    NoSavepointError,
    RunNotInitializedError,
    StaleWriterError,
)
from ..schedule import next_savepoint, previous_savepoint, unreached_savepoints
from ..storage import Storage, get_config, validate
from ._encode import encode_all, encode_one
from ._entity import Entity
from ._fills import Fills
from ._resume import materialize, read_resume_point, warn_if_other_entities
from ._status import StallWatch, StoreStatus, status
from ._versions import Upgrade, Versions

__all__ = ["StartResult", "StateStore"]


class StartResult(NamedTuple):
    """What :meth:`StateStore.start` did: ``resumed, timestamp, entities = store.start(...)``.

    ``timestamp`` is where the run continues: replay every input at or after it.
    """

    resumed: bool
    timestamp: int
    entities: list[Entity]


class StateStore:
    """The savepoints of one run: entities save into them, complete ones are persisted.

    ``schedule`` is the savepoint interval in milliseconds (savepoints fall on its
    multiples, see :mod:`statestore.schedule`), or ``None`` for no savepoints.
    ``storage=None`` uses the configured storage (:func:`statestore.storage.get_config`).
    After each persisted savepoint, only the ``keep_savepoints`` newest are kept.

    Start the run with :meth:`start` (or :meth:`init_run_state` / :meth:`load_run_state`),
    then drive the returned entities and acknowledge event time, entity by entity or for
    all at once with the watermark, :meth:`ack_processed_time`. Entities come and go
    with :meth:`add_entity` and :meth:`remove_entity`. Each entity is driven by one
    thread at a time; the watermark and :meth:`add_entity` / :meth:`remove_entity` run
    while no other thread drives an entity of the run.

    ``trust_update_state=True`` makes the watermark save only the entities whose
    :meth:`Entity.update_state` was called since their last save: faster when few
    change, but a state changed in place without ``update_state`` is then not saved.
    """

    def __init__(  # noqa: PLR0917 - DESIGN §6's signature, positional as the seed's
        self,
        run_id: str,
        schedule: int | None,
        storage: Storage | None = None,
        keep_savepoints: int = 3,
        state_version: int = 1,
        upgrades: Mapping[int, Upgrade] | None = None,
        *,
        trust_update_state: bool = False,
    ) -> None:
        self.run_id = validate.run_id(run_id)
        if schedule is not None and (type(schedule) is not int or schedule <= 0):
            raise InvalidArgumentError(
                f"schedule must be an int > 0 (milliseconds) or None, not {schedule!r}"
            )
        if type(keep_savepoints) is not int or keep_savepoints < 1:
            # 0 would delete the savepoint just persisted: nothing left to resume from.
            raise InvalidArgumentError(
                f"keep_savepoints must be an int >= 1, not {keep_savepoints!r}"
            )
        if storage is not None and not isinstance(storage, Storage):
            raise InvalidArgumentError(f"storage must be a Storage or None, not {storage!r}")
        if type(trust_update_state) is not bool:
            raise InvalidArgumentError(
                f"trust_update_state must be a bool, not {trust_update_state!r}"
            )
        self._versions = Versions(self.run_id, state_version, upgrades)
        #: The version every state this store saves records (docs/engine.md, "State
        #: versions").
        self.state_version = self._versions.state_version
        self.schedule = schedule
        #: Whether the watermark saves only entities whose ``update_state`` was called
        #: since their last save (docs/engine.md, "Two modes").
        self.trust_update_state = trust_update_state
        self.keep_savepoints = keep_savepoints
        self.storage = storage if storage is not None else get_config()
        self._lock = threading.Lock()
        self._fills: Fills | None = None  # None until init_run_state / load_run_state
        # The run's entities, in savepoint order: the store keeps the objects it hands
        # out, so that its watermark can save them all.
        self._entities: dict[str, Entity] = {}
        self._last_persisted: int | None = None
        self._stalls = StallWatch(self.run_id, self)
        # trust_update_state: the ids removed, with their last savepoint, that the
        # storage's base savepoint may still hold (a change set must leave them out).
        self._removed: dict[str, int] = {}
        self._token: int | None = None
        self._stale = False
        # Bumped by every init/load: saves begun before one are dropped, entities from
        # before one are refused.
        self._generation = 0
        # Set when resuming skipped corrupt savepoints: those are newer than what this
        # writer persists until it passes them, and retention (which keeps the newest)
        # would delete this writer's good savepoints in their favour. Held till then.
        self._retention_hold: int | None = None

    def __repr__(self) -> str:
        return (
            f"StateStore(run_id={self.run_id!r}, schedule={self.schedule!r}, "
            f"storage={self.storage!r}, keep_savepoints={self.keep_savepoints})"
        )

    def is_initialized(self) -> bool:
        """Whether the run has storage (it may still have no savepoint)."""
        return self.storage.is_initialized(self.run_id)

    # ---------------------------------------------------------------- starting a run

    def start(
        self, timestamp: int, entity_defs: Iterable[tuple[str, Any]], *, strict: bool = False
    ) -> StartResult:
        """Resume the run from its latest savepoint if it has one, else initialize it.

        Initializing starts at ``timestamp`` with ``entity_defs`` (``[(entity_id,
        initial_state), ...]``). Resuming uses the savepoint's entities and timestamp;
        ``entity_defs`` only serve to warn when they name entities it lacks. A corrupt
        latest savepoint falls back to the newest intact one, with a warning per skipped
        savepoint (logger ``"statestore"``); ``strict=True`` raises
        :class:`~statestore.errors.CorruptSavepointError` instead.
        """
        timestamp = validate.timestamp(timestamp)
        defs = materialize(entity_defs)
        ids, _states = validate.entities(defs, self.run_id)
        if self.storage.list_savepoints(self.run_id):
            try:
                resumed_at, entities = self.load_run_state(strict=strict)
            except NoSavepointError:
                pass  # deleted since we looked: nothing to resume, initialize
            else:
                warn_if_other_entities(self.run_id, ids, entities)
                return StartResult(True, resumed_at, entities)
        return StartResult(False, timestamp, self.init_run_state(timestamp, defs))

    def init_run_state(
        self, timestamp: int, entity_defs: Iterable[tuple[str, Any]]
    ) -> list[Entity]:
        """Initialize the run at ``timestamp`` and take its writer token.

        The first savepoint is ``next_savepoint(schedule, timestamp)``, to be filled by
        every entity of ``entity_defs`` (``[(entity_id, initial_state), ...]``); nothing
        is persisted until it completes. Refused with
        :class:`~statestore.errors.InvalidArgumentError` when the run has savepoints
        (resume it, or delete it first); a run initialized before but without a
        savepoint is simply initialized again.
        """
        timestamp = validate.timestamp(timestamp)
        ids, states = validate.entities(entity_defs, self.run_id)
        for entity_id, state in zip(ids, states, strict=True):
            # Refuse a state the codec cannot encode now, before anything is written.
            self.storage.encode_state(self.run_id, entity_id, state)
        self._refuse_if_saved()
        self.storage.init_storage(self.run_id)
        token = self.storage.acquire_writer(self.run_id)
        self._refuse_if_saved()  # a writer that saved before our token took over
        done = timestamp if self.schedule is None else previous_savepoint(self.schedule, timestamp)
        with self._lock:
            generation = self._reset(Fills(ids, done), token, retention_hold=None, loaded=None)
            entities = [
                self._entity(entity_id, state, timestamp, None, generation)
                for entity_id, state in zip(ids, states, strict=True)
            ]
            self._entities = {entity.id: entity for entity in entities}
        return list(entities)

    def load_run_state(self, *, strict: bool = False) -> tuple[int, list[Entity]]:
        """Take the run's writer token and resume from its latest savepoint.

        Returns ``(timestamp, entities)``: replay every input at or after
        ``timestamp``. A run initialized without a savepoint yet raises
        :class:`~statestore.errors.NoSavepointError`. A corrupt latest savepoint falls
        back to the newest intact one, as in :meth:`start`, unless ``strict``.
        """
        # Token first: from here on no other writer adds a savepoint, so the latest we
        # read is the latest there is.
        token = self.storage.acquire_writer(self.run_id)
        savepoint, skipped = read_resume_point(self.storage, self.run_id, strict)
        timestamp, stored, versions = savepoint
        # States written by older code pass through the upgrade steps (ConfigError when
        # one is missing, or a state is newer than this code).
        states = self._versions.upgrade(timestamp, stored, versions)
        ids = [entity_id for entity_id, _state in states]
        with self._lock:
            generation = self._reset(
                Fills(ids, timestamp),
                token,
                retention_hold=max(skipped) if skipped else None,
                loaded=timestamp,
            )
            entities = [
                self._entity(entity_id, state, timestamp, timestamp, generation, dirty=False)
                for entity_id, state in states
            ]
            self._entities = {entity.id: entity for entity in entities}
        return timestamp, list(entities)

    def _refuse_if_saved(self) -> None:
        saved = self.storage.list_savepoints(self.run_id)
        if saved:
            raise InvalidArgumentError(
                f"run {self.run_id!r} already has savepoints (latest {saved[-1].timestamp}); "
                "resume it with load_run_state() or start(), or delete_run() it to start over"
            )

    def _reset(
        self, fills: Fills, token: int, retention_hold: int | None, loaded: int | None
    ) -> int:
        """Start over with ``fills`` (under the lock); returns the new generation."""
        self._generation += 1
        self._fills = fills
        self._token = token
        self._stale = False
        self._retention_hold = retention_hold
        self._last_persisted = loaded
        self._stalls = StallWatch(self.run_id, self)
        self._removed = {}
        return self._generation

    def _entity(
        self,
        entity_id: str,
        state: Any,
        timestamp: int,
        loaded_from: int | None,
        generation: int,
        *,
        dirty: bool = True,
    ) -> Entity:
        return Entity(
            id=entity_id,
            state=state,
            timestamp=timestamp,
            schedule=self.schedule,
            next_savepoint=next_savepoint(self.schedule, timestamp),
            last_savepoint=loaded_from,
            _save_into=self._save_entity,
            _generation=generation,
            _dirty=dirty,
            _workers=self._workers,
        )

    def entities(self) -> list[Entity]:
        """The run's entities now, in savepoint order: the started ones and the added
        ones, without the removed ones (empty before the store is started)."""
        with self._lock:
            return list(self._entities.values())

    def status(self) -> StoreStatus:
        """How far the savepoints stand: pending, held back by whom, last persisted."""
        with self._lock:
            return status(self._fills, self.schedule, self._last_persisted)

    # ---------------------------------------------------------------- saving

    def save(self, entity_id: str, timestamp: int, state: Any) -> None:
        """Store ``state`` into every pending savepoint at or before ``timestamp`` that
        this entity has not filled yet.

        The state is encoded once, now (later changes to the object are not saved),
        and the same bytes go into each of those savepoints. Savepoints this completes
        are persisted in ascending order, and older ones beyond ``keep_savepoints``
        deleted, before this returns. A savepoint the entity filled already is left as
        it is, so a save older than the entity's last one changes nothing.
        """
        self._save_state(entity_id, validate.timestamp(timestamp), state, None)

    def _save_entity(self, entity: Entity, timestamp: int) -> None:
        """An entity's acknowledgement that reached its next savepoint (Entity calls it)."""
        self._save_state(entity.id, timestamp, entity.state, entity)

    def _save_state(
        self, entity_id: str, timestamp: int, state: Any, entity: Entity | None
    ) -> None:
        # The grid inline (the schedule was checked at construction): this runs once per
        # entity and savepoint, the engine's hot path.
        upto = None if self.schedule is None else timestamp // self.schedule * self.schedule
        with self._lock:
            fills = self._started_for(entity_id, entity)
            generation = self._generation
            needed = upto is not None and upto > fills.filled_to(entity_id)
        # Encode outside the lock: other entities' saves need not wait for a big state.
        data = encode_one(self.storage, self.run_id, entity_id, state) if needed else b""
        with self._lock:
            if generation != self._generation:
                return  # the run was started again meanwhile; this save belongs to the old
            fills = self._started_for(entity_id, entity)
            if needed and upto is not None:
                fills.fill(entity_id, upto, data)
            # Even a save that filled nothing persists what is complete: it retries a
            # persist that failed (server gone) in an earlier call.
            self._persist_complete(fills)

    def _started(self) -> Fills:
        """The fills of the running start; refuses a store not started, or superseded."""
        fills = self._fills
        if fills is None:
            raise RunNotInitializedError(
                f"run {self.run_id!r}: this StateStore is not started; call start(), "
                "init_run_state() or load_run_state() first"
            )
        if self._stale:
            raise StaleWriterError(
                f"run {self.run_id!r}: another writer has taken this run; this StateStore "
                "stores nothing more"
            )
        return fills

    def _started_for(self, entity_id: str, entity: Entity | None) -> Fills:
        """:meth:`_started`, refusing unknown entities and entities no longer of the run."""
        fills = self._started()
        if entity is not None and entity._generation != self._generation:
            raise InvalidArgumentError(
                f"run {self.run_id!r}: entity {entity_id!r} is from an earlier start of this "
                "StateStore; use the entities the latest start returned"
            )
        if entity is not None and self._entities.get(entity_id) is not entity:
            raise InvalidArgumentError(
                f"run {self.run_id!r}: entity {entity_id!r} was removed from the run "
                "(remove_entity); it saves nothing more"
            )
        if entity_id not in fills:
            raise InvalidArgumentError(
                f"run {self.run_id!r}: unknown entity id {entity_id!r} (not registered at "
                "start, nor added)"
            )
        return fills

    # ---------------------------------------------------------------- the watermark

    def ack_processed_time(self, timestamp: int) -> None:
        """The watermark: every input below ``timestamp`` is processed, for every entity.

        Each entity whose ``next_savepoint`` is at or before ``timestamp`` saves its
        current state, as if it had acknowledged ``timestamp`` itself; every entity's
        ``timestamp`` moves up to ``timestamp``. The savepoints this completes are
        persisted before it returns. All or nothing: if it raises (a state the codec
        refuses, a stale writer, a storage failure), every entity is left as it was;
        the states it encoded stay filled in memory only when a write failed, so that
        calling it again writes them.

        By default every due entity's state is encoded (the storage then keeps the
        unchanged ones without writing them again); with ``trust_update_state=True``
        only the entities whose ``update_state`` was called since their last save.
        """
        timestamp = validate.timestamp(timestamp)
        with self._lock:
            fills = self._started()
            entities = list(self._entities.values())
            schedule = self.schedule
            if schedule is None:
                _advance(entities, timestamp)
                return
            upto = timestamp // schedule * schedule
            # What the bulk steps build (encodings, the savepoint's entity list) lives
            # until it is written: a collection midway would only walk it, and every
            # state, again (see statestore.collector).
            with collector.paused():
                if fills.aligned() and upto > fills.done:
                    # Every entity stands at the last finished savepoint (the usual case):
                    # all are due.
                    due = entities
                    if not (self.trust_update_state and self._persist_changes(fills, upto, due)):
                        # Their states go in as one column.
                        fills.fill_all(upto, encode_all(self.storage, self.run_id, due))
                elif fills.aligned():
                    due = []  # every entity stands at the last finished savepoint: none due
                else:
                    due = [e for e in entities if cast(int, e.next_savepoint) <= timestamp]
                    for entity, data in zip(
                        due, encode_all(self.storage, self.run_id, due), strict=True
                    ):
                        fills.fill(entity.id, upto, data)
                self._persist_complete(fills)
            following = upto + schedule
            for entity in due:  # one pass, no call: this runs for every entity
                entity.last_savepoint = upto
                entity.next_savepoint = following
                entity._dirty = False
                # A due entity's time is below its next savepoint, so below ``timestamp``.
                entity.timestamp = timestamp
            if due is not entities:
                _advance(entities, timestamp)

    def _persist_changes(self, fills: Fills, upto: int, entities: list[Entity]) -> bool:
        """``trust_update_state``: persist the savepoints up to ``upto`` as change sets.

        Only the entities updated since their last save are encoded, and the storage
        writes only them (``save_encoded_changes`` on the savepoint it saved last).
        False, having persisted nothing, when a whole savepoint must be saved instead:
        the storage has no base (a fresh start, a base pruned by another process), a
        resume is holding retention, or an id removed since the base came back.
        """
        schedule = cast(int, self.schedule)
        if not entities:
            # No member: no savepoint to write (as in _persist_complete).
            fills.finish(upto)
            return True
        removed = [entity_id for entity_id, left in self._removed.items() if left < upto]
        if self._retention_hold is not None or any(i in self._entities for i in removed):
            return False
        changed = [e for e in entities if e._dirty]
        encoded = encode_all(self.storage, self.run_id, changed)
        states = list(zip([e.id for e in changed], encoded, strict=True))
        complete = unreached_savepoints(schedule, fills.done, upto)[-self.keep_savepoints :]
        for timestamp in complete:
            try:
                self.storage.save_encoded_changes(
                    self.run_id,
                    timestamp,
                    states,
                    removed,
                    writer_token=self._token,
                    state_version=self.state_version,
                )
            except NoSavepointError:
                return False  # no base (any more): the whole savepoint, from here
            except StaleWriterError:
                self._stale = True
                raise
            states, removed = [], []  # the next savepoints repeat this one
            fills.finish(timestamp)
            self._persisted(timestamp)
        self.storage.delete_old_savepoints(self.run_id, self.keep_savepoints)
        return True

    # ---------------------------------------------------------------- entities come and go

    def add_entity(self, entity_id: str, timestamp: int, state: Any) -> Entity:
        """A new entity with ``state``, taking part in every savepoint after ``timestamp``.

        An id the run has already (a replay after a resume adds its entities again)
        returns that entity as it stands, and ``state`` is ignored: resetting it would
        lose the restored state. A savepoint at ``timestamp`` itself does not include
        the new entity. Refused with :class:`~statestore.errors.InvalidArgumentError`
        when a savepoint after ``timestamp`` is already persisted (the entity would be
        missing from it), and with :class:`~statestore.errors.EncodeError` when the
        codec refuses ``state``; nothing changes then.
        """
        timestamp = validate.timestamp(timestamp)
        (entity_id,), (state,) = validate.entities([(entity_id, state)], self.run_id)
        with self._lock:
            fills = self._started()
            existing = self._entities.get(entity_id)
            if existing is not None:
                return existing
            joined = timestamp
            if self.schedule is not None:
                joined = timestamp // self.schedule * self.schedule
                if joined < fills.done:
                    raise InvalidArgumentError(
                        f"run {self.run_id!r}: cannot add entity {entity_id!r} at {timestamp}: "
                        f"savepoint {fills.done} is persisted already and would lack it; "
                        f"add it at {fills.done} or later"
                    )
                left = fills.left_at(entity_id)
                if left is not None and joined < left:
                    raise InvalidArgumentError(
                        f"run {self.run_id!r}: cannot add entity {entity_id!r} at {timestamp}: "
                        f"it was removed at savepoint {left}, after that; add it at {left} "
                        "or later"
                    )
            # Refuse a state the codec cannot encode now, as init_run_state does.
            self.storage.encode_state(self.run_id, entity_id, state)
            fills.add(entity_id, joined)
            entity = self._entity(entity_id, state, timestamp, None, self._generation)
            self._entities[entity_id] = entity
            return entity

    def remove_entity(self, entity_id: str, timestamp: int) -> None:
        """Acknowledge ``timestamp`` for the entity, then take it out of the run.

        Its current state first fills every pending savepoint at or before
        ``timestamp`` (as ``entity.ack_processed_time(timestamp)``), then it takes part
        in no savepoint after ``timestamp``; the savepoints this completes are persisted
        before it returns. An id the run does not have (a replay after a resume removes
        its entities again) does nothing. ``timestamp`` below the entity's own is
        refused with :class:`~statestore.errors.InvalidArgumentError`.
        """
        timestamp = validate.timestamp(timestamp)
        with self._lock:
            fills = self._started()
            entity = self._entities.get(entity_id) if isinstance(entity_id, str) else None
            if entity is None:
                return
            if timestamp < entity.timestamp:
                raise InvalidArgumentError(
                    f"run {self.run_id!r}: cannot remove entity {entity_id!r} at {timestamp}: "
                    f"it has processed time up to {entity.timestamp} already"
                )
            left = fills.filled_to(entity_id)  # without a schedule: in no savepoint
            if self.schedule is not None:
                left = timestamp // self.schedule * self.schedule
                if left > fills.filled_to(entity_id):
                    fills.fill(entity_id, left, encode_all(self.storage, self.run_id, [entity])[0])
            fills.remove(entity_id, left)
            del self._entities[entity_id]
            if self.schedule is not None:
                self._removed[entity_id] = max(left, self._removed.get(entity_id, left))
            entity.timestamp = timestamp
            self._persist_complete(fills)

    def _persisted(self, timestamp: int) -> None:
        """The savepoint at ``timestamp`` is written: the storage's base from now on."""
        self._last_persisted = timestamp
        if self._removed:  # the ids it leaves out need not be named to the storage again
            self._removed = {i: left for i, left in self._removed.items() if left >= timestamp}

    def _persist_complete(self, fills: Fills) -> None:
        """Persist the savepoints every entity has filled, ascending; then retention.

        Then (even when a write fails) warn of a stall and report the status.
        """
        if self.schedule is None:
            return
        try:
            self._persist_filled(fills, self.schedule)
        finally:
            self._stalls.check(fills, self.schedule)

    def _persist_filled(self, fills: Fills, schedule: int) -> None:
        frontier = fills.frontier()
        if frontier <= fills.done:
            return
        complete = unreached_savepoints(schedule, fills.done, frontier)
        if not complete:
            return
        if self._retention_hold is None:
            # Retention would delete all but the newest of these at once: skip writing them.
            fills.finish(complete[max(len(complete) - self.keep_savepoints, 0)] - schedule)
            complete = complete[-self.keep_savepoints :]
        # The entity lists built here live until written (see ack_processed_time).
        with collector.paused():
            self._write(fills, complete)
        if self._retention_hold is not None and fills.done >= self._retention_hold:
            self._retention_hold = None
        if self._retention_hold is None:
            self.storage.delete_old_savepoints(self.run_id, self.keep_savepoints)

    def _write(self, fills: Fills, complete: Sequence[int]) -> None:
        """Write the complete savepoints, ascending, each as its members filled it."""
        for timestamp in complete:
            states = fills.states_at(timestamp)
            if not states:
                # No member (all left before it, the next joins after): nothing to
                # write. A resume from an older savepoint replays those additions and
                # removals as well, so it ends the same.
                fills.finish(timestamp)
                continue
            try:
                self.storage.save_encoded_savepoint(
                    self.run_id,
                    timestamp,
                    states,
                    writer_token=self._token,
                    state_version=self.state_version,
                )
            except StaleWriterError:
                self._stale = True
                raise
            fills.finish(timestamp)
            self._persisted(timestamp)

    # ---------------------------------------------------------------- coroutine twins
    # Every call that can persist a savepoint, awaitable (DESIGN §9, docs/async.md): each
    # runs the blocking method whole (its bookkeeping under the lock included) in the
    # storage's worker threads, so the lock is never held across an await.

    @property
    def _workers(self) -> Workers:
        return self.storage._workers

    astart = twin(start, persists=True)
    asave = twin(save, persists=True)
    aack_processed_time = twin(ack_processed_time, persists=True)
    aremove_entity = twin(remove_entity, persists=True)


def _advance(entities: list[Entity], timestamp: int) -> None:
    """Every entity has processed the inputs below ``timestamp``."""
    # A comparison, not a call of max(): this runs for each entity on every watermark,
    # and the call costs six times the loop (0.61 s against 0.10 s for W5's 40,000
    # watermarks of 150 entities).
    for entity in entities:
        if entity.timestamp < timestamp:  # noqa: PLR1730 - see above
            entity.timestamp = timestamp
