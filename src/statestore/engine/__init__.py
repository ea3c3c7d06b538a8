"""The state store engine: entities save into scheduled savepoints; complete ones persist.

A run's entities acknowledge event time as they process their inputs. When an entity's
acknowledged time reaches a savepoint on the grid (:mod:`statestore.schedule`), its
state is saved into that savepoint; once every member of the run has saved into it,
the savepoint is persisted through the storage and old ones are pruned. Resuming
reads the latest savepoint back, with exactly the entities it holds::

    store = StateStore("run-1", schedule=60_000, storage=open_storage("sqlite:///s.db"))
    resumed, since, entities = store.start(0, [])
    for reading in inputs_at_or_after(since):  # a replay: the same inputs every run
        store.ack_processed_time(reading.timestamp)  # the watermark: inputs before it done
        entity = store.add_entity(reading.sensor, reading.timestamp, {})  # or the known one
        entity.update_state(reading.timestamp, process(entity.state, reading))

Acknowledge before applying: an input applied first would be in the savepoint and
counted again by a resume, which replays it; ``update_state`` refuses an input past the
entity's next savepoint until that savepoint is acknowledged.

Modules: ``_store.py`` (:class:`StateStore`: starting, the watermark, membership,
persisting), ``_entity.py`` (:class:`Entity`), ``_fills.py`` (which member filled which
savepoint, no I/O), ``_encode.py`` (states encoded in bulk), ``_resume.py`` (the
savepoint to resume from), ``_status.py`` (:class:`StoreStatus`, stall warnings),
``_versions.py`` (state versions and upgrades).
The decisions where the seed was silent are in ``docs/engine.md``.
"""

from __future__ import annotations

from ._entity import Entity
from ._status import STALL_WARNING_SAVEPOINTS, StoreStatus
from ._store import StartResult, StateStore

__all__ = ["STALL_WARNING_SAVEPOINTS", "Entity", "StartResult", "StateStore", "StoreStatus"]
