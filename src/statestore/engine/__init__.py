"""The state store engine: entities save into scheduled savepoints; complete ones persist.

A run's entities acknowledge event time as they process their inputs. When an entity's
acknowledged time reaches a savepoint on the grid (:mod:`statestore.schedule`), its
state is saved into that savepoint; once every entity of the run has saved into it,
the savepoint is persisted through the storage and old ones are pruned. Resuming
reads the latest savepoint back::

    store = StateStore("run-1", schedule=60_000, storage=open_storage("sqlite:///s.db"))
    resumed, since, entities = store.start(0, [("sensor-1", {}), ("sensor-2", {})])
    by_id = {entity.id: entity for entity in entities}
    for reading in inputs_at_or_after(since):  # a replay: the same inputs every run
        for entity in entities:  # every input before this one is processed
            entity.ack_processed_time(reading.timestamp)
        entity = by_id[reading.sensor]  # then this input is applied
        entity.update_state(reading.timestamp, process(entity.state, reading))

Acknowledge before applying: an input applied first would be in the savepoint and
counted again by a resume, which replays it (the README's example is tested so).

Modules: ``_store.py`` (:class:`StateStore`, starting and persisting), ``_entity.py``
(:class:`Entity`), ``_fills.py`` (which entity filled which savepoint, no I/O).
The decisions where the seed was silent are in ``docs/engine.md``.
"""

from __future__ import annotations

from ._entity import Entity
from ._status import STALL_WARNING_SAVEPOINTS, StoreStatus
from ._store import StartResult, StateStore

__all__ = ["STALL_WARNING_SAVEPOINTS", "Entity", "StartResult", "StateStore", "StoreStatus"]
