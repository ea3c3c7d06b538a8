"""``StateStore``: collects entity states into savepoints and persists the complete ones."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable
from typing import Any, NamedTuple

from .. import observe
from ..aio import Workers, twin
from ..errors import (
    CorruptSavepointError,
    InvalidArgumentError,
    NoSavepointError,
    RunNotInitializedError,
    StaleWriterError,
)
from ..schedule import next_savepoint, previous_savepoint, unreached_savepoints
from ..storage import Savepoint, Storage, get_config, validate
from ._entity import Entity
from ._fills import Fills

__all__ = ["StartResult", "StateStore"]

_log = logging.getLogger("statestore")


class StartResult(NamedTuple):
    """What :meth:`StateStore.start` did: ``resumed, timestamp, entities = store.start(...)``.

    ``timestamp`` is where the run continues: replay every input at or after it.
    """

    resumed: bool
    timestamp: int
    entities: list[Entity]


def _ack_processed_time(store: StateStore, timestamp: int) -> None:
    """The signature of ``StateStore.ack_processed_time`` (DESIGN §6), typing its twin."""


def _remove_entity(store: StateStore, entity_id: str, timestamp: int) -> None:
    """The signature of ``StateStore.remove_entity`` (DESIGN §6), typing its twin."""


class StateStore:
    """The savepoints of one run: entities save into them, complete ones are persisted.

    ``schedule`` is the savepoint interval in milliseconds (savepoints fall on its
    multiples, see :mod:`statestore.schedule`), or ``None`` for no savepoints.
    ``storage=None`` uses the configured storage (:func:`statestore.storage.get_config`).
    After each persisted savepoint, only the ``keep_savepoints`` newest are kept.

    Start the run with :meth:`start` (or :meth:`init_run_state` / :meth:`load_run_state`),
    then drive the returned entities. Entities may save from several threads at once.
    """

    def __init__(
        self,
        run_id: str,
        schedule: int | None,
        storage: Storage | None = None,
        keep_savepoints: int = 3,
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
        self.schedule = schedule
        self.keep_savepoints = keep_savepoints
        self.storage = storage if storage is not None else get_config()
        self._lock = threading.Lock()
        self._fills: Fills | None = None  # None until init_run_state / load_run_state
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
        ``entity_defs`` only serve to warn when they name other entities. A corrupt
        latest savepoint falls back to the newest intact one, with a warning per skipped
        savepoint (logger ``"statestore"``); ``strict=True`` raises
        :class:`~statestore.errors.CorruptSavepointError` instead.
        """
        timestamp = validate.timestamp(timestamp)
        defs = _materialize(entity_defs)
        ids, _states = validate.entities(defs, self.run_id)
        if self.storage.list_savepoints(self.run_id):
            try:
                resumed_at, entities = self.load_run_state(strict=strict)
            except NoSavepointError:
                pass  # deleted since we looked: nothing to resume, initialize
            else:
                _warn_if_other_entities(self.run_id, ids, entities)
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
        generation = self._reset(Fills(ids, done), token, retention_hold=None)
        return [
            self._entity(entity_id, state, timestamp, None, generation)
            for entity_id, state in zip(ids, states, strict=True)
        ]

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
        savepoint, skipped = self._read_resume_point(strict)
        timestamp, states = savepoint
        ids = [entity_id for entity_id, _state in states]
        generation = self._reset(
            Fills(ids, timestamp), token, retention_hold=max(skipped) if skipped else None
        )
        entities = [
            self._entity(entity_id, state, timestamp, timestamp, generation)
            for entity_id, state in states
        ]
        return timestamp, entities

    def _refuse_if_saved(self) -> None:
        saved = self.storage.list_savepoints(self.run_id)
        if saved:
            raise InvalidArgumentError(
                f"run {self.run_id!r} already has savepoints (latest {saved[-1].timestamp}); "
                "resume it with load_run_state() or start(), or delete_run() it to start over"
            )

    def _read_resume_point(self, strict: bool) -> tuple[Savepoint, list[int]]:
        """The latest intact savepoint, and the newer corrupt ones skipped to reach it."""
        try:
            return self.storage.get_latest_savepoint(self.run_id), []
        except NoSavepointError:
            raise NoSavepointError(
                f"run {self.run_id!r} is initialized but has no savepoint yet (it stopped "
                "before its first savepoint completed); initialize it with "
                "init_run_state(), or use start()"
            ) from None
        except CorruptSavepointError:
            if strict:
                raise
        skipped: list[int] = []
        for row in reversed(self.storage.list_savepoints(self.run_id)):
            try:
                savepoint = self.storage.get_savepoint(self.run_id, row.timestamp)
            except NoSavepointError:
                continue  # deleted since listed
            except CorruptSavepointError as exc:
                observe.record_fallback(self.storage)
                _log.warning(
                    "run %r: skipped corrupt savepoint %d: %s", self.run_id, row.timestamp, exc
                )
                skipped.append(row.timestamp)
                continue
            _log.warning(
                "run %r: resuming from savepoint %d, the newest intact one",
                self.run_id,
                savepoint.timestamp,
            )
            return savepoint, skipped
        raise CorruptSavepointError(
            f"run {self.run_id!r}: no intact savepoint to resume from (corrupt: "
            f"{', '.join(map(str, reversed(skipped))) or 'none listed'}); "
            "delete_run() it to start over"
        )

    def _reset(self, fills: Fills, token: int, retention_hold: int | None) -> int:
        with self._lock:
            self._generation += 1
            self._fills = fills
            self._token = token
            self._stale = False
            self._retention_hold = retention_hold
            return self._generation

    def _entity(
        self, entity_id: str, state: Any, timestamp: int, loaded_from: int | None, generation: int
    ) -> Entity:
        return Entity(
            id=entity_id,
            state=state,
            timestamp=timestamp,
            schedule=self.schedule,
            next_savepoint=next_savepoint(self.schedule, timestamp),
            last_savepoint=loaded_from,
            _save_into=self._save_into,
            _generation=generation,
            _workers=self._workers,
        )

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
        self._save_into(entity_id, timestamp, state, None)

    def _save_into(
        self, entity_id: str, timestamp: int, state: Any, generation: int | None
    ) -> None:
        timestamp = validate.timestamp(timestamp)
        # The grid inline (the schedule was checked at construction): this runs once per
        # entity and savepoint, the engine's hot path.
        upto = None if self.schedule is None else timestamp // self.schedule * self.schedule
        with self._lock:
            fills = self._started(entity_id, generation)
            generation = self._generation
            needed = upto is not None and upto > fills.filled_to(entity_id)
        # Encode outside the lock: other entities' saves need not wait for a big state.
        data = self.storage.encode_state(self.run_id, entity_id, state) if needed else b""
        with self._lock:
            if generation != self._generation:
                return  # the run was started again meanwhile; this save belongs to the old
            fills = self._started(entity_id, generation)
            if needed and upto is not None:
                fills.fill(entity_id, upto, data)
            # Even a save that filled nothing persists what is complete: it retries a
            # persist that failed (server gone) in an earlier call.
            self._persist_complete(fills)

    # ---------------------------------------------------------------- coroutine twins
    # Every call that can persist a savepoint, awaitable (DESIGN §9, docs/async.md): each
    # runs the blocking method whole (its bookkeeping under the lock included) in the
    # storage's worker threads, so the lock is never held across an await.

    @property
    def _workers(self) -> Workers:
        return self.storage._workers

    astart = twin(start, persists=True)
    asave = twin(save, persists=True)
    # Looked up by name when called: the blocking methods come with the engine's
    # watermark work; until then these twins raise StateStoreError saying so.
    aack_processed_time = twin(_ack_processed_time, persists=True, name="ack_processed_time")
    aremove_entity = twin(_remove_entity, persists=True, name="remove_entity")

    def _started(self, entity_id: str, generation: int | None) -> Fills:
        """The fills of the running start; refuses unknown entities and old ones."""
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
        if generation is not None and generation != self._generation:
            raise InvalidArgumentError(
                f"run {self.run_id!r}: entity {entity_id!r} is from an earlier start of this "
                "StateStore; use the entities the latest start returned"
            )
        if entity_id not in fills:
            raise InvalidArgumentError(
                f"run {self.run_id!r}: unknown entity id {entity_id!r} (not registered at start)"
            )
        return fills

    def _persist_complete(self, fills: Fills) -> None:
        """Persist the savepoints every entity has filled, ascending; then retention."""
        frontier = fills.frontier()
        if self.schedule is None or frontier <= fills.done:
            return
        complete = unreached_savepoints(self.schedule, fills.done, frontier)
        if not complete:
            return
        if self._retention_hold is None:
            # Retention would delete all but the newest of these at once: skip writing them.
            fills.finish(complete[max(len(complete) - self.keep_savepoints, 0)] - self.schedule)
            complete = complete[-self.keep_savepoints :]
        for timestamp in complete:
            try:
                self.storage.save_encoded_savepoint(
                    self.run_id, timestamp, fills.states_at(timestamp), writer_token=self._token
                )
            except StaleWriterError:
                self._stale = True
                raise
            fills.finish(timestamp)
        if self._retention_hold is not None and fills.done >= self._retention_hold:
            self._retention_hold = None
        if self._retention_hold is None:
            self.storage.delete_old_savepoints(self.run_id, self.keep_savepoints)


def _materialize(entity_defs: Iterable[tuple[str, Any]]) -> Any:
    """A list of the definitions, read once; anything else is left for validation to refuse."""
    if isinstance(entity_defs, Iterable) and not isinstance(entity_defs, (str, bytes, dict)):
        return list(entity_defs)
    return entity_defs


def _warn_if_other_entities(run_id: str, ids: list[str], entities: list[Entity]) -> None:
    resumed = {entity.id for entity in entities}
    missing = [entity_id for entity_id in ids if entity_id not in resumed]
    extra = sorted(resumed - set(ids))
    if missing or extra:
        _log.warning(
            "run %r: resumed entities differ from the definitions given: not in the "
            "savepoint %s, only in the savepoint %s",
            run_id,
            missing,
            extra,
        )
