"""What a store holds: runs, their sizes, growth over the savepoints, the biggest entities."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import BackendError, CorruptSavepointError, NoSavepointError, RunNotInitializedError
from ..storage import (
    SavepointInfo,
    SavepointLayout,
    SavepointSummary,
    Storage,
    StoredSavepoint,
    WriterToken,
    validate,
)
from ._common import require_run, savepoint_data_size

__all__ = [
    "EntitySize",
    "RunStats",
    "RunSummary",
    "SavepointStats",
    "load_savepoint",
    "run_stats",
    "run_summaries",
    "run_summary",
]


@dataclass(frozen=True)
class RunSummary:
    """One run at a glance.

    ``size`` is the bytes of savepoint data the run holds (manifests plus packs, a pack
    shared by incremental savepoints counted once). When the run's data is damaged so
    that it cannot be listed or sized, the unknown fields are None and ``damaged`` says why.
    """

    run_id: str
    savepoints: int | None
    latest_timestamp: int | None
    size: int | None
    damaged: str | None = None


@dataclass(frozen=True)
class SavepointStats:
    """One savepoint in :func:`run_stats`.

    ``size`` is what the savepoint itself added to the store (an incremental
    savepoint writes only the states that changed); ``state_bytes`` is the encoded size
    of every state it holds, ``growth`` the change of ``state_bytes`` since the
    previous savepoint (None for the first); ``states_written`` the states it wrote
    anew, ``states_reused`` those it points at in earlier savepoints' packs.
    """

    timestamp: int
    entity_count: int
    size: int
    state_bytes: int
    growth: int | None
    states_written: int = 0
    states_reused: int = 0


@dataclass(frozen=True)
class EntitySize:
    """One entity of the latest savepoint: encoded size and what it takes in the store."""

    entity_id: str
    encoded: int
    stored: int
    compressed: bool


@dataclass(frozen=True)
class RunStats:
    """Sizes of one run: total, per savepoint, and its biggest entities (latest savepoint);
    and who writes it: its writer token and when that was taken (``writer_problem`` says
    why it could not be read, when it could not: the sizes are still worth showing)."""

    run_id: str
    size: int
    savepoints: list[SavepointStats]
    biggest: list[EntitySize]
    entity_count: int
    writer: WriterToken | None
    writer_problem: str | None = None


#: How often :func:`run_summary` and :func:`run_stats` list a run again when a prune
#: removed a listed savepoint before it could be read.
STATS_ATTEMPTS = 20


def run_summary(storage: Storage, run_id: str) -> RunSummary:
    """Savepoint count, latest timestamp and size of one run (NoSavepointError if unknown).

    A savepoint pruned between the listing and the sizing is not there to size: the run
    is listed again, up to :data:`STATS_ATTEMPTS` times.
    """
    run_id = require_run(storage, run_id)
    for _attempt in range(STATS_ATTEMPTS):
        try:
            rows = storage.list_savepoints(run_id)
        except CorruptSavepointError as exc:
            return RunSummary(run_id, None, None, None, damaged=str(exc))
        latest = rows[-1].timestamp if rows else None
        try:
            size = savepoint_data_size(storage, run_id, [row.timestamp for row in rows])
        except CorruptSavepointError as exc:
            return RunSummary(run_id, len(rows), latest, None, damaged=str(exc))
        except NoSavepointError:  # pruned while we looked: count what is there now
            continue
        return RunSummary(run_id, len(rows), latest, size)
    raise BackendError(
        f"run {run_id!r}: its savepoints were pruned while they were sized, "
        f"{STATS_ATTEMPTS} times in a row; try again"
    )


def run_summaries(storage: Storage) -> list[RunSummary]:
    """:func:`run_summary` of every run, sorted by run id; runs deleted meanwhile are left out."""
    summaries = []
    for run_id in storage.list_runs():
        try:
            summaries.append(run_summary(storage, run_id))
        except NoSavepointError:
            continue  # deleted between the listing and the look
    return summaries


def run_stats(storage: Storage, run_id: str, *, top: int = 10) -> RunStats:
    """Sizes of a run: per savepoint, growth between them, the ``top`` biggest entities.

    Reads manifests only, never states. Raises NoSavepointError for an unknown run and
    CorruptSavepointError when a manifest is damaged. A run being pruned meanwhile is
    described as it is after the prune: a savepoint that vanished since the listing is
    left out, and the listing is taken again when the newest one vanished.
    """
    run_id = require_run(storage, run_id)
    top = validate.keep_n(top)
    for _attempt in range(STATS_ATTEMPTS):
        rows = storage.list_savepoints(run_id)
        found = _summarize_listed(storage, run_id, rows)
        if not rows:
            return _stats(run_id, rows, found, [], _writer(storage, run_id))
        if rows[-1].timestamp not in found:
            continue
        try:  # the latest savepoint entity by entity, for its biggest
            latest = storage.describe_savepoint(run_id, rows[-1].timestamp) if top else None
        except NoSavepointError:
            continue
        biggest = [] if latest is None else _biggest(latest, top)
        return _stats(run_id, rows, found, biggest, _writer(storage, run_id))
    raise BackendError(
        f"run {run_id!r}: its newest savepoint was pruned before it could be read, "
        f"{STATS_ATTEMPTS} times in a row; try again"
    )


def _summarize_listed(
    storage: Storage, run_id: str, rows: list[SavepointInfo]
) -> dict[int, SavepointSummary]:
    """The sizes of each listed savepoint; one pruned meanwhile is left out."""
    found = {}
    for row in rows:
        try:
            found[row.timestamp] = storage.summarize_savepoint(run_id, row.timestamp)
        except NoSavepointError:
            continue
    return found


def _writer(storage: Storage, run_id: str) -> tuple[WriterToken | None, str | None]:
    try:
        return storage.current_writer(run_id), None
    except RunNotInitializedError:  # deleted since it was listed: nobody writes it
        return None, None
    except BackendError as exc:  # a damaged token file, say: saves with a token fail too
        return None, str(exc)


def _stats(
    run_id: str,
    rows: list[SavepointInfo],
    found: dict[int, SavepointSummary],
    biggest: list[EntitySize],
    writer: tuple[WriterToken | None, str | None],
) -> RunStats:
    """The statistics of the listed savepoints still there (``found``: their sizes);
    ``writer`` is what :func:`_writer` found."""
    present = [row for row in rows if row.timestamp in found]
    savepoints: list[SavepointStats] = []
    previous: int | None = None
    packs: dict[str, int] = {}
    size = 0
    for row in present:
        summary = found[row.timestamp]
        state_bytes = summary.state_bytes
        growth = None if previous is None else state_bytes - previous
        written = summary.states_written
        savepoints.append(
            SavepointStats(
                row.timestamp,
                row.entity_count,
                row.size,
                state_bytes,
                growth,
                written,
                summary.entity_count - written,
            )
        )
        previous = state_bytes
        size += summary.manifest_size  # as savepoint_data_size counts: a shared pack once
        packs.update(summary.packs)
    if not present:
        return RunStats(run_id, 0, [], [], 0, *writer)
    latest = found[present[-1].timestamp]
    total = size + sum(packs.values())
    entities = latest.entity_count
    return RunStats(run_id, total, savepoints, biggest, entities, *writer)


def _biggest(layout: SavepointLayout, top: int) -> list[EntitySize]:
    """The ``top`` entities of a savepoint with the largest encoded states."""
    sizes = [
        EntitySize(state.entity_id, state.encoded_size, state.stored_size, state.compressed)
        for state in layout.states
    ]
    return sorted(sizes, key=lambda e: (-e.encoded, e.entity_id))[:top]


def load_savepoint(storage: Storage, run_id: str, timestamp: int | None = None) -> StoredSavepoint:
    """The savepoint at ``timestamp`` (latest when None), decoded, with the state version
    each state was saved with; names an unknown run."""
    run_id = require_run(storage, run_id)
    return storage.load_savepoint(run_id, timestamp)
