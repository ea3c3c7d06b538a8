"""Durable writes on a POSIX file system, and the checksum that frames stored bytes.

One definition of the steps every file-writing path needs, so none forgets one: a file
is written under a temporary name in its final directory, fsynced, renamed over its
final name, and the directory fsynced, because a rename is durable only once the
directory holding it is.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import zlib

__all__ = ["TEMP_PREFIX", "fsync_directory", "versioned_crc", "write_file_atomically"]

#: How the name of a file being written starts, so that a sweep can tell what a crash left.
TEMP_PREFIX = ".tmp-"


def fsync_directory(path: str) -> None:
    """Make the creations, renames and unlinks in directory ``path`` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_file_atomically(
    directory: str,
    name: str,
    data: bytes,
    *,
    sync_directory: bool = True,
) -> None:
    """Write ``directory/name`` so that a crash leaves the old file or the new, whole.

    The temporary file is named :data:`TEMP_PREFIX` + random hex, so a store can
    recognise (and sweep) what a crash left. ``sync_directory=False`` leaves the final directory
    fsync to a caller that renames several files and syncs once.
    """
    temp = os.path.join(directory, f"{TEMP_PREFIX}{secrets.token_hex(8)}")
    try:
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        with open(fd, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(fd)
        os.replace(temp, os.path.join(directory, name))
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise
    if sync_directory:
        fsync_directory(directory)


def versioned_crc(version: int, body: bytes | memoryview) -> int:
    """CRC-32 of a format version byte followed by a body.

    Covering the version byte makes damage there read as corruption, never as "written
    by a newer statestore"; every framed format keeps its version byte for this reason.
    """
    return zlib.crc32(body, zlib.crc32(bytes([version])))
