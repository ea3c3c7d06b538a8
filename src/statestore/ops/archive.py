"""The run archive: one file holding a run's savepoints, readable by any backend.

Layout::

    b"STATESTORE-ARCHIVE\\n"  version (1 byte)
    frame*                     each: flags (1 byte), stored length (8), body length (8),
                               SHA-256 of the body (32), stored bytes (zstd when flag 1)
    body                       MessagePack: a header, then one savepoint per frame, then
                               an end frame with the count and a SHA-256 over every
                               earlier frame's digest (a lost, repeated or reordered frame
                               fails it; a truncated archive has no end frame)

A savepoint frame holds the codec name and the *encoded* states exactly as the store
held them (already checked against the store's checksums), so an archive round-trips
bytes exactly, whatever codec wrote them, without decoding anything.
The archive is written to a temporary file beside the target, fsynced and renamed into
place: a crash leaves the old file or the complete new one.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import stat
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from types import TracebackType
from typing import IO, Any, Self

import msgpack
import zstandard

from ..errors import BackendError, CorruptSavepointError, InvalidArgumentError
from ..storage import LIMIT_OPTION, MAX_SAVEPOINT_BYTES, MAX_STATE_BYTES, epoch_ms, validate
from ..storage.durable import fsync_directory
from ._stored import StoredSavepoint

__all__ = ["MAGIC", "VERSION", "ArchiveHeader", "ArchiveReader", "ArchiveWriter"]

MAGIC = b"STATESTORE-ARCHIVE\n"
VERSION = 1
_FRAME = struct.Struct(">BQQ32s")  # flags, stored length, body length, SHA-256 of the body
_ZSTD = 1
#: A frame body may hold this many bytes over the reader's ``max_savepoint_bytes``: a
#: savepoint's states (at most the limit) plus their ids and framing. Anything larger is
#: refused before it is read or allocated: a bound for hostile files.
FRAME_SLACK = 64 << 20
#: Bodies shorter than this are not worth compressing.
_COMPRESS_FROM = 1024


@dataclass(frozen=True)
class ArchiveHeader:
    """The first frame: which run, when it was exported (epoch ms), by which format."""

    run_id: str
    exported_at: int


def _damaged(path: str, why: str) -> CorruptSavepointError:
    return CorruptSavepointError(f"archive {path}: damaged: {why}")


class ArchiveWriter:
    """Write an archive atomically: ``add`` each savepoint, then ``commit``.

    Leaving the ``with`` block without ``commit`` (or by an exception) removes the
    temporary file and leaves any existing file at ``path`` untouched. Only a regular
    file is ever replaced (never a device, directory, FIFO or symlink). ``path`` may
    instead be a binary stream (``statestore export RUN -``: standard output), written
    as it goes.
    """

    def __init__(
        self, path: str | os.PathLike[str] | IO[bytes], run_id: str, *, overwrite: bool
    ) -> None:
        self.run_id = validate.run_id(run_id)
        self.overwrite = overwrite
        self.savepoints = 0
        self.bytes_written = 0
        self._chain = hashlib.sha256()
        self._compressor = zstandard.ZstdCompressor(level=3)
        self._file: IO[bytes] | None = None
        self._temp: str | None = None
        if isinstance(path, (str, os.PathLike)):
            self.path = os.path.abspath(os.fspath(path))
            self._refuse_existing()
            directory, name = os.path.split(self.path)
            self._temp = os.path.join(directory, f".{name}.tmp-{secrets.token_hex(6)}")
            with self._io("create"):
                self._file = open(self._temp, "xb")  # noqa: SIM115 - closed by commit/abort
        else:  # a stream (standard output): written as it goes, nothing to rename
            self.path = str(getattr(path, "name", "<stream>"))
            self._file = path
        with self._io("write"):
            self._file.write(MAGIC + bytes([VERSION]))
        self.bytes_written = len(MAGIC) + 1
        self._frame({"kind": "header", "run_id": self.run_id, "exported_at": epoch_ms()})

    def _refuse_existing(self) -> None:
        """Only a regular file may be replaced, and only with ``overwrite``.

        ``lstat``, not ``stat``: the archive is renamed over the name itself, so a
        symlink, a device (``/dev/full``), a FIFO or a directory there would be replaced
        or written through, touching what is not the archive's. Those are refused even
        with ``overwrite``.
        """
        try:
            mode = os.lstat(self.path).st_mode
        except FileNotFoundError:
            return
        except OSError as exc:
            raise BackendError(
                f"archive {self.path}: cannot look at it: {exc.strerror or exc}"
            ) from None
        if not stat.S_ISREG(mode):
            raise InvalidArgumentError(
                f"{self.path} exists and is {_kind(mode)}, not a regular file; an archive "
                "only replaces a regular file (even with --force / overwrite=True)"
            )
        if not self.overwrite:
            raise InvalidArgumentError(
                f"{self.path} exists; refusing to overwrite it (use --force / overwrite=True)"
            )

    @contextlib.contextmanager
    def _io(self, doing: str) -> Iterator[None]:
        try:
            yield
        except OSError as exc:
            raise BackendError(
                f"archive {self.path}: cannot {doing}: {exc.strerror or exc}"
            ) from None

    def _frame(self, body: dict[str, Any]) -> None:
        assert self._file is not None
        raw: bytes = msgpack.packb(body, use_bin_type=True)
        digest = hashlib.sha256(raw).digest()
        self._chain.update(digest)
        stored, flags = raw, 0
        if len(raw) >= _COMPRESS_FROM:
            compressed = self._compressor.compress(raw)
            if len(compressed) < len(raw):
                stored, flags = compressed, _ZSTD
        with self._io("write"):
            self._file.write(_FRAME.pack(flags, len(stored), len(raw), digest))
            self._file.write(stored)
        self.bytes_written += _FRAME.size + len(stored)

    def add(self, stored: StoredSavepoint) -> None:
        """Append one savepoint (savepoints go in ascending timestamp order)."""
        self._frame(
            {
                "kind": "savepoint",
                "ts": stored.timestamp,
                "codec": stored.codec,
                "ids": [entity_id for entity_id, _data in stored.entities],
                "states": [data for _entity_id, data in stored.entities],
            }
        )
        self.savepoints += 1

    def commit(self) -> None:
        """Write the end frame, make the file durable and move it into place.

        A stream is only flushed: an archive cut short on a stream (an error, a crash)
        has no end frame, so importing it fails as truncated.
        """
        self._frame({"kind": "end", "savepoints": self.savepoints, "chain": self._chain.digest()})
        assert self._file is not None
        if self._temp is None:
            with self._io("write"):
                self._file.flush()
            self._file = None
            return
        with self._io("write"):
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            self._file = None
            self._refuse_existing()  # someone may have created it since we began
            os.replace(self._temp, self.path)
            fsync_directory(os.path.dirname(self.path))

    def abort(self) -> None:
        """Drop the temporary file; the target is untouched (a stream is left open)."""
        if self._temp is None:
            self._file = None
            return
        if self._file is not None:
            self._file.close()
            self._file = None
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._temp)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.abort()


def _kind(mode: int) -> str:
    """What a non-regular file is, for the message refusing to replace it."""
    kinds = [
        (stat.S_ISLNK, "a symbolic link"),
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISSOCK, "a socket"),
    ]
    return next((name for test, name in kinds if test(mode)), "something else")


class ArchiveReader:
    """Read an archive, checking every frame; ``savepoints()`` yields them in order.

    Every failure is :class:`~statestore.errors.CorruptSavepointError` naming the file,
    except a file that is not an archive at all (InvalidArgumentError) and an
    unreadable file (BackendError).
    """

    def __init__(
        self, path: str | os.PathLike[str], *, max_savepoint_bytes: int = MAX_SAVEPOINT_BYTES
    ) -> None:
        self.path = os.path.abspath(os.fspath(path))
        self.max_savepoint_bytes = max_savepoint_bytes
        try:
            self._file: IO[bytes] = open(self.path, "rb")  # noqa: SIM115 - closed by close()
            self._size = os.fstat(self._file.fileno()).st_size
        except OSError as exc:
            raise BackendError(f"archive {self.path}: cannot read: {exc.strerror or exc}") from None
        try:
            self.header = self._read_header()
        except BaseException:
            self._file.close()
            raise

    def _read_prefix(self, count: int) -> bytes:
        """Up to ``count`` bytes (fewer at the end of the file)."""
        try:
            return self._file.read(count)
        except OSError as exc:
            raise BackendError(f"archive {self.path}: cannot read: {exc.strerror or exc}") from None

    def _read(self, count: int) -> bytes:
        data = self._read_prefix(count)
        if len(data) != count:
            raise _damaged(self.path, "truncated")
        return data

    def _read_header(self) -> ArchiveHeader:
        start = self._read_prefix(len(MAGIC) + 1)
        if len(start) != len(MAGIC) + 1 or start[: len(MAGIC)] != MAGIC:
            raise InvalidArgumentError(f"{self.path} is not a statestore archive")
        if start[-1] != VERSION:
            raise InvalidArgumentError(
                f"{self.path} is archive version {start[-1]}; this statestore reads version "
                f"{VERSION}"
            )
        self._chain = hashlib.sha256()
        body = self._frame()
        if body.get("kind") != "header":
            raise _damaged(self.path, "no header frame")
        run_id, exported_at = body.get("run_id"), body.get("exported_at")
        if not isinstance(exported_at, int):
            raise _damaged(self.path, "bad header frame")
        try:
            run_id = validate.run_id(run_id)
        except InvalidArgumentError:
            raise _damaged(self.path, f"bad run id {run_id!r}") from None
        return ArchiveHeader(run_id, exported_at)

    def _frame(self) -> dict[str, Any]:
        flags, stored_len, raw_len, digest = _FRAME.unpack(self._read(_FRAME.size))
        remaining = self._size - self._file.tell()
        if stored_len > remaining or flags not in (0, _ZSTD):
            raise _damaged(self.path, "bad frame header (or truncated)")
        if raw_len > self.max_savepoint_bytes + FRAME_SLACK:
            raise _damaged(
                self.path,
                f"a frame declares {raw_len} bytes, over what {LIMIT_OPTION}="
                f"{self.max_savepoint_bytes} allows (if the archive is genuine, raise the "
                f"limit with ?{LIMIT_OPTION}=N in the destination URL)",
            )
        stored = self._read(stored_len)
        try:
            if flags == _ZSTD:
                # The frame must declare the length the header does (the writer always
                # records it), so nothing larger than was checked is ever allocated.
                if zstandard.frame_content_size(stored) != raw_len:
                    raise _damaged(self.path, "a frame declares another length")
                raw = zstandard.ZstdDecompressor().decompress(stored, max_output_size=raw_len)
            else:
                raw = stored
        except zstandard.ZstdError:
            raise _damaged(self.path, "a frame does not decompress") from None
        if len(raw) != raw_len or hashlib.sha256(raw).digest() != digest:
            raise _damaged(self.path, "checksum mismatch")
        self._chain.update(digest)
        try:
            body = msgpack.unpackb(raw, raw=False)
        except Exception:  # the digest matched, so only a writer bug gets here
            raise _damaged(self.path, "a frame does not decode") from None
        if not isinstance(body, dict):
            raise _damaged(self.path, "a frame is not a record")
        return body

    def savepoints(self) -> Iterator[StoredSavepoint]:
        """Each savepoint, checked; the end frame is checked after the last one."""
        count = 0
        previous = -1
        run_id = self.header.run_id
        while True:
            chain = self._chain.digest()  # what the end frame must carry
            body = self._frame()
            kind = body.get("kind")
            if kind == "end":
                if body.get("savepoints") != count or body.get("chain") != chain:
                    raise _damaged(self.path, "frames are missing, repeated or out of order")
                if self._read_prefix(1):
                    raise _damaged(self.path, "bytes after the end frame")
                return
            if kind != "savepoint":
                raise _damaged(self.path, f"unexpected frame {kind!r}")
            stored = _savepoint(self.path, run_id, body, self.max_savepoint_bytes)
            if stored.timestamp <= previous:
                raise _damaged(self.path, "savepoints out of order")
            previous = stored.timestamp
            count += 1
            yield stored

    def close(self) -> None:
        """Close the file."""
        self._file.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


def _savepoint(path: str, run_id: str, body: dict[str, Any], limit: int) -> StoredSavepoint:
    """Check one savepoint frame's fields as strictly as a save would check them."""
    timestamp, codec, ids, states = (body.get(k) for k in ("ts", "codec", "ids", "states"))
    try:
        timestamp = validate.timestamp(timestamp)
    except InvalidArgumentError:
        raise _damaged(path, f"bad timestamp {timestamp!r}") from None
    if (
        not isinstance(codec, str)
        or not isinstance(ids, list)
        or not isinstance(states, list)
        or len(ids) != len(states)
        or not all(isinstance(entity_id, str) for entity_id in ids)
        or not all(isinstance(data, bytes) for data in states)
        or len(set(ids)) != len(ids)
    ):
        raise _damaged(path, f"savepoint {timestamp}: malformed")
    # The limits a save enforces, checked here too: an import checks the whole archive
    # before it writes anything, so a savepoint no store would take stops it up front.
    if max(map(len, states), default=0) > MAX_STATE_BYTES:
        raise _damaged(path, f"savepoint {timestamp}: a state is over {MAX_STATE_BYTES} bytes")
    total = sum(map(len, states))
    if total > limit:
        raise _damaged(
            path,
            f"savepoint {timestamp}: its states hold {total} bytes, over the {LIMIT_OPTION}="
            f"{limit} limit (if the archive is genuine, raise it with ?{LIMIT_OPTION}=N)",
        )
    return StoredSavepoint(run_id, timestamp, codec, list(zip(ids, states, strict=True)))
