"""Resuming a run: the savepoint to resume from, and what to tell about it."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from .. import observe
from ..errors import CorruptSavepointError, NoSavepointError
from ..storage import Storage, StoredSavepoint
from ._entity import Entity

__all__ = ["materialize", "read_resume_point", "warn_if_other_entities"]

_log = logging.getLogger("statestore")


def read_resume_point(
    storage: Storage, run_id: str, strict: bool
) -> tuple[StoredSavepoint, list[int]]:
    """The latest intact savepoint, and the newer corrupt ones skipped to reach it."""
    try:
        return storage.load_savepoint(run_id), []
    except NoSavepointError:
        raise NoSavepointError(
            f"run {run_id!r} is initialized but has no savepoint yet (it stopped "
            "before its first savepoint completed); initialize it with "
            "init_run_state(), or use start()"
        ) from None
    except CorruptSavepointError:
        if strict:
            raise
    skipped: list[int] = []
    for row in reversed(storage.list_savepoints(run_id)):
        try:
            savepoint = storage.load_savepoint(run_id, row.timestamp)
        except NoSavepointError:
            continue  # deleted since listed
        except CorruptSavepointError as exc:
            observe.record_fallback(storage)
            _log.warning("run %r: skipped corrupt savepoint %d: %s", run_id, row.timestamp, exc)
            skipped.append(row.timestamp)
            continue
        _log.warning(
            "run %r: resuming from savepoint %d, the newest intact one",
            run_id,
            savepoint.timestamp,
        )
        return savepoint, skipped
    raise CorruptSavepointError(
        f"run {run_id!r}: no intact savepoint to resume from (corrupt: "
        f"{', '.join(map(str, reversed(skipped))) or 'none listed'}); "
        "delete_run() it to start over"
    )


def materialize(entity_defs: Iterable[tuple[str, Any]]) -> Any:
    """A list of the definitions, read once; anything else is left for validation to refuse."""
    if isinstance(entity_defs, Iterable) and not isinstance(entity_defs, (str, bytes, dict)):
        return list(entity_defs)
    return entity_defs


def warn_if_other_entities(run_id: str, ids: list[str], entities: list[Entity]) -> None:
    """Warn when the definitions a job starts with name entities the resumed savepoint lacks.

    A resume gives the savepoint's entities, so a definition added to the job since (or
    an entity removed before the savepoint) is not among them: the job should know, and
    ``add_entity`` it if it is new. Entities only in the savepoint are what
    ``add_entity`` makes: nothing to say.
    """
    resumed = {entity.id for entity in entities}
    missing = [entity_id for entity_id in ids if entity_id not in resumed]
    if missing:
        _log.warning(
            "run %r: entities defined at start are not in the savepoint resumed from "
            "(removed before it, or new definitions: add_entity() those): %s",
            run_id,
            missing,
        )
