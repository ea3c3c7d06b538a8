"""Prune: plan which savepoints go and how much space that frees, then delete them."""

from __future__ import annotations

from dataclasses import dataclass

from .. import observe
from ..errors import CorruptSavepointError, NoSavepointError
from ..storage import Storage, validate
from ._common import require_run, savepoint_data_size

__all__ = ["PrunePlan", "apply_prune", "plan_prune", "plan_prune_all"]


@dataclass(frozen=True)
class PrunePlan:
    """What pruning a run to its ``keep_n`` newest savepoints deletes and keeps.

    ``bytes_freed`` is the savepoint data that goes (packs still needed by a kept,
    incremental savepoint stay and are not counted); None when a damaged manifest
    hides what its packs hold.
    """

    run_id: str
    keep_n: int
    delete: list[int]
    keep: list[int]
    bytes_freed: int | None


def plan_prune(storage: Storage, run_id: str, keep_n: int) -> PrunePlan:
    """The plan for keeping the ``keep_n`` newest savepoints of a run; changes nothing."""
    run_id = require_run(storage, run_id)
    keep_n = validate.keep_n(keep_n)
    timestamps = [row.timestamp for row in storage.list_savepoints(run_id)]
    cut = max(len(timestamps) - keep_n, 0)
    delete, keep = timestamps[:cut], timestamps[cut:]
    freed: int | None = 0
    if delete:
        try:
            freed = savepoint_data_size(storage, run_id, timestamps) - savepoint_data_size(
                storage, run_id, keep
            )
        except (CorruptSavepointError, NoSavepointError):
            freed = None  # damaged, or changed while we looked: the deletion still works
    return PrunePlan(run_id, keep_n, delete, keep, freed)


def plan_prune_all(storage: Storage, keep_n: int) -> list[PrunePlan]:
    """:func:`plan_prune` for every run of the store."""
    keep_n = validate.keep_n(keep_n)
    plans = []
    for run_id in storage.list_runs():
        try:
            plans.append(plan_prune(storage, run_id, keep_n))
        except NoSavepointError:
            continue  # deleted meanwhile
    return plans


def apply_prune(storage: Storage, plan: PrunePlan) -> None:
    """Delete all but the ``plan.keep_n`` newest savepoints of the run.

    Savepoints written since the plan was made count among the newest: pruning never
    deletes a savepoint newer than one it keeps.
    """
    storage.delete_old_savepoints(plan.run_id, plan.keep_n)
    observe.record_prune_freed(storage, plan.bytes_freed)
