"""The state store engine: entities save into scheduled savepoints; complete ones persist.

A run's entities acknowledge event time as they process their inputs. When an entity's
acknowledged time reaches a savepoint on the grid (:mod:`statestore.schedule`), its
state is saved into that savepoint; once every entity of the run has saved into it,
the savepoint is persisted through the storage and old ones are pruned. Resuming
reads the latest savepoint back::

    store = StateStore("run-1", schedule=60_000, storage=open_storage("sqlite:///s.db"))
    resumed, since, entities = store.start(start_ts, [("sensor-1", {}), ("sensor-2", {})])
    for reading in inputs_from(since):
        entity = entities[reading.sensor].ack_processed_time(reading.timestamp)
        entity.update_state(reading.timestamp, process(entity.state, reading))

Modules: ``_store.py`` (:class:`StateStore`, starting and persisting), ``_entity.py``
(:class:`Entity`), ``_fills.py`` (which entity filled which savepoint, no I/O).
The decisions where the seed was silent are in ``docs/engine.md``.
"""

from __future__ import annotations

from ._entity import Entity
from ._store import StartResult, StateStore

__all__ = ["Entity", "StartResult", "StateStore"]
