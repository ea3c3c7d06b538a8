"""Small pieces every operation shares: the progress callback, run lookup, sizes."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from ..errors import NoSavepointError
from ..storage import Storage, validate

__all__ = ["Progress", "require_run", "savepoint_data_size"]

#: Called as ``progress(done, total)``: once with ``done=0`` before the work starts, then
#: after every savepoint. ``total`` may grow if the work turns out larger.
Progress = Callable[[int, int], None]


def require_run(storage: Storage, run_id: str) -> str:
    """The validated run id; NoSavepointError naming the run when the store has no such run."""
    run_id = validate.run_id(run_id)
    if not storage.is_initialized(run_id):
        raise NoSavepointError(f"no run {run_id!r} in this store")
    return run_id


def savepoint_data_size(storage: Storage, run_id: str, timestamps: Iterable[int]) -> int:
    """Bytes these savepoints hold together: their manifests plus every pack they refer to.

    A pack shared by several (incremental) savepoints counts once. The backend's own
    overhead (table rows, file frames, indexes) is not included.
    """
    total = 0
    packs: dict[str, int] = {}
    for timestamp in timestamps:
        summary = storage.summarize_savepoint(run_id, timestamp)
        total += summary.manifest_size
        packs.update(summary.packs)
    return total + sum(packs.values())
