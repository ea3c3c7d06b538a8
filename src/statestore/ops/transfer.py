"""Move runs: export to an archive file, import from one, copy between stores.

All three move the *encoded* states exactly as stored (checked against their
checksums on the way out), so a run arrives byte for byte as it left, whatever codec
wrote it. Writing a run is the same everywhere (:func:`_write_run`): refuse an existing
run unless ``replace``, save every savepoint in ascending order, read each back and
compare it with what was meant to be written, and with ``replace`` delete the
savepoints the run had that the source does not. Every check on the input happens
before anything is written.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

from ..errors import (
    ConfigError,
    CorruptSavepointError,
    InvalidArgumentError,
    NoSavepointError,
    StateStoreError,
)
from ..storage import Storage
from ._common import Progress, require_run
from ._stored import StoredSavepoint, delete_savepoints, read_manifest, read_stored
from .archive import ArchiveReader, ArchiveWriter

__all__ = ["TransferResult", "copy_runs", "export_run", "import_run"]


@dataclass(frozen=True)
class TransferResult:
    """One run moved: how many savepoints, and how many bytes of encoded states."""

    run_id: str
    savepoints: int
    state_bytes: int


def export_run(
    storage: Storage,
    run_id: str,
    path: str | os.PathLike[str],
    *,
    overwrite: bool = False,
    progress: Progress | None = None,
) -> TransferResult:
    """Write every savepoint of a run to an archive file (see :mod:`statestore.ops.archive`).

    Refuses an existing ``path`` unless ``overwrite``. A damaged savepoint stops the
    export (CorruptSavepointError) and leaves no file behind.
    """
    run_id = require_run(storage, run_id)
    rows = storage.list_savepoints(run_id)
    state_bytes = 0
    with ArchiveWriter(path, run_id, overwrite=overwrite) as writer:
        if progress is not None:
            progress(0, len(rows))
        for done, row in enumerate(rows, start=1):
            try:
                stored = read_stored(storage, run_id, row.timestamp)
            except NoSavepointError:
                continue  # pruned since it was listed
            writer.add(stored)
            state_bytes += _state_bytes(stored)
            if progress is not None:
                progress(done, len(rows))
        writer.commit()
        return TransferResult(run_id, writer.savepoints, state_bytes)


def _check_archive(path: str | os.PathLike[str]) -> tuple[str, set[str], int]:
    """Check a whole archive; return its run id, the codecs it uses and its savepoint count."""
    with ArchiveReader(path) as reader:
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
    run_id, codecs, count = _check_archive(path)
    _check_codecs(storage, run_id, codecs)
    existing = _check_target(storage, run_id, replace)
    with ArchiveReader(path) as reader:
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
    plans: list[tuple[str, list[int], list[int]]] = []
    for run_id in dict.fromkeys(run_ids):
        timestamps = [row.timestamp for row in source.list_savepoints(run_id)]
        codecs = {read_manifest(source, run_id, ts)[0].codec for ts in timestamps}
        _check_codecs(destination, run_id, codecs)
        plans.append((run_id, timestamps, _check_target(destination, run_id, replace)))
    total = sum(len(timestamps) for _run_id, timestamps, _existing in plans)
    tracker = _Tracker(progress, total)
    results = []
    for run_id, timestamps, existing in plans:
        savepoints = _read_each(source, run_id, timestamps)
        results.append(
            _write_run(
                destination, run_id, savepoints, total=None, existing=existing, progress=tracker
            )
        )
    return results


class _Tracker:
    """Progress over several runs: counts across calls of ``_write_run``."""

    def __init__(self, progress: Progress | None, total: int) -> None:
        self.progress, self.total, self.done = progress, total, 0
        if progress is not None:
            progress(0, total)

    def __call__(self, done: int, total: int) -> None:
        if done > 0 and self.progress is not None:
            self.done += 1
            self.progress(self.done, self.total)


def _read_each(
    storage: Storage, run_id: str, timestamps: Iterable[int]
) -> Iterator[StoredSavepoint]:
    for timestamp in timestamps:
        try:
            yield read_stored(storage, run_id, timestamp)
        except NoSavepointError:
            continue  # pruned in the source since it was listed


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
    return TransferResult(run_id, len(written), state_bytes)


def _state_bytes(stored: StoredSavepoint) -> int:
    return sum(len(data) for _entity_id, data in stored.entities)
