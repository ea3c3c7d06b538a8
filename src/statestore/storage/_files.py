"""``file:///absolute/dir``: one directory per run, plain files, no server.

Layout of a store; every name in it is chosen here, none by a caller::

    <store>/
      .statestore             the marker: "statestore file store" and a format line
      .tmp/                   runs being created, renamed into place once complete
      .trash/                 runs being deleted: renamed here first, then removed
      <safe name>/            one run: a sanitized prefix of its id + a SHA-256 of it
        run-id                the exact run id, UTF-8 (what list_runs returns)
        writer-token          the writer token, decimal; its mtime is when it was taken
        lock                  flock()ed: commits, deletes and drops of a run serialize
        packs/<name>          immutable blobs, never rewritten in place
        savepoints/<ts>.sp    one file per savepoint: manifest + refs, framed, checksummed

Every file is written to a temp file in its own directory, fsynced, renamed over its
final name, and the directory fsynced; the rename of the savepoint file is the commit
point. Names starting with a dot are temp files or housekeeping; reads ignore them.
Needs POSIX ``flock`` (Linux, macOS); the lock works across processes and threads.

Nothing outside the store is ever touched: a symbolic link (or any non-directory) where
one of the directories above is expected is refused with a BackendError, a link where a
file is expected reads as damage, and every file is opened with ``O_NOFOLLOW``. A
directory is recognised as a store (its marker, or the layout written before markers
existed) before anything in it is cleaned up; anything else is refused.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import hashlib
import os
import re
import secrets
import shutil
import stat
import struct
import time
import urllib.parse
from collections.abc import Iterator, Sequence
from typing import Any, NamedTuple

import msgpack

from ..codecs import Codec
from ..errors import BackendError, ConfigError, CorruptSavepointError
from ._base import (
    MissingBlobsError,
    SavepointInfo,
    SavepointParts,
    Storage,
    WriterToken,
    describe_error,
)
from .durable import TEMP_PREFIX, fsync_directory, versioned_crc, write_file_atomically
from .layout import SavepointRecord
from .url import split_store_url

__all__ = ["FileStorage", "run_dir_name"]

TMP_DIR = ".tmp"
TRASH_DIR = ".trash"
RUN_ID_FILE = "run-id"
WRITER_FILE = "writer-token"
LOCK_FILE = "lock"
PACKS_DIR = "packs"
SAVEPOINTS_DIR = "savepoints"
MARKER_FILE = ".statestore"
_MARKER_MAGIC = "statestore file store"
_MARKER_FORMAT = 1
_MARKER = f"{_MARKER_MAGIC}\nformat {_MARKER_FORMAT}\n".encode()
#: A run directory in .tmp older than this was abandoned by a crashed creator.
ABANDONED_AFTER_SECONDS = 3600

_SAVEPOINT_NAME = re.compile(r"(\d{20})\.sp")
_BLOB_NAME = re.compile(r"[0-9A-Za-z_-]{1,128}")
_UNSAFE_CHARS = re.compile(r"[^a-z0-9]+")
#: What run_dir_name returns: how a run directory of a store without a marker is known.
_RUN_DIR_NAME = re.compile(r"(?:[a-z0-9_]{1,24}-)?[0-9a-f]{40}")

_FRAME = struct.Struct(">4sBQI")  # magic, version, body length, CRC-32 of the body
_FRAME_MAGIC = b"SSSV"
_FRAME_VERSION = 1


def run_dir_name(run_id: str) -> str:
    """The directory name of a run: lowercase ASCII letters, digits, ``_`` and ``-`` only.

    The hash makes it unique (also on case-insensitive file systems: the name is all
    lowercase); the prefix only helps a person browsing the store. It can never be
    ``.``, ``..``, a hidden name, a path, a reserved device name or over-long.
    """
    digest = hashlib.sha256(run_id.encode("utf-8")).hexdigest()[:40]
    prefix = _UNSAFE_CHARS.sub("_", run_id.lower())[:24].strip("_")
    return f"{prefix}-{digest}" if prefix else digest


def savepoint_file_name(timestamp: int) -> str:
    """Zero-padded, so names sort like timestamps."""
    return f"{timestamp:020d}.sp"


class SavepointFile(NamedTuple):
    """The content of one savepoint file."""

    manifest: bytes
    refs: tuple[str, ...]
    entity_count: int
    size: int


def encode_savepoint_file(timestamp: int, content: SavepointFile) -> bytes:
    """Frame a savepoint file with its own length and checksum, so damage is detected."""
    body: bytes = msgpack.packb(
        {
            "ts": timestamp,
            "manifest": content.manifest,
            "refs": list(content.refs),
            "entities": content.entity_count,
            "size": content.size,
        },
        use_bin_type=True,
    )
    crc = versioned_crc(_FRAME_VERSION, body)
    return _FRAME.pack(_FRAME_MAGIC, _FRAME_VERSION, len(body), crc) + body


def decode_savepoint_file(run_id: str, timestamp: int, data: bytes) -> SavepointFile:
    """Check and parse a savepoint file; anything wrong is a CorruptSavepointError."""

    def corrupt(why: str) -> CorruptSavepointError:
        return CorruptSavepointError(
            f"run {run_id!r}: savepoint {timestamp} is corrupt: savepoint file {why}"
        )

    if len(data) < _FRAME.size:
        raise corrupt("is truncated")
    magic, version, length, crc = _FRAME.unpack_from(data)
    if magic != _FRAME_MAGIC:
        raise corrupt("has a bad header")
    body = memoryview(data)[_FRAME.size :]
    if len(body) != length:
        raise corrupt(f"is torn ({len(body)} of {length} bytes)")
    if versioned_crc(version, body) != crc:
        raise corrupt("fails its checksum")
    if version > _FRAME_VERSION:
        raise ConfigError(
            f"run {run_id!r}: savepoint {timestamp} uses file format {version}; this "
            f"statestore reads up to {_FRAME_VERSION}: upgrade statestore"
        )
    try:
        fields: dict[str, Any] = msgpack.unpackb(body, raw=False)
        refs = tuple(fields["refs"])
        if not all(isinstance(ref, str) for ref in refs):
            raise TypeError("refs must be str")
        stored_ts = int(fields["ts"])
        found = SavepointFile(
            bytes(fields["manifest"]), refs, int(fields["entities"]), int(fields["size"])
        )
    except Exception as exc:  # any malformed body: bad msgpack, missing key, wrong type
        raise corrupt(f"does not decode ({exc})") from None
    if stored_ts != timestamp:
        raise corrupt(f"belongs to timestamp {stored_ts}")
    return found


class NotARegularFileError(OSError):
    """A symlink, FIFO, device or directory where the store keeps a file: never followed."""


def _read(path: str) -> bytes | None:
    """The file's bytes, or None when it does not exist (deleted meanwhile).

    ``O_NOFOLLOW`` refuses a planted symlink, ``O_NONBLOCK`` keeps a planted FIFO from
    hanging the open, and only a regular file is read: anything else raises
    NotARegularFileError, which each caller treats as damage.
    """
    found = _read_with_stat(path)
    return None if found is None else found[0]


def _read_with_stat(path: str) -> tuple[bytes, os.stat_result] | None:
    """As :func:`_read`, with the file's status (of the file read, not of a later one)."""
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise NotARegularFileError(errno.ELOOP, "a symbolic link, not followed", path) from None
        raise
    with open(fd, "rb") as file:
        status = os.fstat(fd)
        if not stat.S_ISREG(status.st_mode):
            raise NotARegularFileError(errno.EINVAL, "not a regular file", path)
        return file.read(), status


def _is_real_dir(path: str) -> bool | None:
    """True for a directory (not a link to one), False for anything else, None if missing."""
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode)
    except FileNotFoundError:
        return None


def _not_followed(path: str, whose: str) -> BackendError:
    return BackendError(
        f"{whose}: {path} is a symbolic link or not a directory; the store never follows "
        "a link out of itself (remove it or restore the directory)"
    )


def _own_dir(path: str, whose: str) -> str:
    """``path`` as a real directory of the store, made if missing; a link is refused."""
    if _is_real_dir(path) is None:
        with contextlib.suppress(FileExistsError):  # made meanwhile: checked below
            os.mkdir(path, 0o755)
    if not _is_real_dir(path):
        raise _not_followed(path, whose)
    return path


def _remove_tree(path: str) -> None:
    """Remove a directory tree; gone already (another process cleaned it) is fine.

    A link or file is unlinked itself, never followed (rmtree refuses a link at the
    top and does not follow links below it).
    """
    if _is_real_dir(path) is False:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        return
    shutil.rmtree(path, ignore_errors=True)
    if os.path.lexists(path):
        raise OSError(errno.ENOTEMPTY, "could not remove leftover directory", path)


class FileStorage(Storage):
    """Savepoints as plain files under ``directory`` (created if missing)."""

    driver_errors = (OSError,)

    def __init__(self, directory: str | os.PathLike[str], codec: Codec | None = None) -> None:
        super().__init__(codec)
        path = os.fspath(directory)
        if not isinstance(path, str) or not path or "\x00" in path:
            raise ConfigError(f"file store directory must be a path, not {path!r}")
        self.directory = os.path.abspath(path)
        with self._boundary():
            if not os.path.isdir(self.directory):
                os.makedirs(self.directory, exist_ok=True)
                fsync_directory(os.path.dirname(self.directory))  # the new store's entry, durable
            has_marker = self._recognise()
            if not self._writable():
                self.capabilities = dataclasses.replace(self.capabilities, read_only=True)
                return  # a read-only open reads, and never cleans anything up
            if not has_marker:
                write_file_atomically(self.directory, MARKER_FILE, _MARKER)
        # A crashed drop or create left something behind: best effort.
        with contextlib.suppress(OSError):
            self._clean_housekeeping()

    @classmethod
    def from_url(cls, url: str, codec: Codec | None = None, **options: Any) -> FileStorage:
        """``file:///absolute/dir`` (percent-escapes decoded); takes no options."""
        if options:
            raise ConfigError(f"file:// takes no options, got {sorted(options)}")
        path = _directory(url)
        if path is None:
            raise ConfigError(
                f"bad file store URL {url!r}: expected file:///absolute/dir "
                "(three slashes, then an absolute path to a directory)"
            )
        return cls(path, codec=codec)

    @classmethod
    def missing_location(cls, url: str) -> str | None:
        with contextlib.suppress(ConfigError):
            path = _directory(url)
            if path is not None and not os.path.isdir(path):
                return path
        return None

    def __repr__(self) -> str:
        return f"FileStorage({self.directory!r})"

    # ---------------------------------------------------------------- recognising a store

    def _recognise(self) -> bool:
        """Whether the store has its marker; a directory that is no store is a ConfigError.

        Without a marker, an empty directory is a new store, and one holding only what
        statestore wrote before markers existed (.tmp, .trash, run directories with a
        run-id file, temp files) is an older store. Anything else is someone's data:
        refused before any cleanup could delete part of it.
        """
        try:
            marker = _read(os.path.join(self.directory, MARKER_FILE))
        except NotARegularFileError:
            raise self._foreign(f"its {MARKER_FILE} is not a regular file") from None
        if marker is not None:
            self._check_marker(marker)
            return True
        with os.scandir(self.directory) as entries:
            for entry in entries:
                if not self._is_legacy_entry(entry):
                    raise self._foreign(f"it holds {entry.name!r}")
        return False

    @staticmethod
    def _is_legacy_entry(entry: os.DirEntry[str]) -> bool:
        if entry.name.startswith(TEMP_PREFIX):
            return entry.is_file(follow_symlinks=False)  # a crashed marker write
        if not entry.is_dir(follow_symlinks=False):
            return False
        if entry.name in (TMP_DIR, TRASH_DIR):
            return True
        if not _RUN_DIR_NAME.fullmatch(entry.name):
            return False
        try:
            mode = os.lstat(os.path.join(entry.path, RUN_ID_FILE)).st_mode
        except FileNotFoundError:
            return False
        return stat.S_ISREG(mode)

    def _check_marker(self, marker: bytes) -> None:
        lines = marker.decode("utf-8", "replace").splitlines()
        version = lines[1].removeprefix("format ") if len(lines) > 1 else ""
        if not lines or lines[0] != _MARKER_MAGIC or not version.isdigit():
            raise self._foreign(f"its {MARKER_FILE} marker is not statestore's")
        if int(version) > _MARKER_FORMAT:
            raise ConfigError(
                f"file store {self.directory} uses store format {version}; this "
                f"statestore reads up to {_MARKER_FORMAT}: upgrade statestore"
            )

    def _foreign(self, why: str) -> ConfigError:
        return ConfigError(
            f"{self.directory} is not a statestore store ({why}); refusing to use a "
            "directory with other content: name an empty or new directory"
        )

    def _writable(self) -> bool:
        """False on a read-only mount or without write permission (also for root
        without CAP_DAC_OVERRIDE: access() asks the kernel, which checks both)."""
        if os.statvfs(self.directory).f_flag & os.ST_RDONLY:
            return False
        return os.access(self.directory, os.W_OK | os.X_OK)

    # ---------------------------------------------------------------- paths and locks

    def _run_dir(self, run_id: str) -> str:
        return os.path.join(self.directory, run_dir_name(run_id))

    @contextlib.contextmanager
    def _locked(self, run_id: str, *, exclusive: bool = True) -> Iterator[str | None]:
        """Hold the run's lock; yields its directory, or None when the run does not exist.

        A separate open() per call gives each caller its own lock, so threads of one
        process exclude each other too. After locking, the lock file must still be the
        one at the run's path: a drop may have moved the run to the trash meanwhile.
        """
        run_dir = self._run_dir(run_id)
        lock_path = os.path.join(run_dir, LOCK_FILE)
        while True:
            if self._checked_run_dir(run_id) is None:
                yield None
                return
            try:
                fd = os.open(lock_path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            except FileNotFoundError:
                yield None
                return
            except OSError as exc:
                if exc.errno == errno.ELOOP:
                    raise _not_followed(lock_path, f"run {run_id!r}") from None
                raise
            try:
                fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
                held = os.fstat(fd)
                try:
                    current = os.stat(lock_path)
                except FileNotFoundError:
                    continue  # dropped while we waited: look again
                if (held.st_dev, held.st_ino) == (current.st_dev, current.st_ino):
                    self._checked_run_dir(run_id)  # as it is now that we hold the lock
                    yield run_dir
                    return
            finally:
                os.close(fd)  # releases the lock

    def _checked_run_dir(self, run_id: str) -> str | None:
        """The run's directory, None if it does not exist; a link in its layout is refused.

        The run directory, its packs and its savepoints must each be a real directory:
        a planted link there would make a save write, and a prune delete, outside.
        """
        run_dir = self._run_dir(run_id)
        whose = f"run {run_id!r}"
        found = _is_real_dir(run_dir)
        if found is None:
            return None
        if not found:
            raise _not_followed(run_dir, whose)
        for name in (PACKS_DIR, SAVEPOINTS_DIR):
            path = os.path.join(run_dir, name)
            if _is_real_dir(path) is False:
                raise _not_followed(path, whose)
        return run_dir

    def _read_token(self, run_id: str, run_dir: str) -> int:
        return self._read_token_file(run_id, run_dir)[0]

    def _read_token_file(self, run_id: str, run_dir: str) -> tuple[int, int]:
        """The token and the file's modification time (epoch ms): when it was taken, as
        the file is written (atomically) only then."""
        try:
            found = _read_with_stat(os.path.join(run_dir, WRITER_FILE))
        except NotARegularFileError:
            found = None
        text = found[0].strip() if found else b""
        if found is None or not text.isdigit():
            raise BackendError(f"run {run_id!r}: the writer token file in {run_dir} is damaged")
        return int(text), found[1].st_mtime_ns // 1_000_000

    @staticmethod
    def _timestamps(savepoints_dir: str) -> list[int]:
        found = (_SAVEPOINT_NAME.fullmatch(name) for name in os.listdir(savepoints_dir))
        return sorted(int(match.group(1)) for match in found if match)

    @staticmethod
    def _read_packs(run_dir: str, names: Sequence[str]) -> dict[str, bytes]:
        packs: dict[str, bytes] = {}
        for name in names:
            # A name from a damaged manifest must not become a path outside the run.
            if _BLOB_NAME.fullmatch(name):
                try:
                    data = _read(os.path.join(run_dir, PACKS_DIR, name))
                except NotARegularFileError:
                    continue  # a planted link is a missing pack: the savepoint is damaged
                if data is not None:
                    packs[name] = data
        return packs

    # ---------------------------------------------------------------- primitives

    def _create_run(self, run_id: str) -> None:
        final = self._run_dir(run_id)
        if self._checked_run_dir(run_id) is not None:
            return
        if os.path.lexists(final):  # a dangling link
            raise _not_followed(final, f"run {run_id!r}")
        # Built aside and renamed into place, so a half-created run never appears.
        staging = _own_dir(os.path.join(self.directory, TMP_DIR), f"run {run_id!r}")
        building = os.path.join(staging, secrets.token_hex(8))
        os.mkdir(building, 0o755)
        try:
            write_file_atomically(
                building, RUN_ID_FILE, run_id.encode("utf-8"), sync_directory=False
            )
            write_file_atomically(building, WRITER_FILE, b"0\n", sync_directory=False)
            write_file_atomically(building, LOCK_FILE, b"", sync_directory=False)
            os.mkdir(os.path.join(building, PACKS_DIR), 0o755)
            os.mkdir(os.path.join(building, SAVEPOINTS_DIR), 0o755)
            fsync_directory(building)
            try:
                os.rename(building, final)
            except OSError as exc:
                if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                    raise
                return  # another process created the run first: theirs stands
            fsync_directory(self.directory)
        finally:
            shutil.rmtree(building, ignore_errors=True)  # still there only if not renamed

    def _run_exists(self, run_id: str) -> bool:
        return self._checked_run_dir(run_id) is not None

    def _list_run_ids(self) -> list[str]:
        run_ids: list[str] = []
        with os.scandir(self.directory) as entries:
            for entry in entries:
                # A link is no run of ours, even one pointing at a run elsewhere.
                if entry.name.startswith(".") or not entry.is_dir(follow_symlinks=False):
                    continue
                try:
                    data = _read(os.path.join(entry.path, RUN_ID_FILE))
                except NotARegularFileError:
                    continue
                if data is None:
                    continue  # not a run (or dropped while we looked)
                try:
                    run_id = data.decode("utf-8")
                except UnicodeDecodeError:
                    continue
                # Only a run reachable under its own id is listed: skips foreign dirs.
                if run_dir_name(run_id) == entry.name:
                    run_ids.append(run_id)
        return run_ids

    def _drop_run(self, run_id: str) -> None:
        with self._locked(run_id) as run_dir:
            if run_dir is None:
                return
            trash = _own_dir(os.path.join(self.directory, TRASH_DIR), f"run {run_id!r}")
            doomed = os.path.join(trash, f"{os.path.basename(run_dir)}-{secrets.token_hex(8)}")
            os.rename(run_dir, doomed)  # the run is gone at once, whatever happens next
            fsync_directory(self.directory)
        # Outside the lock: a failure here leaves trash that the next open or compact clears.
        shutil.rmtree(doomed, ignore_errors=True)

    def _take_writer_token(self, run_id: str) -> int:
        with self._locked(run_id) as run_dir:
            if run_dir is None:
                raise self._not_initialized(run_id)
            token = self._read_token(run_id, run_dir) + 1
            write_file_atomically(run_dir, WRITER_FILE, f"{token}\n".encode())
            return token

    def _read_writer_token(self, run_id: str) -> WriterToken | None:
        with self._locked(run_id, exclusive=False) as run_dir:  # no drop moves it meanwhile
            if run_dir is None:
                return None
            token, taken_at = self._read_token_file(run_id, run_dir)
            return WriterToken(token, taken_at) if token else None

    def _commit(self, run_id: str, record: SavepointRecord, writer_token: int | None) -> None:
        with self._locked(run_id) as run_dir:
            if run_dir is None:
                raise self._not_initialized(run_id)
            if writer_token is not None:
                current = self._read_token(run_id, run_dir)
                if writer_token != current:
                    raise self._stale(run_id, writer_token, current)
            packs_dir = os.path.join(run_dir, PACKS_DIR)
            for name in (*record.refs, *record.blobs):
                if not _BLOB_NAME.fullmatch(name):
                    raise BackendError(f"run {run_id!r}: refusing blob name {name!r}")
            for name in record.refs:
                if name not in record.blobs and not self._is_pack(packs_dir, name):
                    raise MissingBlobsError(run_id)
            for name, blob in record.blobs.items():
                write_file_atomically(packs_dir, name, blob, sync_directory=False)
            if record.blobs:
                fsync_directory(packs_dir)  # packs durable before a savepoint names them
            savepoints_dir = os.path.join(run_dir, SAVEPOINTS_DIR)
            file_name = savepoint_file_name(record.timestamp)
            replacing = os.path.lexists(os.path.join(savepoints_dir, file_name))
            content = SavepointFile(record.manifest, record.refs, record.entity_count, record.size)
            # The rename inside is the commit point: before it, the old state stands.
            write_file_atomically(
                savepoints_dir, file_name, encode_savepoint_file(record.timestamp, content)
            )
            if replacing:
                self._collect(run_id, run_dir)

    @staticmethod
    def _is_pack(packs_dir: str, name: str) -> bool:
        """Whether the pack is stored, as a regular file (a link is not a pack)."""
        try:
            return stat.S_ISREG(os.lstat(os.path.join(packs_dir, name)).st_mode)
        except FileNotFoundError:
            return False

    def _savepoint_file(self, run_id: str, path: str, timestamp: int) -> bytes | None:
        """A savepoint file's bytes; a link or other non-file there is a damaged savepoint."""
        try:
            return _read(path)
        except NotARegularFileError:
            raise CorruptSavepointError(
                f"run {run_id!r}: savepoint {timestamp} is corrupt: its file {path} is a "
                "symbolic link or not a regular file (not followed)"
            ) from None

    def _read_savepoint(
        self, run_id: str, timestamp: int | None, *, with_blobs: bool
    ) -> SavepointParts | None:
        # A shared lock: no commit or prune frees this savepoint's packs mid-read.
        with self._locked(run_id, exclusive=False) as run_dir:
            if run_dir is None:
                return None
            savepoints_dir = os.path.join(run_dir, SAVEPOINTS_DIR)
            if timestamp is None:
                stamps = self._timestamps(savepoints_dir)
                if not stamps:
                    return None
                timestamp = stamps[-1]
            path = os.path.join(savepoints_dir, savepoint_file_name(timestamp))
            data = self._savepoint_file(run_id, path, timestamp)
            if data is None:
                return None
            found = decode_savepoint_file(run_id, timestamp, data)
            packs = self._read_packs(run_dir, found.refs) if with_blobs else {}
        return SavepointParts(timestamp, found.manifest, packs)

    def _list_savepoints(self, run_id: str) -> list[SavepointInfo]:
        with self._locked(run_id, exclusive=False) as run_dir:
            if run_dir is None:
                return []
            savepoints_dir = os.path.join(run_dir, SAVEPOINTS_DIR)
            rows: list[SavepointInfo] = []
            for timestamp in self._timestamps(savepoints_dir):
                path = os.path.join(savepoints_dir, savepoint_file_name(timestamp))
                data: bytes | None = None
                try:
                    data = self._savepoint_file(run_id, path, timestamp)
                    if data is None:
                        continue
                    found = decode_savepoint_file(run_id, timestamp, data)
                except CorruptSavepointError:
                    # Still listed, so it can be verified, skipped by a resuming run and
                    # pruned; reading it raises CorruptSavepointError.
                    rows.append(SavepointInfo(timestamp, 0, len(data or b"")))
                else:
                    rows.append(SavepointInfo(timestamp, found.entity_count, found.size))
            return rows

    def _delete_savepoints(self, run_id: str, timestamps: Sequence[int]) -> None:
        with self._locked(run_id) as run_dir:
            if run_dir is None:
                return
            savepoints_dir = os.path.join(run_dir, SAVEPOINTS_DIR)
            for timestamp in timestamps:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(os.path.join(savepoints_dir, savepoint_file_name(timestamp)))
            fsync_directory(savepoints_dir)
            self._collect(run_id, run_dir)

    def _collect(self, run_id: str, run_dir: str) -> None:
        """Delete packs no savepoint refers to, and temp files; the caller holds the lock.

        Every write to a run happens under its lock, so a temp file or unreferenced
        pack seen here is a leftover of a crashed or replaced commit, never one in flight.
        """
        savepoints_dir = os.path.join(run_dir, SAVEPOINTS_DIR)
        needed: set[str] = set()
        for name in os.listdir(savepoints_dir):
            path = os.path.join(savepoints_dir, name)
            if name.startswith(TEMP_PREFIX):
                os.unlink(path)
            elif match := _SAVEPOINT_NAME.fullmatch(name):
                timestamp = int(match.group(1))
                try:
                    data = self._savepoint_file(run_id, path, timestamp) or b""
                    needed.update(decode_savepoint_file(run_id, timestamp, data).refs)
                except CorruptSavepointError:
                    return  # cannot tell what a damaged savepoint needs: keep every pack
        packs_dir = os.path.join(run_dir, PACKS_DIR)
        for name in os.listdir(packs_dir):
            if name not in needed:
                os.unlink(os.path.join(packs_dir, name))
        fsync_directory(packs_dir)

    def _compact(self) -> None:
        self._clean_housekeeping()
        for run_id in self._list_run_ids():
            with self._locked(run_id) as run_dir:
                if run_dir is not None:
                    self._collect(run_id, run_dir)

    def _disk_usage(self) -> int:
        total = 0
        # os.walk never descends into a symlink, and lstat never follows one: a link
        # planted in the store counts as the link, not as what it points to.
        for root, _dirs, files in os.walk(self.directory):
            for name in files:
                try:
                    total += os.lstat(os.path.join(root, name)).st_size
                except FileNotFoundError:
                    continue  # pruned while we walked
        return total

    def _clean_housekeeping(self) -> None:
        """Finish crashed drops (everything in .trash) and abandoned creates (old .tmp)."""
        # Only real directories: a link planted as .trash or .tmp is never followed.
        trash = os.path.join(self.directory, TRASH_DIR)
        if _is_real_dir(trash):
            for name in os.listdir(trash):
                _remove_tree(os.path.join(trash, name))
        staging = os.path.join(self.directory, TMP_DIR)
        if _is_real_dir(staging):
            cutoff = time.time() - ABANDONED_AFTER_SECONDS
            for name in os.listdir(staging):
                path = os.path.join(staging, name)
                with contextlib.suppress(FileNotFoundError):
                    if os.lstat(path).st_mtime < cutoff:
                        _remove_tree(path)

    def _describe_failure(self, exc: BaseException) -> str:
        """Name the common causes plainly: a full disk, a read-only store, permissions."""
        return f"file store {self.directory}: {describe_error(exc)}"


def _directory(url: str) -> str | None:
    """The directory of a ``file:///absolute/dir`` URL; None if malformed."""
    parts = split_store_url(url)
    path = urllib.parse.unquote(parts.path)
    if (
        parts.scheme.lower() != "file"
        or parts.netloc not in ("", "localhost")
        or parts.query
        or parts.fragment
        or not path.startswith("/")
        or not path.strip("/")
        or "\x00" in path
    ):
        return None
    return path
