"""``dirstore:///absolute/dir``: a complete statestore backend in one small file.

The worked example of docs/backends.md. It keeps each run in a directory of plain
files written with ``open``, and passes the whole conformance kit, fault tests included
(tests/test_example_backend.py). The base class does everything else: validation,
encoding, checksums, the savepoint layout, incremental saves, retention, errors.

    store/
      <sha256 of run id>/          a run: created whole by one rename
        run_id                     the run id, as given
        savepoints/<ts:020d>       one savepoint: a header line, the manifest, its refs
        blobs/<name>               immutable blobs (the packs of states)
      <sha256 of run id>.lock      flock'ed around every read and write of the run
      <sha256 of run id>.token     the run's writer token and when it was taken (epoch
                                   ms); outlives the run on purpose
      tmp/                         runs being created, runs being dropped

Every file is written to a temporary name, fsynced, renamed over its final name, and
its directory fsynced: a crash leaves the old file or the new one. The rename of the
savepoint file is a save's commit point; blobs are written before it, freed after.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import secrets
import shutil
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from statestore.codecs import Codec
from statestore.errors import ConfigError
from statestore.storage import (
    Capabilities,
    MissingBlobsError,
    SavepointInfo,
    SavepointParts,
    SavepointRecord,
    Storage,
    WriterToken,
    epoch_ms,
)
from statestore.storage.durable import fsync_directory, write_file_atomically

SCHEME = "dirstore"
TIMESTAMP_DIGITS = 20  # 2**63 - 1 has 19 digits: names sort as the timestamps do
MAX_TIMESTAMP = 2**63 - 1
HEADER_LIMIT = 4096  # a header line is a few dozen bytes; never read more


class DirStorage(Storage):
    """Savepoints as plain files in one directory; processes on one host may share it."""

    capabilities = Capabilities(durable=True, multi_process=True, multi_host=False)
    driver_errors = (OSError,)

    def __init__(self, directory: str, codec: Codec | None = None) -> None:
        super().__init__(codec)
        self.directory = os.path.abspath(directory)
        os.makedirs(os.path.join(self.directory, "tmp"), exist_ok=True)

    @classmethod
    def from_url(cls, url: str, codec: Codec | None = None, **options: Any) -> DirStorage:
        """``dirstore:///absolute/dir``; the backend takes no options."""
        if options:
            raise ConfigError(f"{SCHEME}:// takes no options, got {sorted(options)}")
        path = url.removeprefix(f"{SCHEME}://")
        if not path.startswith("/") or "?" in path:
            raise ConfigError(f"bad {SCHEME} URL {url!r}: expected {SCHEME}:///absolute/dir")
        return cls(path, codec)

    # ---------------------------------------------------------------- paths and locks

    def _run_dir(self, run_id: str) -> str:
        # A run id may be 512 characters of anything; a hash is a safe file name.
        return os.path.join(self.directory, hashlib.sha256(run_id.encode()).hexdigest())

    @contextmanager
    def _locked(self, run_id: str, *, shared: bool = False) -> Iterator[str]:
        """Hold the run's lock (readers share it) and yield the run's directory.

        The lock file sits beside the run directory, so dropping the run (a rename of
        the directory) happens under the lock, and the file is never removed: a process
        waiting on a removed lock file would lock nothing.
        """
        with open(self._run_dir(run_id) + ".lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
            yield self._run_dir(run_id)  # closing the file releases the lock

    # ---------------------------------------------------------------- primitives

    def _create_run(self, run_id: str) -> None:
        with self._locked(run_id) as run_dir:
            if os.path.isdir(run_dir):
                return
            staged = os.path.join(self.directory, "tmp", secrets.token_hex(8))
            for part in ("savepoints", "blobs"):
                os.makedirs(os.path.join(staged, part))
            _write_durably(os.path.join(staged, "run_id"), run_id.encode())
            fsync_directory(staged)
            os.rename(staged, run_dir)  # the run appears whole, or not at all
            fsync_directory(self.directory)

    def _run_exists(self, run_id: str) -> bool:
        return os.path.isdir(self._run_dir(run_id))

    def _list_run_ids(self) -> list[str]:
        run_ids = []
        for name in os.listdir(self.directory):
            try:
                with open(os.path.join(self.directory, name, "run_id"), "rb") as file:
                    run_ids.append(file.read().decode())
            except (FileNotFoundError, NotADirectoryError, UnicodeDecodeError):
                continue  # a lock or token file, tmp/, a run dropped meanwhile, damage
        return run_ids

    def _drop_run(self, run_id: str) -> None:
        if not self._run_exists(run_id):
            return
        with self._locked(run_id) as run_dir:
            if not os.path.isdir(run_dir):
                return
            doomed = os.path.join(self.directory, "tmp", secrets.token_hex(8))
            os.rename(run_dir, doomed)  # the run vanishes whole; removing it can wait
            fsync_directory(self.directory)
        shutil.rmtree(doomed)

    def _take_writer_token(self, run_id: str) -> int:
        with self._locked(run_id) as run_dir:
            if not os.path.isdir(run_dir):
                raise self._not_initialized(run_id)
            token = self._current_token(run_id) + 1
            _write_durably(run_dir + ".token", f"{token} {epoch_ms()}".encode())
            return token

    def _read_writer_token(self, run_id: str) -> WriterToken | None:
        with self._locked(run_id, shared=True) as run_dir:
            if not os.path.isdir(run_dir):
                return None
            try:
                with open(run_dir + ".token", "rb") as file:
                    fields = file.read().split()
            except FileNotFoundError:
                return None
            return WriterToken(int(fields[0]), int(fields[1]) if len(fields) > 1 else None)

    def _current_token(self, run_id: str) -> int:
        try:
            with open(self._run_dir(run_id) + ".token", "rb") as file:
                return int(file.read().split()[0])  # "<token> <taken at, epoch ms>"
        except FileNotFoundError:
            return 0

    def _commit(self, run_id: str, record: SavepointRecord, writer_token: int | None) -> None:
        with self._locked(run_id) as run_dir:
            if not os.path.isdir(run_dir):
                raise self._not_initialized(run_id)
            if writer_token is not None:
                current = self._current_token(run_id)
                if writer_token != current:
                    raise self._stale(run_id, writer_token, current)
            blobs = os.path.join(run_dir, "blobs")
            older = [name for name in record.refs if name not in record.blobs]
            if not all(os.path.exists(os.path.join(blobs, name)) for name in older):
                raise MissingBlobsError(run_id)
            for name, data in record.blobs.items():
                _write_durably(os.path.join(blobs, name), data)
            path = _savepoint_path(run_dir, record.timestamp)
            replaced = os.path.exists(path)
            header = {
                "entity_count": record.entity_count,
                "size": record.size,
                "manifest_size": len(record.manifest),
            }
            _write_durably(  # the commit point
                path,
                json.dumps(header).encode()
                + b"\n"
                + record.manifest
                + json.dumps(record.refs).encode(),
            )
            if replaced:
                self._free_unreferenced_blobs(run_dir)

    def _read_savepoint(
        self, run_id: str, timestamp: int | None, *, with_blobs: bool
    ) -> SavepointParts | None:
        if not self._run_exists(run_id):
            return None  # and no lock file made for a run that does not exist
        # Under the run's lock, so no prune frees a blob between manifest and blobs.
        with self._locked(run_id, shared=True) as run_dir:
            timestamps = _timestamps(run_dir)
            if timestamp is None and timestamps:
                timestamp = timestamps[-1]
            if timestamp not in timestamps:
                return None
            manifest, refs = _read_savepoint_file(_savepoint_path(run_dir, timestamp))
            blobs = {}
            for name in refs if with_blobs else ():
                try:
                    with open(os.path.join(run_dir, "blobs", name), "rb") as file:
                        blobs[name] = file.read()
                except FileNotFoundError:
                    continue  # damage: the base reports the missing blob
            return SavepointParts(timestamp, manifest, blobs)

    def _list_savepoints(self, run_id: str) -> list[SavepointInfo]:
        run_dir = self._run_dir(run_id)
        rows = []
        for timestamp in _timestamps(run_dir):
            try:
                with open(_savepoint_path(run_dir, timestamp), "rb") as file:
                    header = _parse_header(file.readline(HEADER_LIMIT))
            except FileNotFoundError:
                continue  # deleted while listing
            rows.append(
                SavepointInfo(timestamp, header.get("entity_count", 0), header.get("size", 0))
            )
        return rows

    def _delete_savepoints(self, run_id: str, timestamps: Sequence[int]) -> None:
        if not self._run_exists(run_id):
            return
        with self._locked(run_id) as run_dir:
            for timestamp in timestamps:
                try:
                    os.remove(_savepoint_path(run_dir, timestamp))
                except FileNotFoundError:
                    continue
            if os.path.isdir(run_dir):
                fsync_directory(os.path.join(run_dir, "savepoints"))
                self._free_unreferenced_blobs(run_dir)

    def _free_unreferenced_blobs(self, run_dir: str) -> None:
        """Remove every blob no remaining savepoint refers to (the run's lock is held)."""
        needed: set[str] = set()
        for timestamp in _timestamps(run_dir):
            needed.update(_read_savepoint_file(_savepoint_path(run_dir, timestamp))[1])
        blobs = os.path.join(run_dir, "blobs")
        for name in set(os.listdir(blobs)) - needed:
            os.remove(os.path.join(blobs, name))
        fsync_directory(blobs)

    def _disk_usage(self) -> int:
        return sum(
            os.lstat(os.path.join(root, name)).st_size
            for root, _dirs, files in os.walk(self.directory)
            for name in files
        )


def open_dirstore(url: str, codec: Codec | None = None, **options: Any) -> DirStorage:
    """Open a ``dirstore://`` URL as ``open_storage`` opens a registered scheme.

    What the conformance kit's child processes call (``opener = "dirstore:open_dirstore"``),
    since this example is not registered under the ``statestore.backends`` entry point.
    """
    limit = options.pop("max_savepoint_bytes", None)
    storage = DirStorage.from_url(url, codec, **options)
    if limit is not None:
        storage.max_savepoint_bytes = limit
    return storage


# -------------------------------------------------------------------- files


def _savepoint_path(run_dir: str, timestamp: int) -> str:
    return os.path.join(run_dir, "savepoints", f"{timestamp:0{TIMESTAMP_DIGITS}d}")


def _timestamps(run_dir: str) -> list[int]:
    """The run's savepoint timestamps, ascending; none for a run that does not exist."""
    try:
        names = os.listdir(os.path.join(run_dir, "savepoints"))
    except FileNotFoundError:
        return []
    # Only names this backend writes: a leftover temporary file is no savepoint.
    found = (int(name) for name in names if len(name) == TIMESTAMP_DIGITS and name.isdigit())
    return sorted(timestamp for timestamp in found if timestamp <= MAX_TIMESTAMP)


def _parse_header(line: bytes) -> dict[str, int]:
    """The header's fields that are ints >= 0; a damaged header yields none of them."""
    try:
        header = json.loads(line)
    except ValueError:
        return {}
    if not isinstance(header, dict):
        return {}
    return {key: value for key, value in header.items() if type(value) is int and value >= 0}


def _read_savepoint_file(path: str) -> tuple[bytes, list[str]]:
    """The manifest and refs of a savepoint file; damage yields what the base rejects.

    The base verifies the manifest's checksum and every blob it names, so a damaged
    file needs no checks of its own here: it only must not crash or read wrong names.
    """
    with open(path, "rb") as file:
        header = _parse_header(file.readline(HEADER_LIMIT))
        manifest = file.read(header.get("manifest_size", 0))
        rest = file.read()
    try:
        refs = json.loads(rest)
    except ValueError:
        return manifest, []
    if not isinstance(refs, list):
        return manifest, []
    # A ref is a blob's file name: never one that walks out of the blobs directory.
    return manifest, [ref for ref in refs if _is_blob_name(ref)]


def _is_blob_name(ref: object) -> bool:
    """A name of a file in the blobs directory: never a path that walks out of it."""
    return (
        isinstance(ref, str) and ref not in ("", ".", "..") and "/" not in ref and "\0" not in ref
    )


def _write_durably(path: str, data: bytes) -> None:
    """Write ``path`` so that a crash leaves the old file or the new one, whole."""
    write_file_atomically(os.path.dirname(path), os.path.basename(path), data)
