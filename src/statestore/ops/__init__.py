"""Operations on a store, each the library function under one ``statestore`` command.

====================================  ==============================================
``run_summaries``, ``run_summary``    ``statestore runs``
``load_savepoint``                    ``statestore show``
``run_stats``                         ``statestore stats``
``verify``                            ``statestore verify``
``plan_prune``, ``plan_prune_all``,   ``statestore prune``
``apply_prune``
``export_run``, ``import_run``        ``statestore export`` / ``import``
``copy_runs``                         ``statestore copy``
====================================  ==============================================

``statestore savepoints``, ``delete`` and ``compact`` are the storage's own
``list_savepoints``, ``delete_run`` and ``compact``.

>>> import statestore, statestore.ops
>>> with statestore.open_storage("memory://") as storage:
...     storage.init_storage("run-1")
...     storage.save_savepoint("run-1", 60_000, [("sensor-1", {"count": 3})])
...     statestore.ops.verify(storage).ok
True
"""

from __future__ import annotations

from ._common import Progress, require_run
from .archive import ArchiveHeader, ArchiveReader, ArchiveWriter
from .inspect import (
    EntitySize,
    RunStats,
    RunSummary,
    SavepointStats,
    load_savepoint,
    run_stats,
    run_summaries,
    run_summary,
)
from .prune import PrunePlan, apply_prune, plan_prune, plan_prune_all
from .transfer import TransferResult, copy_runs, export_run, import_run
from .verify import Damage, VerifyReport, verify

__all__ = [
    "ArchiveHeader",
    "ArchiveReader",
    "ArchiveWriter",
    "Damage",
    "EntitySize",
    "Progress",
    "PrunePlan",
    "RunStats",
    "RunSummary",
    "SavepointStats",
    "TransferResult",
    "VerifyReport",
    "apply_prune",
    "copy_runs",
    "export_run",
    "import_run",
    "load_savepoint",
    "plan_prune",
    "plan_prune_all",
    "require_run",
    "run_stats",
    "run_summaries",
    "run_summary",
    "verify",
]
