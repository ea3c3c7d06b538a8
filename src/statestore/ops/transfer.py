"""Move runs: export to an archive file, import from one, copy between stores.

All three move the *encoded* states exactly as stored (checked against their
checksums on the way out), so a run arrives byte for byte as it left, whatever codec
wrote it. Writing a run is the same everywhere (:func:`_write_run`): refuse an existing
run unless ``replace``, save every savepoint in ascending order, read each back and
compare it with what was meant to be written, and with ``replace`` delete the
savepoints the run had that the source does not. Every check on the input happens
before anything is written.

A run may be written while it is moved: a writer that prunes can delete the savepoints
listed a moment ago. So the latest savepoint is read first, in one consistent read, and
always moved (last); older ones are read after it, and one pruned meanwhile is skipped
and counted in ``TransferResult.skipped``. The moved run therefore always ends with the
savepoint that was the source's latest when it was read, never with none of them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import IO

from ..errors import (
    ConfigError,
    CorruptSavepointError,
    InvalidArgumentError,
    NoSavepointError,
    StateStoreError,
)
from ..storage import Storage
from ._common import Progress, require_run
from ._stored import StoredSavepoint, delete_savepoints, read_stored
from .archive import ArchiveReader, ArchiveWriter

__all__ = ["TransferResult", "copy_runs", "export_run", "import_run"]


@dataclass(frozen=True)
class TransferResult:
    """One run moved: how many savepoints, and how many bytes of encoded states.

    ``skipped`` counts older savepoints pruned in the source while the run was read (the
    source's latest savepoint is never among them); ``latest`` is the timestamp of the
    newest savepoint moved, None for a run without savepoints.
    """

    run_id: str
    savepoints: int
    state_bytes: int
    skipped: int = 0
    latest: int | None = None


def export_run(
    storage: Storage,
    run_id: str,
    path: str | os.PathLike[str] | IO[bytes],
    *,
    overwrite: bool = False,
    progress: Progress | None = None,
) -> TransferResult:
    """Write every savepoint of a run to an archive file (see :mod:`statestore.ops.archive`).

    Refuses an existing ``path`` unless ``overwrite``, and anything there that is not a
    regular file (a device, directory, FIFO or symlink) even then. A damaged savepoint
    stops the export (CorruptSavepointError) and leaves no file behind. ``path`` may be
    a binary stream instead, written as it goes.
    """
    run_id = require_run(storage, run_id)
    state_bytes = 0
    with ArchiveWriter(path, run_id, overwrite=overwrite) as writer:
        snapshot = _Snapshot(storage, run_id)
        if progress is not None:
            progress(0, snapshot.total)
        for stored in snapshot:
            writer.add(stored)
            state_bytes += _state_bytes(stored)
            if progress is not None:
                progress(writer.savepoints, max(snapshot.total, writer.savepoints))
        writer.commit()
        return TransferResult(
            run_id, writer.savepoints, state_bytes, snapshot.skipped, snapshot.latest
        )


class _Snapshot:
    """A run's savepoints read so that the source's latest one is always among them.

    The latest is read first (one consistent read, retried by the storage when a
    prune frees its packs meanwhile), then the older ones listed after it; iterating
    yields the older ones that still exist, ascending, then the latest.
    """

    def __init__(self, storage: Storage, run_id: str) -> None:
        self.storage, self.run_id, self.skipped = storage, run_id, 0
        self._latest = _read_latest(storage, run_id)
        self.latest = None if self._latest is None else self._latest.timestamp
        self._older = (
            []
            if self.latest is None
            else [r.timestamp for r in storage.list_savepoints(run_id) if r.timestamp < self.latest]
        )
        self.total = len(self._older) + (self._latest is not None)

    def __iter__(self) -> Iterator[StoredSavepoint]:
        for timestamp in self._older:
            try:
                yield read_stored(self.storage, self.run_id, timestamp)
            except NoSavepointError:
                self.skipped += 1  # pruned in the source since it was listed
        if self._latest is not None:
            yield self._latest


def _read_latest(storage: Storage, run_id: str) -> StoredSavepoint | None:
    """The run's latest savepoint, or None when the run (still there) has none."""
    try:
        found_ts, codec, entities = storage.read_encoded_savepoint(run_id, None)
    except NoSavepointError:
        require_run(storage, run_id)  # deleted meanwhile: that is an error, not an empty run
        return None
    return StoredSavepoint(run_id, found_ts, codec, entities)


def _check_archive(storage: Storage, path: str | os.PathLike[str]) -> tuple[str, set[str], int]:
    """Check a whole archive against the storage's limits; return its run id, the codecs
    it uses and its savepoint count."""
    with ArchiveReader(path, max_savepoint_bytes=storage.max_savepoint_bytes) as reader:
        codecs: set[str] = set()
        count = 0
        for stored in reader.savepoints():
            codecs.add(stored.codec)
            count += 1
        return reader.header.run_id, codecs, count


def import_run(
    storage: Storage,
    path: str | os.PathLike[str],
    *,
    replace: bool = False,
    progress: Progress | None = None,
) -> TransferResult:
    """Import a run from an archive; the run keeps its id.

    The whole archive is checked first; a damaged one (CorruptSavepointError), a codec
    the storage does not use (ConfigError) or an existing run without ``replace``
    (InvalidArgumentError) is refused before anything is written.
    """
    run_id, codecs, count = _check_archive(storage, path)
    _check_codecs(storage, run_id, codecs)
    existing = _check_target(storage, run_id, replace)
    with ArchiveReader(path, max_savepoint_bytes=storage.max_savepoint_bytes) as reader:
        return _write_run(
            storage,
            run_id,
            reader.savepoints(),
            total=count,
            existing=existing,
            progress=progress,
        )


def copy_runs(
    source: Storage,
    destination: Storage,
    runs: Sequence[str] | None = None,
    *,
    replace: bool = False,
    progress: Progress | None = None,
) -> list[TransferResult]:
    """Copy runs (every run when ``runs`` is None) from ``source`` to ``destination``.

    Each savepoint written is read back from the destination and compared with the
    source's bytes. Every run is checked first (it exists in the source, the
    destination does not have it unless ``replace``, the destination's codec matches)
    before anything is written.
    """
    if source is destination:
        raise InvalidArgumentError("source and destination are the same storage")
    run_ids = [require_run(source, r) for r in runs] if runs is not None else source.list_runs()
    plans: list[tuple[str, int, list[int]]] = []
    for run_id in dict.fromkeys(run_ids):
        timestamps = [row.timestamp for row in source.list_savepoints(run_id)]
        _check_codecs(destination, run_id, _codecs(source, run_id, timestamps))
        plans.append((run_id, len(timestamps), _check_target(destination, run_id, replace)))
    tracker = _Tracker(progress, sum(count for _run_id, count, _existing in plans))
    results = []
    for run_id, _count, existing in plans:
        snapshot = _Snapshot(source, run_id)
        result = _write_run(
            destination, run_id, snapshot, total=None, existing=existing, progress=tracker
        )
        results.append(dataclasses.replace(result, skipped=snapshot.skipped))
    return results


def _codecs(storage: Storage, run_id: str, timestamps: Iterable[int]) -> set[str]:
    """The codecs of these savepoints; one pruned since it was listed is left out."""
    codecs = set()
    for timestamp in timestamps:
        try:
            codecs.add(storage.describe_savepoint(run_id, timestamp).codec)
        except NoSavepointError:
            continue  # pruned meanwhile: what is copied is checked again as it is written
    return codecs


class _Tracker:
    """Progress over several runs: counts across calls of ``_write_run``."""

    def __init__(self, progress: Progress | None, total: int) -> None:
        self.progress, self.total, self.done = progress, total, 0
        if progress is not None:
            progress(0, total)

    def __call__(self, done: int, total: int) -> None:
        if done > 0 and self.progress is not None:
            self.done += 1
            self.total = max(self.total, self.done)  # the run grew since it was listed
            self.progress(self.done, self.total)


def _check_codecs(storage: Storage, run_id: str, codecs: set[str]) -> None:
    """States are moved encoded: the destination must be opened with the codec that wrote them."""
    foreign = sorted(codecs - {storage.codec.name})
    if foreign:
        raise ConfigError(
            f"run {run_id!r} was written with codec {foreign[0]!r}; open the destination "
            f"with that codec (it uses {storage.codec.name!r})"
        )


def _check_target(storage: Storage, run_id: str, replace: bool) -> list[int]:
    """The run's savepoints in the destination; refuses an existing run unless ``replace``."""
    if not storage.is_initialized(run_id):
        return []
    if not replace:
        raise InvalidArgumentError(
            f"run {run_id!r} already exists in the destination; nothing was written "
            "(use --replace / replace=True to overwrite it)"
        )
    return [row.timestamp for row in storage.list_savepoints(run_id)]


def _write_run(
    storage: Storage,
    run_id: str,
    savepoints: Iterable[StoredSavepoint],
    *,
    total: int | None,
    existing: list[int],
    progress: Progress | None,
) -> TransferResult:
    """Save, read back and compare each savepoint; see the module docstring."""
    created = not existing and not storage.is_initialized(run_id)
    written: list[int] = []
    state_bytes = 0
    if progress is not None and total is not None:
        progress(0, total)
    try:
        storage.init_storage(run_id)
        for stored in savepoints:
            _check_codecs(storage, run_id, {stored.codec})  # a writer may have switched codec
            storage.save_encoded_savepoint(run_id, stored.timestamp, stored.entities)
            back = read_stored(storage, run_id, stored.timestamp)
            if back.entities != stored.entities or back.codec != stored.codec:
                raise CorruptSavepointError(
                    f"run {run_id!r}: savepoint {stored.timestamp} reads back differently "
                    "from what was written to the destination"
                )
            written.append(stored.timestamp)
            state_bytes += _state_bytes(stored)
            if progress is not None:
                progress(len(written), total or 0)
    except BaseException:
        if created:  # a run that did not exist before is not left half written
            with contextlib.suppress(StateStoreError):
                storage.delete_run(run_id)
        raise
    kept = set(written)
    delete_savepoints(storage, run_id, [ts for ts in existing if ts not in kept])
    return TransferResult(run_id, len(written), state_bytes, latest=max(written, default=None))


def _state_bytes(stored: StoredSavepoint) -> int:
    return sum(len(data) for _entity_id, data in stored.entities)
